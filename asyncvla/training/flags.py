"""What `asyncvla-train` accepts: one range table for its numeric flags, and the checks between
flags, all run before anything is read or written (each failure a `TrainError`: one line, exit 2).

The evaluator keeps its own table (evalsuite/validate.py); this package does not import the harness
(docs/CONTRACTS.md), so the checks of the `--eval-*` options that need the harness run it as a
command (`asyncvla.training.periodic_eval.PeriodicEvaluator.preflight`).
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from asyncvla.training.errors import TrainError


@dataclass(frozen=True)
class Range:
    """A flag's allowed values: from `low` (excluded when `open_low`) to `high`; floats must be finite."""

    flag: str
    low: float
    high: float | None = None
    open_low: bool = False
    meaning: str = ""

    def problem(self, value) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        too_low = value <= self.low if self.open_low else value < self.low
        if too_low or (self.high is not None and value > self.high):
            low = f"above {self.low:g}" if self.open_low else f"at least {self.low:g}"
            return f"must be {low}" + (f" and at most {self.high:g}" if self.high is not None else "")
        return None


# TrainConfig field -> its flag's range; None values (a flag left out) are not checked
RANGES = {
    "steps": Range("--steps", 1, meaning="optimizer steps in all"),
    "epochs": Range("--epochs", 1, meaning="passes over the data"),
    "batch_size": Range("--batch-size", 1, meaning="samples per worker and step"),
    "lr": Range("--lr", 0, 1, open_low=True, meaning="AdamW's peak learning rate"),
    "vision_lr": Range("--vision-lr", 0, 1, meaning="the vision tower's; 0 keeps it as initialised"),
    "warmup_steps": Range("--warmup-steps", 0, meaning="linear warm-up steps; 0 for none"),
    "seed": Range("--seed", 0, 2**32 - 1),
    "num_workers": Range("--num-workers", 1, 1024, meaning="data-parallel processes"),
    "save_every": Range("--save-every", 1, meaning="steps between saves"),
    "threads": Range("--threads", 1, 1024, meaning="torch CPU threads per worker"),
    "pause_threshold": Range("--pause-threshold", 0, 1e3, meaning="0 marks no step as a pause"),
    "eval_every": Range("--eval-every", 1, meaning="steps between evaluations"),
    "eval_episodes": Range("--eval-episodes", 1, meaning="episodes per task"),
}

# asyncvla-eval options the trainer sets itself for each evaluation: refused in --eval-args
EVAL_OPTIONS_SET_HERE = {
    "--ckpt": "the trainer evaluates its own checkpoint",
    "--policy": "the trainer evaluates its own checkpoint",
    "--out": "each evaluation's run directory is OUT/evals/<stage>-<mode>/step-N/run",
    "--track": "use --eval-track",
    "--track-step": "the training step is passed on",
    "--episodes-per-task": "use --eval-episodes",
    "--dry-run": "the trainer runs one itself before step 1",
}


def check_numbers(cfg) -> None:
    for attr, limits in RANGES.items():
        value = getattr(cfg, attr)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TrainError(f"{limits.flag} {value!r}: expected a number")
        problem = limits.problem(value)
        if problem:
            meaning = f" ({limits.meaning})" if limits.meaning else ""
            raise TrainError(f"{limits.flag} {value}: {problem}{meaning}")


def check_device(device: str) -> None:
    import torch

    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise TrainError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: this machine has no usable GPU; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise TrainError(
            f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 ..."
        )


def check_paths(cfg) -> None:
    """--out is a directory that can be written, not inside the dataset or a mixture's member (its
    files would change the dataset's hash); --init and --backbone-dir exist; --eval-track is a
    directory."""
    from asyncvla.training.datasets import dataset_roots

    out = Path(cfg.out).resolve()
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {cfg.out} is a file; give a directory (new, or a training to resume)")
    for data in dataset_roots(cfg.dataset):
        data = data.resolve()
        if out == data or data in out.parents:
            raise TrainError(f"--out {cfg.out} is inside the dataset {data}; write the checkpoint elsewhere")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainError(
            f"--out {cfg.out}: {existing} is not writable (permissions or a read-only file system)"
        )
    for flag, value in (("--init", cfg.init), ("--backbone-dir", cfg.backbone_dir)):
        if value is not None and not Path(value).is_dir():
            raise TrainError(f"{flag} {value}: no such directory")
    if cfg.eval_track is not None and Path(cfg.eval_track).exists() and not Path(cfg.eval_track).is_dir():
        raise TrainError(
            f"--eval-track {cfg.eval_track} is a file; TensorBoard writes a directory of event files"
        )


def eval_args(cfg) -> list[str]:
    """--eval-args split as a shell would, refusing the options the trainer sets itself."""
    try:
        args = shlex.split(cfg.eval_args)
    except ValueError as e:
        raise TrainError(f"--eval-args {cfg.eval_args!r}: {e} (quote it as one shell string)") from e
    for arg in args:
        option = arg.split("=", 1)[0]
        if option in EVAL_OPTIONS_SET_HERE:
            raise TrainError(
                f"--eval-args: {option} is set by asyncvla-train ({EVAL_OPTIONS_SET_HERE[option]})"
            )
    return args


