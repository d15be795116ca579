"""The `Policy` contract and the policies that need no checkpoint (random; scripted comes from the suite).

A policy maps a batch of observations to action chunks. The harness calls it with one key per
observation, `f"{episode_id}@{step}"`, and every bit of randomness a policy uses must be derived
from that key so that an episode's outcome never depends on batching or on which worker ran it.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

import numpy as np

from envs.base import Observation


@runtime_checkable
class Policy(Protocol):
    action_dim: int
    chunk_length: int

    def act(self, observations: list[Observation], keys: list[str]) -> np.ndarray:
        """Return action chunks, float32 [B, chunk_length, action_dim]."""

    def reset(self, episode_key: str) -> None: ...


def seed_from_key(key: str) -> int:
    """A stable 63-bit seed from a request key (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


class RandomPolicy:
    """Uniform random actions in [-1, 1], gripper included: the floor of every table."""

    def __init__(self, action_dim: int = 7, chunk_length: int = 8):
        self.action_dim = action_dim
        self.chunk_length = chunk_length

    def act(self, observations: list[Observation], keys: list[str]) -> np.ndarray:
        chunks = [
            np.random.default_rng(seed_from_key(k)).uniform(-1, 1, (self.chunk_length, self.action_dim))
            for k in keys
        ]
        return np.stack(chunks).astype(np.float32)

    def reset(self, episode_key: str) -> None:
        pass
