"""The `Policy` contract and the policies that need no checkpoint (random; scripted comes from the suite).

A policy maps a batch of observations to action chunks. The harness calls it with one key per
observation, `f"{draw_key}@{step}"` (the episode id without its mode: `EpisodeSpec.draw_key`), and
every bit of randomness a policy uses must be derived from that key, so that an episode's outcome
never depends on batching or on which worker ran it, and the modes of one model (the ablation rows)
draw the same noise on the same episode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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


# -- which policy a run uses -------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySpec:
    """How to build the run's policy; shipped to the policy server, which builds it there."""

    kind: str  # "asyncvla" (from a checkpoint), "scripted" (the suite's expert), "random"
    checkpoint: str | None = None
    mode: str = "asyncvla"  # asyncvla | sfm | random-mask (AsyncVLA inference modes)
    threshold: float = 0.5
    expert_factory: str | None = None
    action_dim: int = 7
    device: str = "cpu"

    @property
    def name(self) -> str:
        return self.kind

    @property
    def episode_mode(self) -> str:
        """The mode part of an episode id: the inference mode for a model, else the policy kind."""
        return self.mode if self.kind == "asyncvla" else self.kind


def build_policy(spec: PolicySpec) -> Policy:
    if spec.kind == "random":
        return RandomPolicy(action_dim=spec.action_dim)
    if spec.kind == "scripted":
        if not spec.expert_factory:
            raise ValueError("this suite has no scripted expert; use --policy random or --ckpt PATH")
        from evalsuite.suites.spec import import_object

        return import_object(spec.expert_factory)()
    if spec.kind == "asyncvla":
        import asyncvla

        return asyncvla.load(spec.checkpoint, mode=spec.mode, threshold=spec.threshold, device=spec.device)
    raise ValueError(f"unknown policy kind {spec.kind!r}; expected asyncvla, scripted or random")
