"""A one-dimensional toy simulator and suites for testing the runner's mechanics fast.

The runner, run store and CLI are tested here without a physics engine (faults, resume,
bad input); the same paths run against the real MuJoCo tabletop suite in test_tabletop_e2e.py.
Register with ASYNCVLA_SUITE_MODULES=toy_suite (and tests/ on PYTHONPATH for Ray workers).
"""

from __future__ import annotations

import os
import time

import numpy as np

from envs.base import Observation, SimulatorMissing, check_action
from evalsuite.suites.spec import SuiteSpec, TaskSpec


class ToyEnv:
    """x starts at 0.05 * episode index and must reach 0.6 x goal (1.5 x goal for reach_far); action[0] moves it 0.4."""

    def __init__(self, goal: float = 1.0):
        self.goal = goal
        self.x = 0.0

    def reset(self, task: str, episode_index: int, seed: int) -> Observation:
        self.x = 0.05 * episode_index
        self.target = self.goal * (1.5 if task == "reach_far" else 0.6)
        return self._obs(True)

    def _obs(self, render: bool) -> Observation:
        images = {"cam": np.full((8, 8, 3), int(100 * self.x) % 255, np.uint8)} if render else {}
        return Observation(images, np.array([self.x], np.float32), "reach the goal", {"x": self.x})

    def step(self, action, render: bool = True):
        action = check_action(action, 7)
        time.sleep(float(os.environ.get("ASYNCVLA_TOY_STEP_DELAY", 0)))  # lets a test kill a run mid-way
        self.x += 0.4 * float(action[0])
        success = self.x >= self.target
        return self._obs(render), False, success, {"x": self.x}

    def render_frame(self) -> np.ndarray:
        return np.full((16, 32, 3), 120, np.uint8)

    def close(self) -> None:
        pass


def make_env(**kwargs) -> ToyEnv:
    return ToyEnv(**kwargs)


def make_missing_env(**kwargs):
    raise SimulatorMissing("the toy simulator is not installed: run `pip install toy-sim` (test message)")


class CrashingToyEnv(ToyEnv):
    """Episode 1 of every task crashes on every attempt: a run that ends with error records."""

    def reset(self, task: str, episode_index: int, seed: int) -> Observation:
        if episode_index == 1:
            raise RuntimeError("toy simulator crashed (test)")
        return super().reset(task, episode_index, seed)


def make_crashing_env(**kwargs) -> CrashingToyEnv:
    return CrashingToyEnv(**kwargs)


class StallingToyEnv(ToyEnv):
    """Step 2 of episode 1 stalls for 3 s on every attempt (a physics step that does not come back
    in time): --step-timeout ends that attempt, the other episodes run on."""

    def reset(self, task: str, episode_index: int, seed: int) -> Observation:
        self.episode, self.steps = episode_index, 0
        return super().reset(task, episode_index, seed)

    def step(self, action, render: bool = True):
        self.steps += 1
        if self.episode == 1 and self.steps == 2:
            time.sleep(3.0)
        return super().step(action, render)


def make_stalling_env(**kwargs) -> StallingToyEnv:
    return StallingToyEnv(**kwargs)


class ToyExpert:
    action_dim = 7
    chunk_length = 4

    def act(self, observations, keys):
        return np.tile(np.eye(7, dtype=np.float32)[0], (len(observations), self.chunk_length, 1))

    def reset(self, episode_key: str) -> None:
        pass


class GainPolicy(ToyExpert):
    """Pushes x by 0.4 * gain per step: gain 1 solves every episode, small gains only short ones.
    Stands in for a checkpoint of known quality in the nightly-regression tests and demo."""

    def __init__(self, gain: float):
        self.gain = gain

    def act(self, observations, keys):
        actions = np.zeros((len(observations), self.chunk_length, self.action_dim), np.float32)
        actions[..., 0] = self.gain
        return actions


class NaNPolicy(ToyExpert):
    def act(self, observations, keys):
        return np.full((len(observations), self.chunk_length, 7), np.nan, np.float32)


class WrongDimPolicy(ToyExpert):
    def act(self, observations, keys):
        return np.zeros((len(observations), self.chunk_length, 6), np.float32)


def _suite(
    name: str, factory: str = "toy_suite:make_env", expert: str = "toy_suite:ToyExpert", **kw
) -> SuiteSpec:
    tasks = (
        TaskSpec("reach", "reach the goal", 12, 6),
        TaskSpec("reach_far", "reach the far goal", 12, 6, {"variant": "far"}),
    )
    return SuiteSpec(
        name=name,
        tasks=tasks,
        env_factory=factory,
        env_kwargs={"goal": 1.0},
        end_on_success=True,
        action_dim=kw.pop("action_dim", 7),
        protocol={"seed": 0},
        expert_factory=expert,
        family="toy",
        **kw,
    )


SUITES = [
    _suite("toy"),
    _suite("toy-nan", expert="toy_suite:NaNPolicy"),
    _suite("toy-wrongdim", expert="toy_suite:WrongDimPolicy"),
    _suite("toy-missing", factory="toy_suite:make_missing_env"),
    _suite("toy-crash", factory="toy_suite:make_crashing_env"),
    _suite("toy-stall", factory="toy_suite:make_stalling_env"),
    _suite("toy-6d", action_dim=6),  # a suite no 7-D checkpoint fits
]
