"""The `Policy` contract and the policies that need no checkpoint (random; scripted comes from the suite).

A policy maps a batch of observations to action chunks. The harness calls it with one key per
observation, `f"{draw_key}@{step}"` (the episode id without its mode: `EpisodeSpec.draw_key`), and
every bit of randomness a policy uses must be derived from that key, so that an episode's outcome
never depends on batching or on which worker ran it, and the modes of one model (the ablation rows)
draw the same noise on the same episode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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
class PolicyObject:
    """A policy object handed to `evalsuite.evaluate_suite`, with what its caller says it is. An
    object has no content hash, so its name and version (a training step, a commit) stand for its
    weights in the run's identity: a run directory resumes only for the same name and version."""

    instance: Any
    name: str | None = None
    version: str | None = None

    @property
    def named(self) -> bool:
        return self.name is not None and self.version is not None


@dataclass(frozen=True)
class PolicySpec:
    """How to build the run's policy; shipped to the policy server, which builds it there."""

    # "asyncvla" (a checkpoint), "scripted" (the suite's expert), "random", "import" (a user's
    # `module:Class`, run in the policy server like ours), "remote" (a websocket policy server),
    # "object" (a policy object handed to `evalsuite.evaluate_suite`, e.g. by a training loop)
    kind: str
    checkpoint: str | None = None
    mode: str = "asyncvla"  # asyncvla | sfm | random-mask (AsyncVLA inference modes)
    threshold: float = 0.5
    # random-mask mode: each token's chance of being regenerated; None = 0.5 (the paper's row), and
    # absent from run.json then, so runs made before the option keep their identity
    mask_rate: float | None = None
    eager: bool = False  # asyncvla: the reference inference path (asyncvla/model.py), not the fast one
    expert_factory: str | None = None
    action_dim: int = 7
    device: str = "cpu"
    factory: str | None = None  # import: "package.module:Class"
    url: str | None = None  # remote: ws://HOST:PORT (openpi's protocol) or vla-eval+ws://HOST:PORT
    layout: str | None = None  # remote: --remote-layout JSON (evalsuite.serving.remote.WireLayout)
    timeout_s: float = 120.0  # remote: seconds a request may wait for its answer
    # object: the policy itself (pickled to the policy server under Ray); run.json names its class
    # and what the caller says it is (`PolicyObject`): an object has no content hash
    instance: Any = field(default=None, compare=False, repr=False)
    object_name: str | None = None
    object_version: str | None = None
    # remote over vla-eval's protocol (--policy vla-eval+ws://): the server's HELLO and the benchmark
    # options the observations follow (evalsuite.serving.vla_eval_client.check_vla_eval_server)
    vla_eval: dict | None = field(default=None, compare=False)

    def describe(self) -> dict:
        """The spec as run.json records it: an object policy by its class and the name and version
        its caller gave (part of the run's identity), not its contents."""
        skip = {"instance", *(() if self.kind == "object" else ("object_name", "object_version"))}
        if self.vla_eval is None:  # absent, so that the identity of every other run stays as it was
            skip.add("vla_eval")
        if self.mask_rate is None:  # likewise
            skip.add("mask_rate")
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in skip}
        if self.kind == "object":
            values["factory"] = f"{type(self.instance).__module__}:{type(self.instance).__qualname__}"
        return {**values, "name": self.name}

    @property
    def name(self) -> str:
        return self.kind

    @property
    def episode_mode(self) -> str:
        """The mode part of an episode id: the inference mode for a model, else the policy kind."""
        return self.mode if self.kind == "asyncvla" else self.kind


def build_policy(spec: PolicySpec) -> Policy:
    """The run's policy, its `act` held to the contract's batch dimension (`BatchChecked`)."""
    return BatchChecked(_build(spec))


