"""Record demonstrations of a suite's scripted expert as an "asyncvla-episodes" v1 dataset.

`asyncvla-eval record-demos tabletop --out data/tabletop-demos --episodes-per-task 50`
runs the expert on fresh training layouts (the env's split="train": a seeded stream separate
from the 50 shipped evaluation states, which stay held out), renders every step (the images are
the training data) and keeps only the successful episodes (docs/CONTRACTS.md: step t pairs the
observation at t with the action taken at t). Episode k of a task is tried in order k = 0, 1, ...
until the task has its count, so the same command always writes the same dataset, whatever the
number of workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from evalsuite.errors import ArgumentParser
from evalsuite.suites import get_suite
from evalsuite.suites.spec import SuiteSpec, import_object

FORMAT = {"format": "asyncvla-episodes", "version": 1}
log = logging.getLogger(__name__)


@dataclass
class Demo:
    task: str
    episode_index: int
    success: bool
    instruction: str
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    state: np.ndarray  # (T, S) float32
    action: np.ndarray  # (T, 7) float32
    render: dict | None = None  # the env's render_settings, where it has them (info.json "render")


def _check_suite(suite: SuiteSpec) -> None:
    if not suite.expert_factory:
        raise ValueError(f"suite {suite.name!r} has no scripted expert to record; use the tabletop suite")
    if "split" not in suite.env_kwargs:
        raise ValueError(
            f"suite {suite.name!r} has no training split (its env only replays the evaluation states); "
            "record demos on tabletop, or convert LIBERO's own demos with envs.libero.dataset"
        )


def record_episode(
    suite: SuiteSpec, task: str, episode_index: int, seed: int, image_size: int, env=None, expert=None
) -> Demo:
    """Run the expert on one training layout, rendering every step."""
    own_env = env is None
    if own_env:
        kwargs = {**suite.env_kwargs, "split": "train", "image_size": image_size}
        env = import_object(suite.env_factory)(**kwargs)
    expert = expert or import_object(suite.expert_factory)()
    try:
        budget = suite.task(task).max_steps
        obs = env.reset(task, episode_index, seed)
        frames: dict[str, list[np.ndarray]] = {c: [] for c in obs.images}
        states, actions = [], []
        success, steps = False, 0
        key = f"demo/{suite.name}/{task}/ep{episode_index}/seed{seed}"
        while steps < budget and not success:
            for action in expert.act([obs], [f"{key}@{steps}"])[0]:
                for camera, image in obs.images.items():
                    frames[camera].append(image)
                states.append(obs.state)
                actions.append(action)
                obs, done, success, _ = env.step(action, render=True)
                steps += 1
                if success or done or steps >= budget:
                    break
        return Demo(
            task=task,
            episode_index=episode_index,
            success=bool(success),
            instruction=obs.instruction,
            images={c: np.stack(f).astype(np.uint8) for c, f in frames.items()},
            state=np.stack(states).astype(np.float32),
            action=np.stack(actions).astype(np.float32),
            render=getattr(env, "render_settings", None),
        )
    finally:
        if own_env:
            env.close()


class _Worker:
    """Per-process env and expert, reused across episodes (building an env costs a scene compile)."""

    env = None
    expert = None


def _record_in_worker(suite_name: str, task: str, episode_index: int, seed: int, image_size: int) -> Demo:
    suite = get_suite(suite_name)
    if _Worker.env is None:
        _Worker.env = import_object(suite.env_factory)(
            **{**suite.env_kwargs, "split": "train", "image_size": image_size}
        )
        _Worker.expert = import_object(suite.expert_factory)()
    return record_episode(suite, task, episode_index, seed, image_size, _Worker.env, _Worker.expert)


def _write_episode(path: Path, demo: Demo) -> None:
    arrays = {f"image.{c}": v for c, v in demo.images.items()}
    np.savez_compressed(
        path,
        **arrays,
        state=demo.state,
        action=demo.action,
        instruction=np.array(demo.instruction),
        task=np.array(demo.task),
    )


def record_demos(
    suite: str,
    out_dir: str | Path,
    episodes_per_task: int,
    tasks: list[str] | None = None,
    image_size: int = 128,
    workers: int = 1,
    seed: int = 0,
    max_attempts_factor: float = 2.0,
    source: str | None = None,
) -> Path:
    """Write `episodes_per_task` successful expert demos of each task to `out_dir`; return it."""
    spec = get_suite(suite)
    _check_suite(spec)
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task={episodes_per_task}: expected at least 1")
    names = [_task_name(spec, t) for t in tasks] if tasks else [t.name for t in spec.tasks]
    for name in names:
        spec.task(name)  # a clear KeyError for an unknown task, before any work
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or delete it")
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    max_attempts = max(episodes_per_task, int(np.ceil(episodes_per_task * max_attempts_factor)))

    writer = _EpisodeWriter(out / "episodes")
    counts = {}
    pool = (
        ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 0 else None
    )  # spawn: a forked GL context is not usable
    try:
        for name in names:
            counts[name] = _record_task(
                spec, name, episodes_per_task, max_attempts, seed, image_size, pool, writer
            )
    finally:
        if pool is not None:
            pool.shutdown()
    if writer.written == 0:
        raise RuntimeError(
            f"the expert solved none of the tried episodes of {names}; nothing written to {out}"
        )
    info = {
        **FORMAT,
        "cameras": writer.cameras,
        "state_dim": int(writer.state_dim),
        "action_dim": spec.action_dim,
        "fps": spec.protocol.get("control_hz", 20),
        "num_episodes": writer.written,
        "source": source or f"evalsuite.demos.record_demos({suite!r}, episodes_per_task={episodes_per_task})",
        "suite": suite,
        "split": "train",
        "seed": seed,
        "image_size": image_size,
        "render": writer.render,
        "tasks": counts,
    }
    # written last: a directory without info.json is an interrupted recording
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


class _EpisodeWriter:
    """Writes successful demos as numbered episode files, and remembers what info.json says of them."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.written = 0
        self.cameras, self.state_dim, self.render = None, None, None

    def write(self, demo: Demo) -> None:
        _write_episode(self.directory / f"{self.written:06d}.npz", demo)
        self.cameras = self.cameras or sorted(demo.images)
        self.render = self.render or demo.render
        self.state_dim = demo.state.shape[1]
        self.written += 1


