"""The checks `asyncvla-eval` runs on its input before anything is started or written.

Numbers, the device, the Ray address, the checkpoint (from its headers, in the driver, never
first in an actor), an external policy (a websocket server answers and fits the suite; a user's
class imports and keeps the contract). Each failure is a `UsageError` or another `EvalError` with
one line that says what to change.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite.errors import UsageError
from evalsuite.policy import PolicySpec
from evalsuite.suites.spec import SuiteSpec

# (flag, attribute, smallest allowed value, what it means) for the numeric options
NUMERIC_LIMITS = (
    ("--workers", "workers", 0, "0 runs inline"),
    ("--retries", "retries", 0, "extra attempts after the first"),
    ("--max-steps", "max_steps", 1, "a step budget"),
    ("--replan-steps", "replan_steps", 1, "actions executed per chunk"),
    ("--episodes-per-task", "episodes_per_task", 1, "episodes per task"),
    ("--max-batch", "max_batch", 1, "the policy server's largest batch"),
    ("--max-wait-ms", "max_wait_ms", 0, "milliseconds"),
    ("--policy-servers", "policy_servers", 1, "policy server replicas"),
)


@dataclass(frozen=True)
class SetRange:
    """The values a `--set` option takes: integers from `low` to `high` (None: unbounded), one of
    `choices`, or only its default (`fixed`: the option names the suite itself)."""

    low: int | None = None
    high: int | None = None
    choices: tuple = ()
    fixed: bool = False
    enforced_by: str = ""  # the env that refuses the same values when it is built

    def problem(self, value: Any) -> str | None:
        if self.choices and value not in self.choices:
            return f"choose one of {', '.join(map(json.dumps, self.choices))}"
        if self.low is not None or self.high is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                return "expected an integer"
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                if self.high is None:
                    return f"must be at least {self.low}"
                return f"must be an integer from {self.low} to {self.high}"
        return None


# Every env option of the built-in suites that `--set` may change, and its values: checked here,
# before anything is written, rather than by the env in each worker (a traceback per episode).
# An option not listed (a plug-in suite's own) is checked for its default's type only.
SET_OPTIONS: dict[str, SetRange] = {
    "image_size": SetRange(16, 512, enforced_by="envs/tabletop/env.py"),
    "split": SetRange(choices=("eval", "train"), enforced_by="envs/tabletop/env.py"),
    "settle_steps": SetRange(0, None, enforced_by="envs/tabletop/env.py, envs/libero/env.py"),
    "resolution": SetRange(16, None, enforced_by="envs/libero/env.py"),
    "gripper": SetRange(choices=("continuous", "sign"), enforced_by="envs/libero/env.py"),
    "skip_unused_renders": SetRange(choices=(True, False)),
    "cheap_reset": SetRange(choices=(True, False)),
    "suite": SetRange(fixed=True),
    "group": SetRange(fixed=True),
    "backend": SetRange(choices=("sapien2", "maniskill3"), enforced_by="envs/simpler/adapter.py"),
    "gripper_input": SetRange(choices=("open01", "closedness_pm1"), enforced_by="envs/simpler/actions.py"),
    "rotation": SetRange(choices=("rpy", "axis_angle"), enforced_by="envs/simpler/actions.py"),
    "seed_repeats": SetRange(1, None),
    "end_on_first_success": SetRange(choices=(True, False)),
    "check_assets": SetRange(choices=(True, False)),
    "terminate_in_action": SetRange(choices=(True, False)),
}


def check_set_value(suite: SuiteSpec, key: str, raw: str, value: Any) -> None:
    """`--set key=raw` (parsed to `value`) against SET_OPTIONS; the caller checked the type."""
    limits = SET_OPTIONS.get(key)
    if limits is None:
        return
    default = suite.env_kwargs[key]
    if limits.fixed and value != default:
        raise UsageError(
            f"--set {key}={raw}: {key} names suite {suite.name!r} itself ({json.dumps(default)}); "
            "run the suite you want by its name instead"
        )
    problem = limits.problem(value)
    if problem:
        raise UsageError(
            f"--set {key}={raw}: {problem} (suite {suite.name!r}, default {json.dumps(default)})"
        )


def check_async_join(join: str | None, latency, kind: str) -> None:
    """--async-join joins a late chunk: it needs a latency, and `afm-inpaint` an AsyncVLA checkpoint
    (it regenerates around committed actions with AFM) and a latency known before each call."""
    if join is None:
        return
    if latency is None:
        raise UsageError(
            f"--async-join {join}: a join says how a late chunk is executed, so it needs --latency "
            "(MS or measured); leave it out for the synchronous run"
        )
    if join == "afm-inpaint" and kind != "asyncvla":
        raise UsageError(
            "--async-join afm-inpaint regenerates a chunk around the committed actions with AsyncVLA's "
            "asynchronous flow matching: it needs --ckpt; use naive or skip with other policies"
        )
    if join == "afm-inpaint" and latency == "measured":
        raise UsageError(
            "--async-join afm-inpaint commits the actions that run during the call, so it needs the "
            "latency before the call: give --latency MS (a fixed latency), or use skip with measured"
        )


def parse_latency(raw: str | None, suites: list[SuiteSpec]) -> str | float | None:
    """--latency measured|MS: the policy's thinking time, as the environment sees it."""
    if raw is None:
        return None
    if raw == "measured":
        value: str | float = raw
    else:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.0 <= value < 1e6:
            raise UsageError(
                f"--latency {raw}: give 'measured' (each policy call's own wall time) or a fixed latency "
                "in milliseconds, e.g. --latency 200"
            )
    missing = [s.name for s in suites if s.control_hz is None]
    if missing:
        raise UsageError(
            f"--latency: suite {missing[0]!r} declares no control rate, so a latency cannot be turned "
            "into steps; latency-aware evaluation runs on the tabletop and LIBERO suites"
        )
    return value