def eval_mode(stage: str, args: list[str]) -> str:
    """The evaluations' inference mode: sfm for the policy stage (its checkpoints have no trained
    rater yet), asyncvla for the rater stage, unless --eval-args gives --mode (its last value)."""
    mode = "sfm" if stage == "policy" else "asyncvla"
    for i, arg in enumerate(args):
        if arg == "--mode" and i + 1 < len(args):
            mode = args[i + 1]
        elif arg.startswith("--mode="):
            mode = arg.split("=", 1)[1]
    return mode


def check_combinations(cfg) -> None:
    """Flags that would do nothing, or contradict each other, in this configuration."""
    if cfg.resume and cfg.overwrite:
        raise TrainError(
            "--resume and --overwrite contradict each other: continue the training, or replace it"
        )
    if cfg.init is not None and cfg.stage != "rater":
        raise TrainError("--init: only the rater stage starts from another checkpoint (--stage rater)")
    if cfg.init is not None and cfg.resume:
        raise TrainError("--init with --resume: a resume continues from --out's own state; leave out --init")
    if cfg.backbone_dir is not None and cfg.size != "qwen2.5-vl-3b" and cfg.stage == "policy":
        raise TrainError(
            f"--backbone-dir: the {cfg.size} model is built from scratch; use it with --size qwen2.5-vl-3b"
        )
    if cfg.init is not None and Path(cfg.init).resolve() == Path(cfg.out).resolve():
        raise TrainError("--init is --out: leave out --init (the rater stage reads --out by default)")


def check_config(cfg) -> None:
    """Every check that needs neither the dataset nor the model."""
    if cfg.stage not in ("policy", "rater"):
        raise TrainError(f"--stage {cfg.stage!r}: expected policy or rater")
    from asyncvla.config import OBJECTIVES

    if cfg.objective not in OBJECTIVES:
        raise TrainError(f"--objective {cfg.objective!r}: expected one of {', '.join(OBJECTIVES)}")
    check_numbers(cfg)
    check_combinations(cfg)
    check_device(cfg.device)
    check_launch(cfg)
    check_paths(cfg)
    if cfg.eval_every is not None:
        eval_args(cfg)


def strategy(cfg) -> str:
    from asyncvla.training.sharding import default_strategy

    return cfg.strategy or default_strategy(cfg.size)


def backend(cfg) -> str:
    return cfg.backend or ("nccl" if cfg.device.startswith("cuda") else "gloo")


def activation_checkpointing(cfg) -> bool:
    """Recompute each decoder layer in the backward pass: on by default on CUDA, where activations
    bound the batch; off on CPU, where memory is rarely what limits a small model."""
    if cfg.activation_checkpointing is not None:
        return cfg.activation_checkpointing
    return cfg.device.startswith("cuda")


def launch_world(cfg) -> int:
    """How many processes will train: torchrun's WORLD_SIZE, else --num-workers."""
    return int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else cfg.num_workers


def check_launch(cfg) -> None:
    """A launch that cannot work, refused before any process group starts."""
    from asyncvla.training.sharding import STRATEGIES, check_fits, estimated_params

    if cfg.strategy is not None and cfg.strategy not in STRATEGIES:
        raise TrainError(f"--strategy {cfg.strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if cfg.backend is not None and cfg.backend not in ("gloo", "nccl"):
        raise TrainError(f"--backend {cfg.backend!r}: expected gloo (CPU) or nccl (CUDA)")
    if backend(cfg) == "nccl" and not cfg.device.startswith("cuda"):
        raise TrainError(
            f"--backend nccl with --device {cfg.device}: NCCL runs on CUDA devices only; "
            "use --backend gloo on CPU (or leave --backend out)"
        )
    world = launch_world(cfg)
    alone = world == 1 and not cfg.ray_address and strategy(cfg) == "ddp"
    if cfg.backend is not None and alone:
        raise TrainError(
            f"--backend {cfg.backend} with one process and --strategy ddp: no process group is formed; "
            "leave it out (or add processes)"
        )
    if "WORLD_SIZE" in os.environ:
        started = os.environ["WORLD_SIZE"]
        if cfg.num_workers not in (1, int(started)):
            raise TrainError(
                f"--num-workers {cfg.num_workers} under torchrun, which started {started} processes "
                "(--nnodes x --nproc-per-node): leave out --num-workers"
            )
        if cfg.ray_address:
            raise TrainError(
                "--ray-address under torchrun: Ray Train starts its own processes; launch with one of them"
            )
    if cfg.fsdp_reshard_after_forward and strategy(cfg) != "fsdp":
        raise TrainError(
            f"--fsdp-reshard-after-forward with --strategy {strategy(cfg)}: it changes only FSDP's sharding; "
            "add --strategy fsdp or leave it out"
        )
    if cfg.device.startswith("cuda") and "WORLD_SIZE" not in os.environ and not cfg.ray_address:
        import torch

        gpus = torch.cuda.device_count()
        if world > gpus:
            raise TrainError(
                f"--num-workers {world} on a machine with {gpus} GPU(s): one process per GPU; "
                f"use --num-workers {max(gpus, 1)}, or torchrun / --ray-address for several machines"
            )
    params = estimated_params(cfg.size) if cfg.stage == "policy" else None
    if params:
        check_fits(strategy(cfg), params, world, cfg.device)
