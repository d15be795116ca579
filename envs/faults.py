"""Fault injection: wrap any env so chosen episodes crash, segfault or hang.

Used by the runner's recovery tests and useful for checking a cluster set-up. Attempts are
counted in files under `state_dir`, because a segfaulted worker process loses its memory and is
restarted by Ray.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from envs.base import Env, Observation


class InjectedCrash(RuntimeError):
    pass


class FaultyEnv:
    def __init__(self, inner: Env, faults: dict[str, dict[int, int]], state_dir: str):
        """`faults` maps a kind ("raise", "segfault", "hang") to {episode_index: attempts that fail}
        (-1: every attempt fails)."""
        self.inner = inner
        self.faults = {kind: {int(k): int(v) for k, v in eps.items()} for kind, eps in faults.items()}
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._fault: str | None = None

    def reset(self, task: str, episode_index: int, seed: int) -> Observation:
        self._fault = None
        counter = self.state_dir / f"{task}-{episode_index}.attempts"
        attempt = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(attempt + 1))
        for kind, episodes in self.faults.items():
            failing = episodes.get(episode_index, 0)
            if failing == -1 or attempt < failing:
                self._fault = kind
        return self.inner.reset(task, episode_index, seed)

    def step(self, action: np.ndarray, render: bool = True):
        if self._fault == "raise":
            raise InjectedCrash("injected env crash")
        if self._fault == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self._fault == "hang":
            time.sleep(3600)
        return self.inner.step(action, render=render)

    def render_frame(self) -> np.ndarray:
        return self.inner.render_frame()

    def close(self) -> None:
        self.inner.close()


def make_env(inner_factory: str, inner_kwargs: dict, faults: dict, state_dir: str) -> FaultyEnv:
    from importlib import import_module

    module, _, attr = inner_factory.partition(":")
    return FaultyEnv(getattr(import_module(module), attr)(**inner_kwargs), faults, state_dir)
