"""Several training processes: joining their group (spawned here on one machine, or by torchrun),
the collectives the loop uses, and spawning them with the command's stops and errors passed on.

A spawned worker dies with the command (Linux PR_SET_PDEATHSIG), gets the command's Ctrl-C or
SIGTERM (and stops its evaluation), and reports an error of ours as one line, which the command
prints; a worker still running WORKER_STOP_S after a stop is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from asyncvla.training import flags
from asyncvla.training.errors import TrainError, one_line
from asyncvla.training.stopping import EXIT_SIGINT, EXIT_SIGTERM, SIGNALS, die_with_parent

WORKER_STOP_S = 60.0  # how long spawned workers get to stop (and stop their evaluation) before SIGKILL


def join_workers(rank: int, world: int, cfg) -> tuple[int, int, torch.device]:
    """This process's rank, the number of processes and its device; joins their group (spawned here
    on one machine, by torchrun, or already joined by Ray Train) and shares the CPU threads. FSDP
    needs a group even for one process."""
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world > 1 or flags.strategy(cfg) == "fsdp" or dist.is_initialized():
        # spawned by us on one machine, or one FSDP process in the caller's process: read once, by
        # the group's start (a later training in this process must not take itself for torchrun)
        ours = {} if "RANK" in os.environ else {"RANK": str(rank), "WORLD_SIZE": str(world)}
        with rendezvous(ours):
            if not dist.is_initialized():
                timeout = timedelta(seconds=cfg.collective_timeout_s)
                dist.init_process_group(flags.backend(cfg), timeout=timeout)
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
            torch.cuda.set_device(device)
    return rank, world, device


def mesh(device: torch.device, world: int):
    """The one-dimensional mesh FSDP shards over: every process of the group."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,))


@contextmanager
def rendezvous(variables: dict[str, str] | None = None):
    """`variables` and a local MASTER_ADDR / MASTER_PORT (a free port), each only where the
    environment has none, set for the block's processes and group starts only: removed after, so
    the caller's process keeps no trace of them."""
    wanted = {"MASTER_ADDR": "127.0.0.1", **(variables or {})}
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    if "MASTER_PORT" not in os.environ:
        added["MASTER_PORT"] = str(free_port())
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def first_of_any(value: str | None) -> str | None:
    """`value` of the first process that has one, on every process (so that they stop together)."""
    if not dist.is_initialized():
        return value
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return next((v for v in values if v is not None), None)


def mean_over_workers(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broadcast(value):
    """Rank 0's `value` on every rank (the others pass anything)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def spawn(cfg, target: Callable) -> None:
    """`num_workers` DDP processes on this machine. A worker's error is printed by this process
    (one line, the first worker's to fail); a stop (Ctrl-C, SIGTERM) is passed on to the workers,
    which stop their evaluation; a worker still running after WORKER_STOP_S is killed. `target(rank,
    world, cfg)` is the training process (module-level, so that it pickles)."""
    errors = torch.multiprocessing.get_context("spawn").SimpleQueue()
    with rendezvous():  # in the workers' environment only: a later training here picks a new port
        context = torch.multiprocessing.start_processes(
            _spawned_worker,
            args=(cfg.num_workers, cfg, os.getpid(), errors, target),
            nprocs=cfg.num_workers,
            join=False,
            start_method="spawn",
        )
    try:
        while not context.join(grace_period=WORKER_STOP_S):
            pass
    except KeyboardInterrupt:
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, SIGNALS.received or signal.SIGTERM)
        for process in context.processes:
            process.join(WORKER_STOP_S)
            if process.is_alive():
                process.kill()
                process.join()
        raise
    except torch.multiprocessing.ProcessExitedException as e:
        if e.exit_code in (EXIT_SIGINT, EXIT_SIGTERM):
            SIGNALS.received = SIGNALS.received or (
                signal.SIGTERM if e.exit_code == EXIT_SIGTERM else signal.SIGINT
            )
            raise KeyboardInterrupt(f"worker {e.error_index} was stopped") from None
        message = (
            errors.get() if not errors.empty() else f"worker {e.error_index} exited with code {e.exit_code}"
        )
        raise TrainError(message) from None


def _spawned_worker(rank: int, world: int, cfg, parent: int, errors, target: Callable) -> None:
    die_with_parent(parent)  # and a kill -9 of the command stops the workers too
    SIGNALS.install()
    try:
        target(rank, world, cfg)
    except KeyboardInterrupt:
        sys.exit(SIGNALS.exit_code())
    except (ValueError, OSError) as e:  # ours (TrainError, CheckpointError) and the file system's
        errors.put(one_line(e))
        sys.exit(2)
