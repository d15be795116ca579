"""Evaluate from Python: a training loop, a notebook or a sweep calls what `asyncvla-eval` runs.

    from evalsuite import evaluate_suite

    summary = evaluate_suite("tabletop", checkpoint="ckpts/step-2000", episodes_per_task=5, out="evals/2000")
    summary = evaluate_suite("tabletop", policy=my_policy, tasks=[0, 3], workers=0, out="evals/live")
    summary.tables["per_task"], summary.records, summary.run_dir

It is the command's own path (`evalsuite.eval_args.evaluate_from_argv`): the same checks, the same run
directory (a call on an existing one resumes it; run.json, episodes.jsonl and the tables stay the
source of truth), the same tables. `policy` is any object with the Policy contract
(docs/CONTRACTS.md): with `workers=0` it runs in this process, the caller's object itself; with
workers > 0 Ray copies it into its policy server, so its class must be importable on every Ray
node (or defined in the calling script itself, which Ray ships by value). Bad arguments raise the command's one-line
errors (`evalsuite.errors.EvalError`).

An object has no content hash, so nothing tells two objects of one class apart: `policy_name=` and
`policy_version=` (e.g. the training step) say what it is, and are part of the run's identity. A
call with an object writes to a fresh directory under `runs/` unless `out=` is given; an `out`
holding a run resumes it only for the same name and version (another one is refused with both),
and is refused for an object without them.

A run where some episodes ended in errors returns normally: `summary.errors` counts them and
`summary.exit_code` is the command's (3); a run where every episode ended in an error measured
nothing and raises `RunFailed` with the first error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evalsuite.errors import EvalError, UsageError
from evalsuite.eval_args import evaluate_from_argv
from evalsuite.evaluate import RunSummary
from evalsuite.policy import PolicyObject


def evaluate_suite(
    suite: str,
    *,
    checkpoint: str | Path | None = None,
    policy=None,
    mode: str | None = None,
    tasks: Sequence[str | int] | None = None,
    episodes_per_task: int | None = None,
    workers: int = 0,
    out: str | Path | None = None,
    video: str = "none",
    seed: int | None = None,
    max_steps: int | None = None,
    replan_steps: int | None = None,
    latency: str | float | None = None,
    track: str | Path | None = None,
    extra_args: Sequence[str] = (),
    show_progress: bool = False,
    policy_name: str | None = None,
    policy_version: str | int | None = None,
) -> RunSummary:
    """Evaluate `checkpoint` (a directory, or "demo") or the `policy` object on `suite` (a suite or
    family name, as `asyncvla-eval list` prints), and return its summary: run directory, records,
    tables (pandas) and their Markdown. `extra_args` passes any other command-line option (not one
    that a keyword argument here sets)."""
    if (checkpoint is None) == (policy is None):
        raise UsageError("evaluate_suite: give exactly one of checkpoint= and policy=")
    if policy is None and (policy_name is not None or policy_version is not None):
        raise UsageError(
            "evaluate_suite: policy_name= and policy_version= name a policy object; a checkpoint is "
            "identified by its bytes"
        )
    argv = [suite, "--workers", str(workers), "--video", video]
    options = {
        "--ckpt": checkpoint,
        "--mode": mode,
        "--tasks": ",".join(str(t) for t in tasks) if tasks is not None else None,
        "--episodes-per-task": episodes_per_task,
        "--out": out,
        "--seed": seed,
        "--max-steps": max_steps,
        "--replan-steps": replan_steps,
        "--latency": latency,
        "--track": track,
    }
    _check_extra_args(
        extra_args, {"--policy": "policy", "--workers": "workers", "--video": "video", **KEYWORDS}
    )
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    named = PolicyObject(policy, policy_name, None if policy_version is None else str(policy_version))
    summary = evaluate_from_argv(
        [*argv, *extra_args], policy_object=named if policy is not None else None, show_progress=show_progress
    )
    if summary.records and summary.errors == len(summary.records):
        first = next(r.error for r in summary.records)
        raise RunFailed(
            f"every one of the {len(summary.records)} episodes ended in an error (the first: {first}); "
            f"nothing was measured. The records are in {summary.run_dir / 'episodes.jsonl'}; fix the "
            "cause and call again with extra_args=['--retry-errors']"
        )
    return summary


# the command-line flags that evaluate_suite's keyword arguments set
KEYWORDS = {
    "--ckpt": "checkpoint",
    "--mode": "mode",
    "--tasks": "tasks",
    "--episodes-per-task": "episodes_per_task",
    "--out": "out",
    "--seed": "seed",
    "--max-steps": "max_steps",
    "--replan-steps": "replan_steps",
    "--latency": "latency",
    "--track": "track",
}


class RunFailed(EvalError):
    """Every episode of the run ended in an error: nothing was measured (records kept)."""


def _check_extra_args(extra_args: Sequence[str], owned: dict[str, str]) -> None:
    """A flag in `extra_args` that a keyword argument sets would silently win over it (the last
    occurrence wins in argparse): `extra_args=['--policy', 'random']` replaced a `policy=` object."""
    for token in extra_args:
        flag = str(token).split("=", 1)[0]
        if flag in owned:
            raise UsageError(
                f"evaluate_suite: extra_args sets {flag}, which the keyword argument {owned[flag]}= sets; "
                f"pass it as {owned[flag]}= instead"
            )
