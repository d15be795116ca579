"""Initial scene layouts: the 50 shipped evaluation states per task, and fresh training layouts.

Like LIBERO's, a task's scenes vary around one arrangement: each task has a fixed *template*
(where every block and fixture sits, drawn once from `TEMPLATE_SEED`), and every episode places
each object uniformly within `JITTER` metres (blocks' yaw within `YAW_JITTER`) of its template
spot, as LIBERO's BDDL regions do. The ten templates differ, so the instruction still decides which
block goes where, and the jitter is what a policy must see in its cameras. (An earlier version
scattered every object over the whole table per episode; a 1 M-parameter policy trained on CPU
could not learn that from 30 demos per task, while LIBERO-sized variation is learnable.)

Episode k of a task always starts from layout k of `init_states.npz`, generated once from
`EVAL_SEED` by `python -m envs.tabletop.init_states` (a test regenerates it and compares).
Demonstrations for training draw the jitter from a different seed (`TRAIN_SEED`, per task,
episode index and seed), so evaluation states stay held out.

A layout is stored as poses, not as a MuJoCo qpos, so it survives edits of the scene file:
block x, y, yaw; fixture x, y; hand x, y, z, yaw.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.tabletop.tasks import BLOCKS, FIXTURES, PUSH_DIRECTIONS, TASKS, Task

EVAL_SEED = 20240611
TRAIN_SEED = 7_000_001
TEMPLATE_SEED = 31_415
JITTER = 0.03  # metres, per axis, around the template spot (LIBERO regions are 2-5 cm)
YAW_JITTER = 0.2  # radians around the template yaw
EPISODES_PER_TASK = 50
INIT_STATES_PATH = Path(__file__).with_name("init_states.npz")

# Footprint radii and the clearance a grasp needs: open fingers reach 5 cm from a block's centre.
_RADIUS = {**{b: 0.03 for b in BLOCKS}, "blue_plate": 0.055, "white_plate": 0.055, "bowl": 0.082}
_CLEARANCE_BLOCK = 0.045  # between a block and anything else (finger sweep)
_CLEARANCE_FIXTURES = 0.02
_X = (-0.17, 0.17)
_Y = (-0.27, 0.27)
log = logging.getLogger(__name__)


@dataclass
class Layout:
    blocks: np.ndarray  # (4, 3): x, y, yaw of BLOCKS
    fixtures: np.ndarray  # (3, 2): x, y of FIXTURES
    hand: np.ndarray  # (4,): x, y, z, yaw of the gripper at the start


def _clear(name: str, xy: np.ndarray, placed: dict[str, np.ndarray], extra: float = 0.0) -> bool:
    for other, oxy in placed.items():
        margin = extra + (_CLEARANCE_FIXTURES if name in FIXTURES and other in FIXTURES else _CLEARANCE_BLOCK)
        if np.linalg.norm(xy - oxy) < _RADIUS[name] + _RADIUS[other] + margin:
            return False
    return True


def _push_path_clear(task: Task, placed: dict[str, np.ndarray]) -> bool:
    """The corridor the block is pushed through (and the hand's approach behind it) is free."""
    direction = PUSH_DIRECTIONS[task.target]
    x, y = placed[task.obj]
    end = y + direction * 0.19
    if not _Y[0] - 0.06 <= end <= _Y[1] + 0.06:
        return False
    lo, hi = sorted((end, y - direction * 0.09))
    for other, (ox, oy) in placed.items():
        if other == task.obj:
            continue
        r = _RADIUS[other]
        if abs(ox - x) < 0.05 + r and lo - r < oy < hi + r:
            return False
    return True


def _hand(rng: np.random.Generator) -> np.ndarray:
    return np.array(
        [rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0.17, 0.23), rng.uniform(-0.3, 0.3)]
    )


def _valid(task: Task, placed: dict[str, np.ndarray]) -> bool:
    names = list(placed)
    for i, name in enumerate(names):
        if not (_X[0] <= placed[name][0] <= _X[1] and _Y[0] <= placed[name][1] <= _Y[1]):
            return False
        if not _clear(name, placed[name], {o: placed[o] for o in names[:i]}):
            return False
    return task.kind != "push" or _push_path_clear(task, placed)