class BatchChecked:
    """A policy whose `act` must answer one chunk per observation: one too many would go
    unnoticed (the extra chunk dropped), one too few would leave an episode without its actions.
    Checked here, where every caller (inline, env worker, policy server) gets its chunks; the
    action dimension is checked per chunk by the episode loop. Anything else is the policy's own."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def __getattr__(self, name: str):  # the policy's own attributes (action_dim, model, ...)
        if name == "policy":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.policy, name)

    def act(self, observations: list[Observation], keys: list[str]) -> np.ndarray:
        actions = self.policy.act(observations, keys)
        check_batch(actions, len(observations))
        return actions


def chunk_info_of(policy, key: str) -> dict | None:
    """What `policy` said of the chunk it made for request `key`: a policy may keep a
    `chunk_info` mapping (AsyncVLA: {"regenerated": tokens AFM regenerated, "tokens": L})."""
    return getattr(policy, "chunk_info", {}).get(key)


def check_batch(actions, observations: int) -> None:
    """`actions` holds one chunk per observation, or a `FatalPolicyError` (it would repeat on every call)."""
    from evalsuite.errors import FatalPolicyError

    shape = tuple(np.shape(actions))  # a numpy array, a torch tensor or a list of chunks
    if not shape or shape[0] != observations:
        raise FatalPolicyError(
            f"the policy returned {shape[0] if shape else 'no'} action chunks for {observations} "
            f"observation(s) (shape {shape}); act() must return one chunk per observation, "
            "[B, chunk_length, action_dim] (docs/CONTRACTS.md)"
        )


def _build(spec: PolicySpec) -> Policy:
    if spec.kind == "random":
        return RandomPolicy(action_dim=spec.action_dim)
    if spec.kind == "scripted":
        if not spec.expert_factory:
            raise ValueError("this suite has no scripted expert; use --policy random or --ckpt PATH")
        from evalsuite.suites.spec import import_object

        return import_object(spec.expert_factory)()
    if spec.kind == "asyncvla":
        import asyncvla

        return asyncvla.load(
            spec.checkpoint,
            mode=spec.mode,
            threshold=spec.threshold,
            device=spec.device,
            fast=not spec.eager,
            mask_rate=spec.mask_rate,
        )
    if spec.kind == "remote" and spec.url and spec.url.startswith("vla-eval+"):
        from evalsuite.serving.vla_eval_client import VlaEvalPolicy

        return VlaEvalPolicy(spec.url, spec.action_dim, spec.vla_eval, spec.timeout_s)
    if spec.kind == "remote":
        from evalsuite.serving.remote import RemotePolicy, WireLayout

        return RemotePolicy(spec.url, spec.action_dim, WireLayout.parse(spec.layout), spec.timeout_s)
    if spec.kind == "import":
        return import_policy(spec.factory)
    if spec.kind == "object":
        return spec.instance
    raise ValueError(
        f"unknown policy kind {spec.kind!r}; expected asyncvla, scripted, random, import, remote or object"
    )


def import_policy(factory: str) -> Policy:
    """A user's policy class, `package.module:Class`, built without arguments and checked against
    the contract: a broken one stops the run with one message instead of failing every episode."""
    from evalsuite.errors import FatalPolicyError

    cls = import_policy_class(factory)
    try:
        policy = cls()
    except Exception as e:  # user code: any failure to construct is reported, not raised through
        raise FatalPolicyError(f"--policy {factory}: {factory}() failed ({type(e).__name__}: {e})") from e
    problems = contract_problems(policy)
    if problems:
        raise contract_error(factory, problems)
    return policy


def contract_problems(policy_or_class) -> list[str]:
    """The members of the Policy contract that `policy_or_class` lacks or has invalid."""
    problems = [name for name in ("act", "reset") if not callable(getattr(policy_or_class, name, None))]
    problems += [
        name
        for name in ("action_dim", "chunk_length")
        if not isinstance(getattr(policy_or_class, name, None), int) or getattr(policy_or_class, name) < 1
    ]
    return problems


def contract_error(factory: str, problems: list[str]):
    from evalsuite.errors import FatalPolicyError

    return FatalPolicyError(
        f"--policy {factory}: does not implement the Policy contract (docs/CONTRACTS.md): "
        f"missing or invalid {', '.join(problems)}"
    )


def import_policy_class(factory: str) -> type:
    """The class `package.module:Class` names, imported (not built), or a `FatalPolicyError`."""
    from evalsuite.errors import FatalPolicyError
    from evalsuite.suites.spec import import_object

    try:
        cls = import_object(factory)
    except (ImportError, AttributeError, ValueError) as e:
        raise FatalPolicyError(
            f"--policy {factory}: cannot import it ({type(e).__name__}: {e}); give package.module:Class "
            "importable here (and on every Ray node)"
        ) from e
    if not callable(cls):
        raise FatalPolicyError(f"--policy {factory}: names a {type(cls).__name__}, not a Policy class")
    return cls
