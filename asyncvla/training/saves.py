"""The training directory (`asyncvla-train --out`): what may be trained into it, one trainer at a
time, saves that are whole or absent, and the state a `--resume` continues from.

A save writes the checkpoint and the training state into OUT/.saving/, marks that copy complete
(OUT/.saving/COMPLETE, written and flushed last), then renames each file into OUT. Killed before
the mark, the next start deletes .saving/ and OUT holds the previous save; killed after it, the next
start finishes the renames. Either way OUT holds one whole save, and its training state and its
checkpoint are of the same step.
"""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch

from asyncvla.checkpoint import CheckpointError, atomic_write, check_checkpoint, fsync_dir
from asyncvla.training.errors import TrainError

log = logging.getLogger(__name__)

STAGING = ".saving"
COMPLETE = "COMPLETE"
LOCK = ".train.lock"
# what save_checkpoint writes (tokenizer files vary with the tokenizer)
CHECKPOINT_FILES = {"config.json", "model.safetensors", "rater.safetensors", "norm_stats.json"}
TOKENIZER_FILES = {"special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt"}
TOKENIZER_FILES |= {"chat_template.json", "chat_template.jinja", "generation_config.json"}


def state_path(out: Path, stage: str) -> Path:
    return Path(out) / f"train_state_{stage}.pt"


def loss_path(out: Path, stage: str) -> Path:
    return Path(out) / f"loss_{stage}.csv"


def is_ours(name: str) -> bool:
    """A name asyncvla-train writes into --out (checkpoint, logs, state, evaluations, its own
    temporary files)."""
    if name in CHECKPOINT_FILES or name in TOKENIZER_FILES or name.startswith("tokenizer"):
        return True
    if name.startswith(("loss_", "train_state_", "sharded_")) or name in (
        "eval_curve.csv",
        "eval_curve.png",
        "evals",
    ):
        return True
    if name == "preflight":  # periodic_eval.PeriodicEvaluator.preflight's temporary checkpoint
        return True
    return name in (STAGING, LOCK) or (
        name.startswith(".") and ".tmp-" in name and is_ours(name[1:].split(".tmp-")[0])
    )


@dataclass
class Contents:
    """What --out holds, read without changing it."""

    out: Path
    names: list[str] = field(default_factory=list)  # every entry but the lock
    foreign: list[str] = field(default_factory=list)  # entries asyncvla-train does not write
    has_checkpoint: bool = False
    record: dict | None = None  # config.json's training record

    def stage_steps(self, stage: str) -> int | None:
        return ((self.record or {}).get("stages", {}).get(stage) or {}).get("steps")

    def describe(self) -> str:
        if not self.has_checkpoint:
            return "the files of a training stopped before its first save"
        stages = (self.record or {}).get("stages", {})
        if not stages:
            return "a checkpoint without a training record"
        data = next(iter(stages.values())).get("data_sha256", "?")[:12]
        done = " and ".join(f"{s.get('steps')} {name} steps" for name, s in stages.items())
        return f"a checkpoint trained {done} (data {data}...)"


