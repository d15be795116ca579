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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evalsuite.errors import UsageError
from evalsuite.eval_args import evaluate_from_argv
from evalsuite.evaluate import RunSummary


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
) -> RunSummary:
    """Evaluate `checkpoint` (a directory, or "demo") or the `policy` object on `suite` (a suite or
    family name, as `asyncvla-eval list` prints), and return its summary: run directory, records,
    tables (pandas) and their Markdown. `extra_args` passes any other command-line option."""
    if (checkpoint is None) == (policy is None):
        raise UsageError("evaluate_suite: give exactly one of checkpoint= and policy=")
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
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    return evaluate_from_argv([*argv, *extra_args], policy_object=policy, show_progress=show_progress)
