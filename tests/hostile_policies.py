"""Policies that break the contract in one way each, for tests/test_cli_hostile2.py
(`--policy hostile_policies:ExtraRowPolicy`, with tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np


class _Base:
    action_dim = 7
    chunk_length = 4

    def chunks(self, n: int) -> np.ndarray:
        actions = np.zeros((n, self.chunk_length, self.action_dim), np.float32)
        actions[..., 0] = 0.3
        return actions

    def act(self, observations, keys):
        return self.chunks(len(observations))

    def reset(self, episode_key: str) -> None:
        pass


class ExtraRowPolicy(_Base):
    """B + 1 chunks for B observations."""

    def act(self, observations, keys):
        return self.chunks(len(observations) + 1)


class MissingRowPolicy(_Base):
    """B - 1 chunks for B observations."""

    def act(self, observations, keys):
        return self.chunks(len(observations) - 1)


class SleepyPolicy(_Base):
    """Hangs: every call sleeps far longer than any test waits."""

    def act(self, observations, keys):
        time.sleep(600)
        return self.chunks(len(observations))


class CountedPolicy(_Base):
    """Leaves one file in $ASYNCVLA_TEST_BUILD_DIR per instance built (how often a model would load)."""

    def __init__(self):
        Path(os.environ["ASYNCVLA_TEST_BUILD_DIR"], f"{os.getpid()}-{uuid.uuid4().hex}").touch()


class SixDimPolicy(_Base):
    """Says, as a class attribute, that it predicts 6-D actions."""

    action_dim = 6


class StubbornPolicy(_Base):
    """Catches Exception and retries a slow call, as a policy with a retry loop around a flaky
    server does: a time limit raised into it as an ordinary exception would be swallowed."""

    def act(self, observations, keys):
        for _ in range(60):
            try:
                time.sleep(0.5)
            except Exception:
                continue
        return self.chunks(len(observations))


class ShortChunkPolicy(_Base):
    """Declares chunks of 6 actions and returns 4."""

    chunk_length = 6

    def act(self, observations, keys):
        return np.zeros((len(observations), 4, self.action_dim), np.float32)


class EmptyChunkPolicy(_Base):
    """Returns chunks of no actions, [B, 0, 7]."""

    def act(self, observations, keys):
        return np.zeros((len(observations), 0, self.action_dim), np.float32)


class FirstCallSlowPolicy(_Base):
    """Its first call costs a second (a compile, a CUDA graph capture), every later one nothing."""

    def __init__(self):
        self.calls = 0

    def act(self, observations, keys):
        self.calls += 1
        if self.calls == 1:
            time.sleep(1.0)
        return self.chunks(len(observations))