def inspect(out: Path) -> Contents:
    out = Path(out)
    if not out.is_dir():
        return Contents(out)
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    contents = Contents(out, names, [n for n in names if not is_ours(n)], (out / "config.json").is_file())
    if contents.has_checkpoint:
        try:
            data = json.loads((out / "config.json").read_text())
            record = data.get("training") if isinstance(data, dict) else None
            contents.record = record if isinstance(record, dict) else None
        except (OSError, ValueError):
            contents.record = None  # loading the checkpoint names the file
    return contents


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def check_ours(out: Path) -> None:
    """Refuse, before anything is written, a --out that is a file or a non-empty directory holding
    neither a checkpoint nor a training's files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} is a file; give a directory (new, or a training to resume)")
    c = inspect(out)
    if c.foreign and not c.has_checkpoint:
        raise TrainError(
            f"--out {out} is a non-empty directory that holds no checkpoint (it holds {_shown(c.foreign)}); "
            "choose a new or empty directory"
        )


@dataclass
class Plan:
    """How a training starts in --out (`plan`), and what it clears first (`apply`)."""

    resume: bool  # a training state of the stage is there (the worker checks it is this training's)
    remove: list[str] = field(default_factory=list)  # entries of --out to delete (--overwrite)
    clear_stage: str | None = None  # a stage whose state, loss log and evaluations go
    note: str = ""  # logged when applied


def plan(cfg) -> Plan:
    """Refuse a --out this training must not write into; say what the training replaces. Reads
    only: the command calls it before reading the data, and again once it holds the lock and has
    recovered an interrupted save (`recover`), before `apply`."""
    out, stage = Path(cfg.out), cfg.stage
    check_ours(out)
    c = inspect(out)
    ours = [n for n in c.names if n not in c.foreign]
    if cfg.resume:
        if state_path(out, stage).is_file():
            return Plan(resume=True)
        if stage == "policy" and c.has_checkpoint or stage == "rater" and c.stage_steps("rater"):
            raise TrainError(
                f"--resume: {out} holds {c.describe()} but no {state_path(out, stage).name}, so it was not "
                f"trained here (or its state was deleted) and cannot be resumed; train a new model with "
                "--overwrite, or choose a new --out"
            )
        if stage == "rater" and not c.has_checkpoint:
            raise TrainError(
                f"--resume --stage rater: {out} holds no policy checkpoint to train the rater of"
            )
        note = f"--resume: nothing of the {stage} stage was saved in {out} yet; starting at step 0"
        return Plan(resume=False, clear_stage=stage, note=note)
    if stage == "rater" and cfg.init is None:
        if not c.has_checkpoint:
            raise TrainError(
                f"--stage rater: {out} holds no policy checkpoint; train the policy first "
                f"(asyncvla-train DATA --out {out}) or give --init POLICY_CHECKPOINT"
            )
        steps = c.stage_steps("rater")
        if steps is not None and not cfg.overwrite:
            raise TrainError(
                f"--out {out}: its rater was already trained ({steps} steps); continue it with --resume, "
                "train a new one with --overwrite, or choose a new --out with --init"
            )
        return Plan(resume=False, clear_stage="rater")  # a new rater: the old one's files go
    if ours:
        if not cfg.overwrite:
            raise TrainError(
                f"--out {out} holds {c.describe()}; continue it with --resume, replace it with --overwrite, "
                "or choose a new --out"
            )
        if c.foreign:
            raise TrainError(
                f"--overwrite: {out} also holds files asyncvla-train did not write ({_shown(c.foreign)}), "
                "which would describe the old model; move them away, or choose a new --out"
            )
        return Plan(resume=False, remove=ours, note=f"--overwrite: removing {c.describe()} from {out}")
    return Plan(resume=False)


def apply(out: Path, plan: Plan) -> None:
    if plan.note:
        log.info("%s", plan.note)
    for name in plan.remove:
        path = Path(out) / name
        if name not in (LOCK, STAGING) and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if plan.clear_stage:
        clear_stage(Path(out), plan.clear_stage)


@contextmanager
def claimed(out: Path):
    """Hold --out's lock (`take_lock`) and recover an interrupted save (`recover`). If the block
    refuses the training before it writes anything of its own (an error before `started()`), the
    lock file and the directory are removed again when this created them."""
    out = Path(out)
    existed, lock_existed = out.exists(), (out / LOCK).exists()
    lock = take_lock(out)
    state = {"started": False}
    try:
        recover(out)
        yield lambda: state.update(started=True)
    except BaseException:
        if not state["started"]:
            if not lock_existed:
                (out / LOCK).unlink(missing_ok=True)
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.close()


def clear_stage(out: Path, stage: str) -> None:
    """Remove a stage's training state, loss log and evaluations (before it is trained anew)."""
    from asyncvla.training.periodic_eval import drop_stage

    state_path(out, stage).unlink(missing_ok=True)
    loss_path(out, stage).unlink(missing_ok=True)
    drop_stage(out, stage)


