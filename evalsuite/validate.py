"""The checks `asyncvla-eval` runs on its input before anything is started or written.

Numbers, the device, the Ray address, the checkpoint (from its headers, in the driver, never
first in an actor), an external policy (a websocket server answers and fits the suite; a user's
class imports and keeps the contract). Each failure is a `UsageError` or another `EvalError` with
one line that says what to change.
"""

from __future__ import annotations

import argparse

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
    if args.episode_timeout is not None and not args.episode_timeout > 0:
        raise UsageError(f"--episode-timeout {args.episode_timeout}: must be a positive number of seconds")
    if args.remote_timeout is not None and not args.remote_timeout > 0:
        raise UsageError(f"--remote-timeout {args.remote_timeout}: must be a positive number of seconds")
    if not 0 < args.threshold < 1:
        raise UsageError(
            f"--threshold {args.threshold}: the rater's threshold T lies strictly between 0 and 1"
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


def check_checkpoint_for(checkpoint: str, suites: list[SuiteSpec], mode: str | None = None) -> None:
    """The checkpoint is checked here, in the driver, before anything starts: never first in an actor.
    With `mode`, also that it was trained for that inference mode (a trained rater for asyncvla)."""
    from asyncvla.checkpoint import check_checkpoint, check_mode, read_training_record

    cfg, _, _ = check_checkpoint(checkpoint)
    if mode is not None:
        check_mode(checkpoint, read_training_record(checkpoint), mode)
    for suite in suites:
        if cfg.action_dim != suite.action_dim:
            raise UsageError(
                f"checkpoint {checkpoint} predicts {cfg.action_dim}-D actions but suite {suite.name!r} "
                f"takes {suite.action_dim}-D ones; use a checkpoint trained for this suite"
            )


def policy_kind(value: str) -> str:
    """What --policy names: scripted, random, a websocket server, or a user's module:Class."""
    if value in ("scripted", "random"):
        return value
    if value.startswith(("ws://", "wss://")):
        return "remote"
    module, sep, attr = value.partition(":")
    if sep and module and attr.isidentifier():
        return "import"
    raise UsageError(
        f"--policy {value!r}: use scripted, random, ws://HOST:PORT (a policy server) or package.module:Class"
    )


def check_external_policy(policy: PolicySpec) -> None:
    """A remote server answers and fits the suite; a user's class imports and keeps the contract:
    checked once here, before anything starts, instead of failing in every worker."""
    if policy.kind == "remote":
        from evalsuite.remote import WireLayout, probe

        try:
            WireLayout.parse(policy.layout)
        except (ValueError, TypeError) as e:
            raise UsageError(str(e)) from e
        probe(policy.url, policy.action_dim, timeout_s=min(10.0, policy.timeout_s))
    elif policy.kind == "import":
        from evalsuite.policy import import_policy

        built = import_policy(policy.factory)
        if built.action_dim != policy.action_dim:
            raise UsageError(
                f"--policy {policy.factory} returns {built.action_dim}-D actions but the suite takes "
                f"{policy.action_dim}-D ones"
            )


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that nothing answers on is refused in seconds (ray.init would wait on it)."""
    import socket

    if address == "auto" or address.startswith("local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(
            f"--address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT or auto"
        )
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UsageError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
            "`ray start --head` on that host, or leave --address out to start a local one"
        ) from e
