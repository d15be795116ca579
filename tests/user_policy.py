"""A user's own policy, given to the harness as `--policy user_policy:DriftPolicy` (tests/test_remote.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class DriftPolicy:
    """The Policy contract (docs/CONTRACTS.md) and nothing else: a small push along +x."""

    action_dim = 7
    chunk_length = 4

    def act(self, observations, keys):
        actions = np.zeros((len(observations), self.chunk_length, self.action_dim), np.float32)
        actions[..., 0] = 0.3
        return actions

    def reset(self, episode_key: str) -> None:
        pass


class NotAPolicy:
    """Forgets `act` and `chunk_length`."""

    action_dim = 7

    def reset(self, episode_key: str) -> None:
        pass


class PidPolicy(DriftPolicy):
    """DriftPolicy that leaves a file named after the process serving it in $ASYNCVLA_TEST_PID_DIR
    (tests/test_runner.py: which policy server replicas answered)."""

    def act(self, observations, keys):
        Path(os.environ["ASYNCVLA_TEST_PID_DIR"], str(os.getpid())).touch()
        return super().act(observations, keys)