def take_lock(out: Path) -> IO:
    """One trainer per --out: an exclusive lock on OUT/.train.lock, held until the process ends."""
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK, "a+")  # noqa: SIM115 (held for the whole training)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise TrainError(
            f"--out {out} is being trained into by another asyncvla-train (pid {pid}); wait for it to end, "
            "or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def recover(out: Path) -> None:
    """Finish a save whose files were all written (OUT/.saving/COMPLETE), or drop one that was not;
    remove temporary files of writes killed part-way."""
    out = Path(out)
    staging = out / STAGING
    if (staging / COMPLETE).is_file():
        log.info("finishing the save interrupted in %s", out)
        _move_into_place(out)
    elif staging.exists():
        log.info("dropping a save interrupted before all its files were written (%s)", staging)
        shutil.rmtree(staging)
    if out.is_dir():
        for path in out.iterdir():  # `.<name>.tmp-<pid>` of atomic_write, `.tokenizer.tmp-<pid>`
            if (
                path.name.startswith(".")
                and ".tmp-" in path.name
                and is_ours(path.name[1:].split(".tmp-")[0])
            ):
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def commit(out: Path, write: Callable[[Path], None]) -> None:
    """A save that is whole or absent: `write(dir)` writes every file of it into OUT/.saving/; they
    are flushed, marked complete, then renamed into OUT (config.json last)."""
    write(begin(out))
    finish(out)


def staging_path(out: Path) -> Path:
    return Path(out) / STAGING


def begin(out: Path) -> Path:
    """A new, empty OUT/.saving/ for a save's files (FSDP's processes write their shards into it
    before rank 0 writes the rest and calls `finish`)."""
    staging = staging_path(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def finish(out: Path) -> None:
    """Flush every file of the save, mark it complete, rename it into OUT."""
    staging = staging_path(out)
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        else:
            fsync_dir(path)
    names = sorted(p.name for p in staging.iterdir())
    atomic_write(staging / COMPLETE, lambda tmp: tmp.write_text(json.dumps(names)))
    _move_into_place(Path(out))


def _move_into_place(out: Path) -> None:
    """Idempotent (a recovery runs it again): what is still staged replaces OUT's entry of that name;
    a directory (FSDP's shards) replaces the old one, which rename cannot do over a full directory."""
    staging = out / STAGING
    names = sorted(
        (p.name for p in staging.iterdir() if p.name != COMPLETE), key=lambda n: n == "config.json"
    )
    for name in names:
        if (staging / name).is_dir() and (out / name).is_dir():
            shutil.rmtree(out / name)
        os.replace(staging / name, out / name)
    fsync_dir(out)
    shutil.rmtree(staging)


def save_state(path: Path, state: dict) -> None:
    torch.save(state, path)


def read_state(out: Path, stage: str) -> dict:
    """The training state a --resume continues from, or a TrainError that names the damaged file
    and says what in OUT is still good."""
    path = state_path(out, stage)
    try:
        state = torch.load(path, weights_only=True)  # tensors and numbers only, never arbitrary pickles
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainError(
            f"{path}: damaged or truncated training state ({reason}); {_what_is_good(out)}"
        ) from e
    needed = {"step", "optimizer", "scheduler", "generator", "settings", "phases"}
    if not isinstance(state, dict) or not needed <= set(state):
        missing = sorted(needed - set(state)) if isinstance(state, dict) else sorted(needed)
        raise TrainError(
            f"{path}: holds no {', '.join(missing)} (saved by an older asyncvla-train, or not a training "
            "state), so it cannot be checked to be this training's; start anew with --overwrite"
        )
    return state


def _what_is_good(out: Path) -> str:
    """For a refused resume: whether the checkpoint beside a damaged state still loads."""
    c = inspect(out)
    try:
        check_checkpoint(out)
    except CheckpointError as e:
        return f"the checkpoint beside it is damaged too ({e}); start anew with --overwrite"
    steps = ", ".join(
        f"{name} step {s.get('steps')}" for name, s in (c.record or {}).get("stages", {}).items()
    )
    return (
        f"the checkpoint files beside it ({steps or 'no training record'}) are whole and load as a model, "
        "but training cannot continue from them; start anew with --overwrite (or train from a copy)"
    )


def truncate_log(path: Path, step: int) -> None:
    """Keep a loss log's rows up to `step` (a resumed training writes the later ones again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1]
    for row in rows[1:]:
        try:
            if len(row) != len(rows[0]) or int(row[0]) > step:
                break
        except ValueError:
            break
        kept.append(row)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    atomic_write(path, write)
