"""`asyncvla-eval nightly` and `asyncvla-eval compare`: evaluate new checkpoints, compare, report.

    asyncvla-eval nightly --ckpt-dir DIR SUITE... [--history H.sqlite] [--baseline previous|PATH]
                          [--out-root DIR] [eval options: --episodes-per-task, --workers, --mode, ...]
    asyncvla-eval compare RUN_A RUN_B [--alpha 0.05] [--report-dir DIR]

Exit codes: 0 nothing got significantly worse, 1 something did, 2 bad input, 3 nothing got worse
but a checkpoint could not be evaluated (it is named on stderr and in the report; the others were
evaluated). A broken checkpoint never enters the history: it is checked again the next night.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from evalsuite.errors import ArgumentParser, UsageError
from evalsuite.eval_args import (
    apply_overrides,
    config_from_args,
    eval_parser,
    render_at_model_size,
    resolve_suites,
)
from evalsuite.evaluate import evaluate
from evalsuite.manifest import checkpoint_sha256
from evalsuite.regression.compare import ALPHA, CompareError, Comparison, compare_runs, load_run, run_label
from evalsuite.regression.history import History, HistoryError, RunRow, TaskResult
from evalsuite.regression.report import NightlyReport, to_markdown, write_report
from evalsuite.suites import registry
from evalsuite.tables import per_task_table, records_frame
from evalsuite.validate import check_checkpoint_for, check_replan_steps

log = logging.getLogger(__name__)

EXIT_BROKEN = 3
CHECKPOINT_MARKER = "config.json"  # save_checkpoint writes it last: its presence means complete

# Evaluation options passed through to `asyncvla-eval SUITE` (same names, same meaning).
FORWARDED: dict[str, dict] = {
    "--mode": dict(choices=["asyncvla", "sfm", "random-mask"], help="AsyncVLA inference mode"),
    "--threshold": dict(type=float, help="confidence threshold T of the rater"),
    "--device": dict(help="policy device: auto, cpu, cuda"),
    "--episodes-per-task": dict(type=int, help="episodes per task (default: the suite's)"),
    "--tasks": dict(help="comma-separated task names"),
    "--workers": dict(type=int, help="env workers; 0 runs inline without Ray"),
    "--address": dict(help="Ray cluster address to join"),
    "--video": dict(choices=["none", "first", "all"], help="videos to record (default: first)"),
    "--seed": dict(type=int, help="env seed (default: the suite's protocol seed)"),
    "--replan-steps": dict(type=int, help="actions executed per chunk"),
    "--max-steps": dict(type=int, help="override every task's step budget"),
    "--set": dict(action="append", metavar="KEY=VALUE", help="override a suite env option"),
    "--retries": dict(type=int, help="retries of a crashed episode"),
    "--episode-timeout": dict(type=float, help="seconds before a hung episode is retried"),
}


def nightly_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="asyncvla-eval nightly",
        description="Evaluate checkpoints not yet in the history, compare with a baseline, write a report.",
    )
    p.add_argument("suites", nargs="+", metavar="SUITE", help="suite or family names (as for asyncvla-eval)")
    p.add_argument("--ckpt-dir", required=True, help="directory holding checkpoint directories (any depth)")
    p.add_argument("--out-root", default="runs/nightly", help="dated run directories and reports go here")
    p.add_argument("--history", help="SQLite history file (default: OUT_ROOT/history.sqlite)")
    p.add_argument(
        "--baseline",
        default="previous",
        help="'previous' (the checkpoint evaluated before) or a pinned checkpoint or run directory",
    )
    p.add_argument("--alpha", type=float, default=ALPHA, help="family-wise significance level (Holm)")
    p.add_argument("--date", help="date of the run directories, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    group = p.add_argument_group("evaluation options (as for asyncvla-eval SUITE)")
    for flag, kwargs in FORWARDED.items():
        group.add_argument(flag, default=None, **kwargs)
    return p


@dataclass
class Evaluated:
    run: RunRow
    per_task: pd.DataFrame
    new: bool  # evaluated (or finished) tonight


class Nightly:
    """One night: the chosen suites, evaluation options and history, applied to checkpoint dirs."""

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args, self.argv = args, argv
        if not 0 < args.alpha < 1:
            raise UsageError(f"--alpha must be between 0 and 1, got {args.alpha}")
        date = args.date or datetime.now(timezone.utc).strftime("%Y-%m-%d")
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
                raise ValueError(date)
            datetime.strptime(date, "%Y-%m-%d")
        except ValueError:
            raise UsageError(
                f"--date must look like 2026-11-27 (a calendar date, YYYY-MM-DD), got {date!r}"
            ) from None
        self.date = date
        self.out_root = Path(args.out_root)
        if not Path(args.ckpt_dir).is_dir():
            raise UsageError(
                f"--ckpt-dir {args.ckpt_dir} is not a directory; pass the directory your training writes checkpoints into"
            )
        suites = {}
        for name in args.suites:
            for suite in resolve_suites(name, None):
                suites[suite.name] = apply_overrides(suite, args.set or [])
        self.suites = list(suites.values())
        dims = {s.action_dim for s in self.suites}
        if len(dims) > 1:
            raise UsageError(
                f"suites {', '.join(suites)} differ in action_dim {sorted(dims)}; run them in separate nights"
            )
        self.suite_names = [s.name for s in self.suites]
        # Validate the evaluation options now (bad input is exit code 2 before anything runs).
        probe = self.config_for(Path(args.ckpt_dir), self.out_root / "_probe", check_ckpt=False)
        self.mode = probe.policy.episode_mode
        self.broken: list[tuple[Path, str]] = []  # checkpoints that cannot be evaluated, and why

    def config_for(self, checkpoint: Path, out: Path, check_ckpt: bool = True):
        eval_args = eval_parser().parse_args(
            [self.suite_names[0], "--ckpt", str(checkpoint), "--out", str(out)]
        )
        for flag in FORWARDED:
            dest = flag.lstrip("-").replace("-", "_")
            if getattr(self.args, dest) is not None:
                setattr(eval_args, dest, getattr(self.args, dest))
        eval_args.set = []  # already applied to self.suites
        config = config_from_args(eval_args, ["nightly", *self.argv], check_ckpt=check_ckpt)
        suites = [render_at_model_size(s, str(checkpoint), self.args.set or []) for s in self.suites]
        return dataclasses.replace(config, suites=suites)

    def evaluate_checkpoint(self, history: History, checkpoint: Path) -> Evaluated | None:
        """Evaluate one checkpoint unless the history has it; resume its run directory if unfinished.
        A checkpoint that cannot be loaded (or does not fit the suites) is noted in `self.broken` and
        skipped (None): it never enters the history, and the other checkpoints are still evaluated."""
        from asyncvla.checkpoint import CheckpointError

        try:
            cfg = check_checkpoint_for(str(checkpoint), self.suites, self.args.mode or "asyncvla")
            check_replan_steps(
                self.args.replan_steps, cfg.chunk_length, f"checkpoint {checkpoint}", "--replan-steps"
            )
        except (CheckpointError, UsageError) as e:
            log.error("broken checkpoint %s: %s", checkpoint, e)
            self.broken.append((checkpoint, str(e)))
            return None
        sha = checkpoint_sha256(checkpoint)
        run = history.find_run(sha, self.suite_names, self.mode)
        if run is not None and run.status == "done":
            log.info("%s (sha256 %s) is already in the history: %s", checkpoint, sha[:12], run.run_dir)
            return Evaluated(run, pd.DataFrame(), new=False)
        if run is None:
            run_dir = self.out_root / self.date / f"{checkpoint.name}-{sha[:12]}"
            run = history.start_run(sha, checkpoint, self.suite_names, self.mode, run_dir)
        else:
            log.info("resuming the unfinished run of %s in %s", checkpoint, run.run_dir)
        config = self.config_for(checkpoint, Path(run.run_dir), check_ckpt=False)  # checked above
        summary = evaluate(config, show_progress=not self.args.quiet)
        per_task = summary.tables["per_task"]
        history.finish_run(
            run.id,
            [
                TaskResult(r.suite, r.task, int(r.episodes), int(r.successes), int(r.errors))
                for r in per_task.itertuples()
            ],
        )
        return Evaluated(history.find_run(sha, self.suite_names, self.mode), per_task, new=True)

    def baseline_for(self, history: History, pinned: Evaluated | Path | None, run: RunRow) -> Path | None:
        if isinstance(pinned, Path):
            return pinned
        if isinstance(pinned, Evaluated):
            return None if pinned.run.id == run.id else Path(pinned.run.run_dir)
        previous = history.previous_run(run)
        return Path(previous.run_dir) if previous else None

    def run(self) -> int:
        checkpoints = find_checkpoints(Path(self.args.ckpt_dir))
        history_path = Path(self.args.history) if self.args.history else self.out_root / "history.sqlite"
        with History(history_path) as history:
            pinned: Evaluated | Path | None = None
            if self.args.baseline != "previous":
                base = Path(self.args.baseline)
                if (base / "run.json").exists():
                    pinned = base
                elif (base / CHECKPOINT_MARKER).exists():
                    pinned = self.evaluate_checkpoint(history, base)
                    if pinned is None:
                        raise UsageError(f"--baseline {base} cannot be evaluated: {self.broken.pop()[1]}")
                else:
                    raise UsageError(
                        f"--baseline {base}: not a run directory (run.json) nor a checkpoint directory "
                        f"({CHECKPOINT_MARKER}); pass 'previous', a checkpoint or a run directory"
                    )
            evaluated = [self.evaluate_checkpoint(history, c) for c in checkpoints]
            new = [e for e in evaluated if e is not None and e.new]
            if not new:
                log.info(
                    "no new checkpoint under %s (%d known); nothing to compare",
                    self.args.ckpt_dir,
                    len(checkpoints),
                )
                return self.report_broken(0)
            comparisons = []
            for item in new:
                baseline = self.baseline_for(history, pinned, item.run)
                if baseline is None:
                    log.info("no baseline for %s yet: it is the first of the history", item.run.run_dir)
                    continue
                comparisons.append(compare_runs(baseline, item.run.run_dir, self.args.alpha))
            trend = history.trend(self.suite_names, self.mode)
        latest = new[-1]
        report = NightlyReport(
            title=f"Nightly evaluation {self.date}: {', '.join(self.suite_names)} ({self.mode})",
            latest_label=f"{latest.run.checkpoint_name} ({latest.run.checkpoint_sha256[:8]}), run {latest.run.run_dir}",
            latest=latest.per_task,
            comparisons=comparisons,
            trend=trend,
            notes=[f"{len(new)} new checkpoint(s) under {self.args.ckpt_dir}; history {history_path}"]
            + [f"BROKEN checkpoint {path}, not evaluated: {why}" for path, why in self.broken],
        )
        html_path, md_path = write_report(report, self.out_root / self.date)
        print(md_path.read_text())
        print(f"report: {html_path}")
        return 1 if report.worse else self.report_broken(0)

    def report_broken(self, code: int) -> int:
        """Exit code EXIT_BROKEN (with one line per broken checkpoint) when any was skipped."""
        for path, why in self.broken:
            print(f"asyncvla-eval nightly: broken checkpoint {path}: {why}", file=sys.stderr)
        return EXIT_BROKEN if self.broken else code


def find_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under root (root itself included), oldest first by config.json's mtime."""
    found = {p.parent for p in root.rglob(CHECKPOINT_MARKER)}
    return sorted(found, key=lambda d: ((d / CHECKPOINT_MARKER).stat().st_mtime, str(d)))