def check_policy_object(policy, action_dim: int) -> int:
    """A policy object handed to `evalsuite.evaluate_suite` keeps the contract; its chunk length."""
    from evalsuite.policy import contract_problems

    problems = contract_problems(policy)
    if problems:
        raise UsageError(
            f"the policy object ({type(policy).__name__}) does not implement the Policy contract "
            f"(docs/CONTRACTS.md): missing or invalid {', '.join(problems)}"
        )
    if policy.action_dim != action_dim:
        raise UsageError(
            f"the policy object returns {policy.action_dim}-D actions but the suite takes {action_dim}-D ones"
        )
    return policy.chunk_length


def check_replan_steps(replan_steps: int | None, chunk_length: int | None, who: str, flag: str) -> None:
    """Executing more actions per chunk than the policy predicts would silently execute the chunk."""
    if replan_steps and chunk_length and replan_steps > chunk_length:
        raise UsageError(
            f"{flag} {replan_steps}: {who} predicts chunks of {chunk_length} actions; use --replan-steps "
            f"{chunk_length} or fewer, or leave it out to execute the whole chunk"
        )


# a timer's limit: the OS timers take seconds as a C double converted to a time value, and 1e300
# overflows it (OverflowError inside every episode); no episode, step or request runs a week
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def check_numbers(args: argparse.Namespace) -> None:
    for flag, attr, low, meaning in NUMERIC_LIMITS:
        value = getattr(args, attr, None)
        if value is not None and value < low:
            raise UsageError(f"{flag} {value}: must be at least {low} ({meaning})")
    if getattr(args, "policy_servers", 1) > max(args.workers, 1):
        raise UsageError(
            f"--policy-servers {args.policy_servers} exceeds --workers {args.workers}: a server without "
            "env workers would hold its GPU for nothing"
        )
    for flag, value in (
        ("--episode-timeout", args.episode_timeout),
        ("--step-timeout", getattr(args, "step_timeout", None)),
        ("--remote-timeout", args.remote_timeout),
    ):
        if value is not None and not 0 < value <= MAX_TIMEOUT_S:
            raise UsageError(
                f"{flag} {value}: must be a positive number of seconds, at most {MAX_TIMEOUT_S:g} "
                "(a week); leave it out for no limit"
            )
    track = getattr(args, "track", None)
    if track is not None and Path(track).exists() and not Path(track).is_dir():
        raise UsageError(f"--track {track} is a file; give a directory for the TensorBoard event files")
    if not 0 < args.threshold < 1:
        raise UsageError(
            f"--threshold {args.threshold}: the rater's threshold T lies strictly between 0 and 1"
        )
    rate = getattr(args, "mask_rate", None)
    if rate is not None and (getattr(args, "mode", None) != "random-mask" or not 0 < rate <= 1):
        raise UsageError(
            f"--mask-rate {rate}: the chance a token is regenerated, in (0, 1], and only with --mode random-mask"
        )


