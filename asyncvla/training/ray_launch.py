"""`asyncvla-train --ray-address ADDR`: the same training, its processes started by Ray Train's
`TorchTrainer` on a Ray cluster (the one the evaluations run on, so a team with one cluster trains
and evaluates on it).

Ray Train starts `--num-workers` workers (one GPU each with --device cuda), joins them in a torch
process group (gloo or nccl, as torchrun's would be) and runs the training process in each; the
checkpoints go to --out exactly as under torchrun, written by rank 0 (and, with FSDP, every
worker's shard), so on several machines --out must be on storage they share. Ray Train's own
checkpointing is not used: the project's saves are whole-or-absent and resumable by themselves.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from asyncvla.training import flags
from asyncvla.training.errors import TrainError, one_line

log = logging.getLogger(__name__)

FAILED = "asyncvla-train worker failed: "  # how a worker's refusal reaches the command through Ray


def train_on_ray(cfg, train_worker: Callable) -> None:
    """Run `train_worker(rank, world, cfg)` in `cfg.num_workers` Ray Train workers and wait for them.
    A worker's refusal (bad data, a diverged loss) is the command's one-line error."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if cfg.ray_address == "local":
        # a cluster of this machine's own: as many CPU slots as workers, whatever the core count
        # (a CPU worker is one process; it does not need a core to itself)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, cfg.num_workers), include_dashboard=False)
    else:
        _check_reachable(cfg.ray_address)
        ray.init(address=cfg.ray_address)
    if threading.current_thread() is threading.main_thread():
        for sig, handler in handlers.items():  # ray.init's SIGTERM handler exits mid-run: ours again
            signal.signal(sig, handler)
    try:
        _check_resources(cfg, ray.cluster_resources())
        gpu = cfg.device.startswith("cuda")
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"cfg": cfg, "train_worker": train_worker},
            torch_config=TorchConfig(backend=flags.backend(cfg), timeout_s=int(cfg.collective_timeout_s)),
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=gpu),
            run_config=RunConfig(name=f"asyncvla-train-{Path(cfg.out).name}-{os.getpid()}"),
        )
        _fit(trainer)
    finally:
        ray.shutdown()  # on a stop too: the workers (and rank 0's evaluation, which dies with it) end


def _fit(trainer) -> None:
    """`trainer.fit()` with the command's own Ctrl-C handling: Ray Train replaces the process's
    SIGINT handler with one that aborts the run and exits 1, with no line on how to resume. Without
    it a stop raises KeyboardInterrupt in fit()'s wait, `ray.shutdown` (the caller's) ends the
    workers, and the command reports it as any other stop. (Running fit() on another thread instead
    raced: `ray.shutdown` under a thread still waiting in Ray made Ray exit the process with 1.)"""
    if hasattr(trainer, "_register_sigint_handler"):  # Ray Train v2 (ray >= 2.49)
        trainer._register_sigint_handler = lambda controller: None
    try:
        trainer.fit()
    except Exception as e:  # Ray wraps the worker's exception in its own
        raise TrainError(_worker_message(e)) from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT nothing answers on, refused in seconds: ray.init would retry it for minutes."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise TrainError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise TrainError(
            f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
            "`ray start --head` on that host, or use --ray-address local"
        ) from None


def _check_resources(cfg, resources: dict) -> None:
    kind = "GPU" if cfg.device.startswith("cuda") else "CPU"
    have = int(resources.get(kind, 0))
    if have < cfg.num_workers:
        raise TrainError(
            f"--num-workers {cfg.num_workers} with --device {cfg.device}: the Ray cluster at "
            f"{cfg.ray_address} has {have} {kind}(s); add nodes or use --num-workers {max(have, 1)}"
        )


def _worker(config: dict) -> None:
    import ray.train

    context = ray.train.get_context()
    os.environ.setdefault("LOCAL_RANK", str(context.get_local_rank()))
    try:
        config["train_worker"](context.get_world_rank(), context.get_world_size(), config["cfg"])
    except (ValueError, OSError) as e:  # ours (TrainError, CheckpointError) and the file system's
        raise RuntimeError(FAILED + one_line(e)) from None


def _worker_message(error: Exception) -> str:
    """The first worker refusal in Ray's report, else Ray's own first line."""
    text = str(error)
    for line in text.splitlines():
        if FAILED in line:
            return line[line.index(FAILED) + len(FAILED) :].strip()
    return f"Ray Train failed: {one_line(error)}"