def cmd_nightly(argv: list[str]) -> int:
    args = nightly_parser().parse_args(argv)
    try:
        return Nightly(args, argv).run()
    except (HistoryError, CompareError) as e:
        raise UsageError(str(e)) from e


def cmd_compare(argv: list[str]) -> int:
    p = ArgumentParser(
        prog="asyncvla-eval compare",
        description="Compare two run directories task by task (Fisher exact, Holm); exit 1 if RUN_B is worse.",
    )
    p.add_argument("run_a", help="baseline run directory")
    p.add_argument("run_b", help="candidate run directory")
    p.add_argument("--alpha", type=float, default=ALPHA, help="family-wise significance level (Holm)")
    p.add_argument("--report-dir", help="also write report.html and report.md here")
    args = p.parse_args(argv)
    try:
        comparison = compare_runs(args.run_a, args.run_b, args.alpha)
    except CompareError as e:
        raise UsageError(str(e)) from e
    manifest, records = load_run(args.run_b)
    report = candidate_report(comparison, manifest, records, args.run_b)
    if args.report_dir:
        html_path, _ = write_report(report, args.report_dir)
        log.info("report: %s", html_path)
    print(to_markdown(report, Path(args.report_dir or ".").resolve()))
    return 1 if comparison.worse else 0


def candidate_report(comparison: Comparison, manifest: dict, records: list, run_dir: str) -> NightlyReport:
    known = registry()
    suites = [known[n] for n in manifest.get("suites", []) if n in known]  # meta columns only
    return NightlyReport(
        title=f"Comparison: {comparison.candidate} vs {comparison.baseline}",
        latest_label=run_label(run_dir, manifest),
        latest=per_task_table(records_frame(records, suites)),
        comparisons=[comparison],
    )
