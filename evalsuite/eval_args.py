"""The evaluation command's arguments, and the turning of them into a run.

`eval_parser` is the parser of `asyncvla-eval SUITE ...`; `config_from_args` checks every argument
(suites and `--set` overrides, the checkpoint or policy, the cluster address, the run directory)
and returns the run's `EvalConfig`; `evaluate_from_argv` is the whole evaluation from an argv, for
the command and for `evalsuite.evaluate_suite`. The subcommands that take the same arguments or
checks (ablations, nightly, serve) and scripts import them from here; `evalsuite/cli.py` only
dispatches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
import uuid
from pathlib import Path

from evalsuite.errors import ArgumentParser, UsageError
from evalsuite.evaluate import EvalConfig, RunSummary, evaluate
from evalsuite.policy import PolicyObject, PolicySpec, build_policy
from evalsuite.run.asynchronous import JOINS
from evalsuite.run.runner_base import IN_WORKER_POLICIES, RunOptions
from evalsuite.store import check_run_dir
from evalsuite.suites import registry
from evalsuite.suites.spec import SuiteSpec
from evalsuite.validate import (
    check_async_join,
    check_checkpoint_for,
    check_external_policy,
    check_numbers,
    check_policy_object,
    check_ray_address,
    check_replan_steps,
    check_set_value,
    parse_latency,
    policy_kind,
    resolve_device,
)


def resolve_suites(name: str, only: str | None) -> list[SuiteSpec]:
    """A suite name, or a family name that stands for several suites (e.g. `libero` = the paper's four)."""
    suites = registry()
    if name in suites:
        chosen = [suites[name]]
    else:
        chosen = [s for s in suites.values() if s.family == name]
        if not chosen:
            families = sorted({s.family for s in suites.values() if s.family})
            raise UsageError(
                f"unknown suite {name!r}; suites: {', '.join(sorted(suites))}; families: {', '.join(families)}"
            )
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in suites]
        if unknown:
            raise UsageError(
                f"unknown suite(s) in --suites: {', '.join(unknown)}; available: {', '.join(sorted(suites))}"
            )
        repeated = sorted({n for n in wanted if wanted.count(n) > 1})
        if repeated:
            raise UsageError(
                f"--suites names {', '.join(repeated)} more than once; each suite runs once per run "
                "(--episodes-per-task sets how many episodes)"
            )
        mine = [s.name for s in chosen]
        foreign = [n for n in wanted if n not in mine]
        if foreign:
            raise UsageError(
                f"--suites {', '.join(foreign)}: not a suite of {name!r} (its suites: {', '.join(mine)}); "
                f"run `asyncvla-eval {foreign[0]}` for it"
            )
        chosen = [suites[n] for n in wanted]
    return chosen


def resolve_checkpoint(path: str) -> str:
    if path == "demo":
        from asyncvla import demo_checkpoint  # imports torch

        try:
            return str(demo_checkpoint())
        except FileNotFoundError as e:
            raise UsageError(str(e)) from e
    if not Path(path).exists():
        raise UsageError(f"checkpoint {path!r} does not exist; pass a checkpoint directory (or 'demo')")
    return str(Path(path).resolve())  # the policy server may run on another node, in another directory