def resolve_device(device: str, address: str | None) -> str:
    """`auto` -> cuda when this machine sees a GPU. An explicit cuda on a machine without one is
    refused (the policy server would wait for a GPU forever), unless the run joins a cluster, whose
    GPUs are checked when it connects."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and address is None and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device}: this machine has no usable GPU (torch.cuda.is_available() is False); "
            "use --device cpu, or --address to join a Ray cluster that has GPUs"
        )
    return device


def check_checkpoint_for(checkpoint: str, suites: list[SuiteSpec], mode: str | None = None):
    """The checkpoint is checked here, in the driver, before anything starts: never first in an actor.
    With `mode`, also that it was trained for that inference mode (a trained rater for asyncvla).
    Returns its ModelConfig."""
    from asyncvla.checkpoint import check_checkpoint, check_mode, check_weights_finite, read_training_record

    cfg, _, _ = check_checkpoint(checkpoint)
    if mode is not None:
        check_mode(checkpoint, read_training_record(checkpoint), mode)
    for suite in suites:
        if cfg.action_dim != suite.action_dim:
            raise UsageError(
                f"checkpoint {checkpoint} predicts {cfg.action_dim}-D actions but suite {suite.name!r} "
                f"takes {suite.action_dim}-D ones; use a checkpoint trained for this suite"
            )
    check_weights_finite(checkpoint, files=("rater.safetensors",))  # the model's: where it is loaded
    return cfg


def policy_kind(value: str) -> str:
    """What --policy names: scripted, random, a websocket server, or a user's module:Class."""
    if value in ("scripted", "random"):
        return value
    if value.startswith(("ws://", "wss://", "vla-eval+ws://", "vla-eval+wss://")):
        return "remote"  # openpi's protocol, or vla-eval's (evalsuite/serving/vla_eval_client.py)
    module, sep, attr = value.partition(":")
    if sep and module and attr.isidentifier():
        return "import"
    raise UsageError(
        f"--policy {value!r}: use scripted, random, ws://HOST:PORT (an openpi-protocol server), "
        "vla-eval+ws://HOST:PORT (a vla-eval model server) or package.module:Class"
    )


def check_external_policy(policy: PolicySpec) -> tuple[int | None, int | None]:
    """A remote server answers and fits the suite; a user's class imports and keeps the contract:
    checked once here, before anything starts, instead of failing in every worker. Returns the
    policy's chunk length where the server's metadata or the class says it, and the image size a
    server's metadata announces (`served_image_size`; None for a class or a server that does not say).

    A user's class is imported, not built (building may load a model, which the policy server
    builds again): its class attributes are checked here, and the instance's contract where it is
    built (`evalsuite.policy.import_policy`)."""
    if policy.kind == "remote" and policy.url.startswith("vla-eval+"):
        return 1, None  # one action per observation; checked against the suites by check_vla_eval_server
    if policy.kind == "remote":
        from websockets.exceptions import WebSocketException

        from evalsuite.serving.remote import WireLayout, probe, served_image_size

        try:
            WireLayout.parse(policy.layout)
        except (ValueError, TypeError) as e:
            raise UsageError(str(e)) from e
        try:
            metadata = probe(policy.url, policy.action_dim, timeout_s=min(10.0, policy.timeout_s))
        except WebSocketException as e:  # something answers there, but not a websocket server
            raise UsageError(
                f"--policy {policy.url}: the server there does not speak the websocket protocol "
                f"({type(e).__name__}: {e}); point --policy at a policy server (asyncvla-eval serve, openpi's)"
            ) from e
        length = metadata.get("chunk_length") if isinstance(metadata, dict) else None
        return (length if isinstance(length, int) else None), served_image_size(metadata)
    if policy.kind == "import":
        from evalsuite.policy import contract_error, contract_problems, import_policy_class

        cls = import_policy_class(policy.factory)
        problems = contract_problems(cls)
        # methods live on the class; action_dim and chunk_length may be set by __init__ instead
        if any(name in ("act", "reset") or hasattr(cls, name) for name in problems):
            raise contract_error(policy.factory, problems)
        action_dim, chunk_length = getattr(cls, "action_dim", None), getattr(cls, "chunk_length", None)
        if isinstance(action_dim, int) and action_dim != policy.action_dim:
            raise UsageError(
                f"--policy {policy.factory} returns {action_dim}-D actions but the suite takes "
                f"{policy.action_dim}-D ones"
            )
        return (chunk_length if isinstance(chunk_length, int) else None), None
    return None, None


def check_ray_address(address: str, timeout_s: float = 5.0, source: str = "--address") -> None:
    """A HOST:PORT that nothing answers on is refused in seconds (ray.init would wait on it).
    `source`: where the address came from, --address or the RAY_ADDRESS environment variable
    (ray.init reads it when --address is left out), checked alike."""
    import socket

    if address == "auto" or address.startswith("local"):
        return
    shown = f"RAY_ADDRESS={address}" if source == "RAY_ADDRESS" else f"--address {address}"
    instead = "unset RAY_ADDRESS" if source == "RAY_ADDRESS" else "leave --address out"
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"{shown}: expected HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT or auto; "
            f"or {instead} to start a local cluster"
        )
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UsageError(
            f"{shown}: no Ray cluster answers there ({e.strerror or e}); start one with "
            f"`ray start --head` on that host, or {instead} to start a local one"
        ) from e