def _record_task(spec, name, wanted, max_attempts, seed, image_size, pool, writer: _EpisodeWriter) -> dict:
    """Up to `wanted` successful demos of one task from at most `max_attempts` layouts, written in
    episode order (so that the dataset does not depend on the number of workers)."""
    kept, tried = 0, 0
    while kept < wanted and tried < max_attempts:
        batch = range(tried, min(max_attempts, tried + wanted - kept))
        if pool is None:
            demos = [record_episode(spec, name, k, seed, image_size) for k in batch]
        else:
            futures = [pool.submit(_record_in_worker, spec.name, name, k, seed, image_size) for k in batch]
            demos = [f.result() for f in futures]
        tried = batch.stop
        for demo in demos:
            if demo.success and kept < wanted:
                writer.write(demo)
                kept += 1
    log.info("%s: %d demos from %d layouts", name, kept, tried)
    if kept < wanted:
        log.warning("%s: only %d of %d episodes succeeded", name, kept, wanted)
    return {"episodes": kept, "tried": tried}


def _task_name(suite: SuiteSpec, task: str) -> str:
    """A task name, or an index in the suite's order as `asyncvla-eval SUITE --tasks` takes it."""
    task = task.strip()
    if not task.isdigit():
        return task
    if int(task) >= len(suite.tasks):
        raise ValueError(
            f"task index {task} is out of range for suite {suite.name!r}, which has {len(suite.tasks)} "
            f"tasks (0-{len(suite.tasks) - 1}); `asyncvla-eval list {suite.name}` prints them"
        )
    return suite.tasks[int(task)].name


def demo_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="asyncvla-eval record-demos",
        description="Record successful scripted-expert demonstrations as an asyncvla-episodes dataset.",
    )
    p.add_argument(
        "suite", nargs="?", default="tabletop", help="suite with a scripted expert (default tabletop)"
    )
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--episodes-per-task", type=int, default=50)
    p.add_argument("--tasks", help="comma-separated task names or indices (default: all)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1, help="processes; 0 records inline")
    p.add_argument("--seed", type=int, default=0, help="seed of the training layouts")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = demo_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = record_demos(
            args.suite,
            args.out,
            args.episodes_per_task,
            tasks=args.tasks.split(",") if args.tasks else None,
            image_size=args.image_size,
            workers=args.workers,
            seed=args.seed,
            source="asyncvla-eval record-demos " + shlex.join(argv),
        )
    except (KeyError, ValueError, FileExistsError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"asyncvla-eval record-demos: error: {msg}", file=sys.stderr)
        return 2
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