def apply_overrides(suite: SuiteSpec, overrides: list[str]) -> SuiteSpec:
    """`--set KEY=VALUE` changes a key of the suite's env_kwargs; unknown keys are refused."""
    kwargs = dict(suite.env_kwargs)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in kwargs:
            raise UsageError(
                f"--set {key}: suite {suite.name!r} has no such option; options: {', '.join(sorted(kwargs))}"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        default = suite.env_kwargs[key]
        if not _same_kind(value, default):
            raise UsageError(
                f"--set {key}={raw}: suite {suite.name!r} expects {type(default).__name__} "
                f"(default {json.dumps(default)}), got {type(value).__name__}"
            )
        check_set_value(suite, key, raw, value)
        kwargs[key] = value
    return dataclasses.replace(suite, env_kwargs=kwargs)


def _same_kind(value, default) -> bool:
    """A --set value fits an option when it has the default's type (an int where a float goes;
    any value where the default is None)."""
    if default is None:
        return True
    if value is None:
        return False
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def apply_client_preset(
    suites: list[SuiteSpec], explicit: set[str] = frozenset()
) -> tuple[list[SuiteSpec], dict]:
    """`--set client=NAME`: the preset's env options go into each suite's env_kwargs (so run.json
    records them with the client's name), except those `--set` gave (`explicit`); its replan
    steps and seed are returned for the run."""
    names = {s.env_kwargs.get("client") for s in suites} - {None}
    if not names:
        return suites, {}
    name = names.pop()
    out = []
    for suite in suites:
        if name not in suite.client_presets:
            known = ", ".join(suite.client_presets) or "none"
            raise UsageError(f"--set client={name}: suite {suite.name!r} knows the clients: {known}")
        preset = suite.client_presets[name]
        chosen = {k: v for k, v in preset["env_kwargs"].items() if k not in explicit}
        out.append(dataclasses.replace(suite, env_kwargs={**suite.env_kwargs, **chosen}))
    return out, suite.client_presets[name]


def render_at_model_size(suite: SuiteSpec, checkpoint: str, overrides: list[str] = ()) -> SuiteSpec:
    """The suite's env renders at the checkpoint's image size where its protocol allows it and
    `--set image_size=...` (one of `overrides`) did not choose a size."""
    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        return suite  # (a missing config.json is reported by the checkpoint loader, with its name)
    try:
        size = json.loads(config.read_text()).get("model", {}).get("image_size")  # save_checkpoint's layout
    except (OSError, ValueError, AttributeError):
        return suite  # a damaged config.json is reported by the checkpoint check, with its name
    return render_at_size(suite, size, overrides)


def render_at_size(suite: SuiteSpec, size: int | None, overrides: list[str] = ()) -> SuiteSpec:
    """The suite's env renders at `size`, the policy's image size (a checkpoint's, or the one a
    remote server announces), where the suite's protocol allows it and `--set image_size=...` (one
    of `overrides`) did not choose a size; `size` None leaves the suite as it is."""
    chosen = any(item.partition("=")[0] == "image_size" for item in overrides)
    if not size or chosen or not suite.render_at_model_size or "image_size" not in suite.env_kwargs:
        return suite
    return dataclasses.replace(suite, env_kwargs={**suite.env_kwargs, "image_size": size})


def eval_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="asyncvla-eval", description="Evaluate a policy on a simulated benchmark suite.")
    p.add_argument(
        "suite", help="suite or family name (e.g. tabletop, libero, libero_spatial, simpler-widowx)"
    )
    p.add_argument("--suites", help="comma-separated suites of the family to run")
    p.add_argument(
        "--robustness",
        metavar="KINDS",
        help="LIBERO: run each chosen paper suite with its LIBERO-PRO perturbations (e.g. swap,lan,object) "
        "in one plan and write the paired robustness table (docs/libero.md)",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument("--ckpt", help="AsyncVLA checkpoint directory, or 'demo' for the shipped tabletop model")
    who.add_argument(
        "--policy",
        help="scripted | random | ws://HOST:PORT (a websocket policy server, openpi's protocol) | "
        "vla-eval+ws://HOST:PORT[?OPTION=VALUE...] (a vla-eval model server, docs/remote.md) | "
        "package.module:Class (your Policy, run in the batching policy server)",
    )
    p.add_argument(
        "--mode",
        default="asyncvla",
        choices=["asyncvla", "sfm", "random-mask", "rater-resample"],
        help="AsyncVLA inference mode (default: asyncvla = SFM, rater, AFM; rater-resample, not the "
        "paper's: the rater's flagged tokens from a fresh SFM draw instead of AFM, issue 42)",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="confidence threshold T of the rater")
    p.add_argument(
        "--mask-rate",
        type=float,
        help="--mode random-mask: each token's chance of being regenerated (default 0.5); give the "
        "rater's own firing rate to compare which tokens are regenerated at the same count",
    )
    p.add_argument(
        "--eager-inference",
        action="store_true",
        help="run AsyncVLA through the reference path of asyncvla/model.py instead of the fast one "
        "(debugging; bit-identical on CPU)",
    )
    p.add_argument("--device", default="auto", help="policy device: auto, cpu, cuda")
    p.add_argument("--episodes-per-task", type=int, help="episodes per task (default: the suite's)")
    p.add_argument("--tasks", help="comma-separated task names, or indices in the suite's order (0,3)")
    p.add_argument("--workers", type=int, default=2, help="env workers; 0 runs inline without Ray")
    p.add_argument("--address", help="Ray cluster address to join (default: start a local cluster)")
    p.add_argument("--out", help="run directory (default: runs/<suite>-<policy>-<mode>-seed<S>)")
    p.add_argument(
        "--video",
        default="first",
        choices=["none", "first", "all"],
        help="first = the first success and the first failure of each task",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="env seed (default: the suite's protocol seed or 0)"
    )
    p.add_argument("--replan-steps", type=int, help="actions executed per chunk (default: the whole chunk)")
    p.add_argument("--max-steps", type=int, help="override every task's step budget (recorded in run.json)")
    p.add_argument(
        "--track",
        metavar="DIR",
        help="also log the run (tables, per-task success and Wilson intervals, a video per task, run.json) "
        "to a TensorBoard log directory (docs/tracking.md); nothing is logged without it",
    )
    p.add_argument("--track-step", type=int, default=0, help="--track: the step to log at (a training step)")
    p.add_argument(
        "--latency",
        metavar="measured|MS",
        help="latency-aware evaluation: the environment keeps stepping while the policy computes a chunk "
        "(each call's measured wall time, or a fixed figure in ms; docs/latency.md)",
    )
    p.add_argument(
        "--async-join",
        choices=JOINS,
        help="with --latency: how a chunk that arrives late is executed: naive (from its first action, the "
        "default), skip (its first d actions dropped), afm-inpaint (AsyncVLA regenerates it around the "
        "actions committed during the call), pause (asked for only after --replan-steps actions; "
        "docs/latency.md)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite env option"
    )
    p.add_argument(
        "--backend", help="simulator backend of suites that have several (simpler-widowx: maniskill3)"
    )
    p.add_argument(
        "--retries", type=int, default=2, help="retries of a crashed episode before it is an error"
    )
    p.add_argument(
        "--episode-timeout", type=float, default=1800.0, help="seconds before a hung episode is retried"
    )
    p.add_argument(
        "--step-timeout",
        type=float,
        help="seconds one simulator step may take before its episode is retried (evalsuite/run/watchdog.py)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="policy server: largest batch")
    p.add_argument(
        "--policy-servers",
        type=int,
        default=1,
        help="policy server replicas, one GPU each with --device cuda; env workers share them round-robin",
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="policy server: longest wait to fill a batch"
    )
    p.add_argument(
        "--retry-errors", action="store_true", help="on resume, run episodes recorded as errors again"
    )
    p.add_argument("--dry-run", action="store_true", help="print the episode plan and run nothing")
    p.add_argument(
        "--remote-layout",
        help="--policy ws://...: JSON of the wire keys (docs/remote.md), e.g. "
        '\'{"images": {"agentview": "observation/exterior_image_1_left"}}\'',
    )
    p.add_argument(
        "--remote-timeout", type=float, default=120.0, help="--policy ws://...: seconds to wait for an answer"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(
    args: argparse.Namespace,
    argv: list[str],
    check_ckpt: bool = True,
    out_is_run: bool = True,
    policy_object: PolicyObject | None = None,
) -> EvalConfig:
    """The run's configuration, every argument checked (and the checkpoint, unless `check_ckpt` is
    False: the nightly job checks each checkpoint itself, to report a broken one and go on; and
    --out as a run directory unless `out_is_run` is False: the ablations' holds one run per row)."""
    overrides = [*args.set, *([f"backend={args.backend}"] if args.backend else [])]
    chosen = resolve_suites(args.suite, args.suites)
    if getattr(args, "robustness", None) is not None:  # a base suite and its perturbations, paired
        from evalsuite.suites.libero_pro import with_perturbations

        chosen = with_perturbations(chosen, args.robustness)
    suites = [apply_overrides(s, overrides) for s in chosen]
    kind, checkpoint, chunk_length, suites = _choose_policy(args, suites, check_ckpt, policy_object)
    suites, preset = apply_client_preset(suites, {item.partition("=")[0] for item in args.set})
    latency = parse_latency(args.latency, suites)
    check_async_join(args.async_join, latency, kind)
    if latency is not None:
        join = args.async_join or "naive"
        suites = [dataclasses.replace(s, latency=latency, async_join=join) for s in suites]
    check_numbers(args)
    policy = _policy_spec(args, kind, checkpoint, suites, _device_for(args, kind), policy_object)
    external_chunk_length, served_size = check_external_policy(policy)
    chunk_length = external_chunk_length or chunk_length
    if kind == "remote":  # the images the server's policy was trained at, as for --ckpt
        suites = [render_at_size(s, served_size, args.set) for s in suites]
    replan_steps = _checked_replan_steps(args, preset, policy, chunk_length, suites)
    seed = args.seed if args.seed is not None else int(preset.get("seed", suites[0].protocol.get("seed", 0)))
    if kind == "remote" and policy.url.startswith("vla-eval+"):  # its HELLO and options go into run.json
        from evalsuite.serving.vla_eval_client import check_vla_eval_server

        policy = check_vla_eval_server(policy, suites, seed, args.max_steps, latency)
    out = _run_dir(args, policy, seed, policy_object)
    tasks = _parse_tasks(args.tasks)
    if out_is_run:
        check_run_dir(out)
    return EvalConfig(
        suites=suites,
        policy=policy,
        out=out,
        seed=seed,
        tasks=tasks,
        episodes_per_task=args.episodes_per_task,
        options=_run_options(args, replan_steps),
        retry_errors=args.retry_errors,
        command=["asyncvla-eval", *argv],
    )


def _run_dir(args, policy: PolicySpec, seed: int, policy_object: PolicyObject | None) -> Path:
    """--out, or the default: one directory per experiment for a checkpoint or a named policy (a
    second run resumes it), a fresh one for each call with a policy object (nothing tells two
    objects apart: a training loop's step 2 must not get step 1's results)."""
    if policy_object is not None:
        if args.out is None:
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            label = "-".join(str(x) for x in (policy_object.name, policy_object.version) if x is not None)
            label = re.sub(r"[^A-Za-z0-9._-]+", "_", label)
            return Path("runs") / f"{args.suite}-object-{label or 'unnamed'}-{stamp}"
        if (Path(args.out) / "run.json").exists() and not policy_object.named:
            raise UsageError(
                f"out={args.out} holds a run, and a policy object has no content hash to tell whether it "
                "is the policy that made it: pass policy_name= and policy_version= (e.g. the training "
                "step) to resume a run made under the same ones, or choose another out"
            )
        return Path(args.out)
    if args.out:
        return Path(args.out)
    robustness = getattr(args, "robustness", None)
    name = f"{args.suite}-robustness-{robustness.replace(',', '-')}" if robustness else args.suite
    return Path("runs") / f"{name}-{policy.name}-{policy.episode_mode}-seed{seed}"


def _choose_policy(args, suites: list[SuiteSpec], check_ckpt: bool, policy_object: PolicyObject | None):
    """Which policy the arguments name: (kind, checkpoint, chunk length where known before the run,
    the suites rendered at the checkpoint's image size)."""
    chunk_length = None
    if policy_object is not None and (args.ckpt or args.policy):
        given = f"--ckpt {args.ckpt}" if args.ckpt else f"--policy {args.policy}"
        raise UsageError(
            f"a policy object was given, and {given} too (in extra_args): give one policy, not both"
        )
    if args.ckpt:
        kind, checkpoint = "asyncvla", resolve_checkpoint(args.ckpt)
        if check_ckpt:
            chunk_length = check_checkpoint_for(checkpoint, suites, args.mode).chunk_length
        suites = [render_at_model_size(s, checkpoint, args.set) for s in suites]
    elif args.policy:
        kind, checkpoint = policy_kind(args.policy), None
    elif policy_object is not None:
        kind, checkpoint = "object", None
        chunk_length = check_policy_object(policy_object.instance, suites[0].action_dim)
    else:
        raise UsageError(
            "choose a policy: --ckpt PATH (or --ckpt demo) or --policy scripted|random|ws://HOST:PORT|module:Class"
        )
    if kind == "scripted" and not suites[0].expert_factory:
        raise UsageError(
            f"suite {suites[0].name!r} has no scripted expert; use --policy random or --ckpt PATH"
        )
    if args.remote_layout and kind != "remote":
        given = f"--ckpt {args.ckpt}" if args.ckpt else f"--policy {args.policy}"
        raise UsageError(
            "--remote-layout sets the wire keys of a remote policy (--policy ws://HOST:PORT) and means "
            f"nothing with {given}: leave it out"
        )
    return kind, checkpoint, chunk_length, suites


def _device_for(args, kind: str) -> str:
    """The policy's device, once the cluster it runs on (--address or RAY_ADDRESS) is checked."""
    # ray.init joins the cluster RAY_ADDRESS names when --address is left out: check it alike
    address, address_source = args.address, "--address"
    if not address and os.environ.get("RAY_ADDRESS") and args.workers > 0:
        address, address_source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    # a policy without a model has no device: leave torch, slow to import, out of its start-up
    # (results/bench/startup.json)
    no_model = kind in IN_WORKER_POLICIES and args.device == "auto"
    device = "cpu" if no_model else resolve_device(args.device, address)
    if address:
        check_ray_address(address, source=address_source)
    return device


def _policy_spec(
    args, kind: str, checkpoint, suites: list[SuiteSpec], device: str, policy_object
) -> PolicySpec:
    return PolicySpec(
        kind=kind,
        checkpoint=checkpoint,
        mode=args.mode,
        threshold=args.threshold,
        mask_rate=args.mask_rate,
        eager=args.eager_inference,
        expert_factory=suites[0].expert_factory,
        action_dim=suites[0].action_dim,
        device=device,
        factory=args.policy if kind == "import" else None,
        url=args.policy if kind == "remote" else None,
        layout=args.remote_layout if kind == "remote" else None,
        timeout_s=args.remote_timeout,
        instance=policy_object.instance if policy_object else None,
        object_name=policy_object.name if policy_object else None,
        object_version=policy_object.version if policy_object else None,
    )


def _checked_replan_steps(args, preset: dict, policy: PolicySpec, chunk_length, suites) -> int | None:
    """--replan-steps (or the client preset's), checked against the policy's chunk length."""
    replan_steps = args.replan_steps or preset.get("replan_steps")
    if replan_steps and policy.kind in IN_WORKER_POLICIES and policy.kind != "remote":
        chunk_length = build_policy(policy).chunk_length  # scripted or random: built in microseconds
    client = suites[0].env_kwargs.get("client")
    flag = "--replan-steps" if args.replan_steps else f"--set client={client}: its replan steps"
    check_replan_steps(replan_steps, chunk_length, f"the policy ({args.ckpt or args.policy})", flag)
    return replan_steps


def _run_options(args, replan_steps: int | None) -> RunOptions:
    return RunOptions(
        workers=args.workers,
        address=args.address,
        replan_steps=replan_steps,
        max_steps=args.max_steps,
        video=args.video,
        retries=args.retries,
        episode_timeout_s=args.episode_timeout,
        step_timeout_s=args.step_timeout,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        policy_servers=args.policy_servers,
    )


def _parse_tasks(tasks: str | None) -> list[str] | None:
    if tasks is None:
        return None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UsageError("--tasks is empty; give comma-separated task names, or leave it out for all")
    return names


def evaluate_from_argv(
    argv: list[str], policy_object: PolicyObject | None = None, show_progress: bool = True
) -> RunSummary:
    """The one path of an evaluation, for the command and for `evalsuite.evaluate_suite`: the
    arguments checked, the run made (or resumed), the tables written, the run logged where
    `--track` says."""
    return evaluate_args(eval_parser().parse_args(argv), argv, policy_object, show_progress)


def evaluate_args(
    args: argparse.Namespace,
    argv: list[str],
    policy_object: PolicyObject | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """`evaluate_from_argv` for arguments already parsed from `argv`."""
    config = config_from_args(args, argv, policy_object=policy_object)
    summary = evaluate(config, show_progress=show_progress)
    if args.track:
        from evalsuite.tracking import log_run

        log_run(summary, args.track, step=args.track_step)
    return summary