def sample_layout(
    rng: np.random.Generator, task: Task, extra_clearance: float = 0.0, max_tries: int = 10_000
) -> Layout:
    """Rejection-sample a layout over the whole table where every block can be grasped and the
    task's path is free, with `extra_clearance` between objects (the task templates are drawn
    this way, with room for the jitter)."""
    for _ in range(max_tries):
        placed: dict[str, np.ndarray] = {}
        for name in FIXTURES + BLOCKS:
            for _ in range(200):
                xy = rng.uniform((_X[0], _Y[0]), (_X[1], _Y[1]))
                if _clear(name, xy, placed, extra_clearance):
                    placed[name] = xy
                    break
            else:
                break
        if len(placed) < len(FIXTURES) + len(BLOCKS):
            continue
        if task.kind == "push" and not _push_path_clear(task, placed):
            continue
        yaws = rng.uniform(-np.pi / 4, np.pi / 4, len(BLOCKS))
        blocks = np.array([[*placed[b], yaw] for b, yaw in zip(BLOCKS, yaws)])
        fixtures = np.array([placed[f] for f in FIXTURES])
        return Layout(blocks=blocks, fixtures=fixtures, hand=_hand(rng))
    raise RuntimeError(
        f"no layout for task {task.name!r} after {max_tries} tries; the constraints are too tight"
    )


@functools.cache
def template(task: Task) -> Layout:
    """The task's fixed arrangement, the centre of all its layouts (evaluation and training)."""
    return sample_layout(
        np.random.default_rng([TEMPLATE_SEED, TASKS.index(task)]), task, extra_clearance=2 * JITTER
    )


def jittered_layout(rng: np.random.Generator, task: Task, max_tries: int = 1_000) -> Layout:
    """One episode's layout: every object within JITTER of its template spot, checked as above."""
    base = template(task)
    for _ in range(max_tries):
        blocks = base.blocks.copy()
        blocks[:, :2] += rng.uniform(-JITTER, JITTER, (len(BLOCKS), 2))
        blocks[:, 2] += rng.uniform(-YAW_JITTER, YAW_JITTER, len(BLOCKS))
        fixtures = base.fixtures + rng.uniform(-JITTER, JITTER, base.fixtures.shape)
        placed = {**dict(zip(FIXTURES, fixtures)), **{b: xy[:2] for b, xy in zip(BLOCKS, blocks)}}
        if _valid(task, placed):
            return Layout(blocks=blocks, fixtures=fixtures, hand=_hand(rng))
    raise RuntimeError(f"no jittered layout for task {task.name!r} after {max_tries} tries")


def generate(seed: int = EVAL_SEED, episodes: int = EPISODES_PER_TASK) -> dict[str, np.ndarray]:
    """All tasks' evaluation layouts as arrays "<task>/blocks" (E,4,3), "/fixtures" (E,3,2), "/hand" (E,4)."""
    arrays: dict[str, np.ndarray] = {}
    for i, task in enumerate(TASKS):
        rng = np.random.default_rng([seed, i])
        layouts = [jittered_layout(rng, task) for _ in range(episodes)]
        for field in ("blocks", "fixtures", "hand"):
            arrays[f"{task.name}/{field}"] = np.stack([getattr(lay, field) for lay in layouts])
    return arrays


def train_layout(task: Task, episode_index: int, seed: int) -> Layout:
    """A fresh layout for demonstrations, never one of the evaluation states' stream."""
    return jittered_layout(np.random.default_rng([TRAIN_SEED, TASKS.index(task), episode_index, seed]), task)


class InitStates:
    """The shipped evaluation layouts, loaded once per env."""

    def __init__(self, path: Path = INIT_STATES_PATH):
        from envs.base import SetupError

        if not path.is_file():
            raise SetupError(
                f"{path} is missing: reinstall the package or regenerate it with "
                "`python -m envs.tabletop.init_states`"
            )
        with np.load(path) as z:
            self.arrays = {k: z[k] for k in z.files}

    def count(self, task: Task) -> int:
        return len(self.arrays[f"{task.name}/blocks"])

    def layout(self, task: Task, episode_index: int) -> Layout:
        n = self.count(task)
        if not 0 <= episode_index < n:
            raise IndexError(
                f"episode index {episode_index} out of range: task {task.name!r} ships {n} initial states "
                f"(0..{n - 1}); use split='train' for fresh layouts"
            )
        return Layout(
            *(self.arrays[f"{task.name}/{f}"][episode_index] for f in ("blocks", "fixtures", "hand"))
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Regenerate the tabletop suite's shipped evaluation initial states."
    )
    p.add_argument("--out", type=Path, default=INIT_STATES_PATH)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    args = p.parse_args(argv)
    np.savez_compressed(args.out, **generate(args.seed))
    logging.basicConfig(level=logging.INFO)
    log.info("wrote %s (%d tasks x %d layouts, seed %d)", args.out, len(TASKS), EPISODES_PER_TASK, args.seed)


if __name__ == "__main__":
    main()
