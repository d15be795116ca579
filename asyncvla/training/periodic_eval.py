"""Evaluate checkpoints while training (`asyncvla-train --eval-every N --eval-suite S --eval-episodes K`).

Every N steps the trainer saves its checkpoint; this copies it aside (the next save overwrites the
training directory) to `OUT/evals/<stage>-<mode>/step-N/checkpoint` and runs `asyncvla-eval` on the
copy in a subprocess, so training goes on while the simulator runs. The harness runs as a
command, not an import: the model package does not depend on the harness (docs/CONTRACTS.md).

- One evaluation runs at a time and at most one waits: a newer save replaces the waiting one,
  whose step is recorded as skipped. So at most two copies are on disk, and the last save (the end
  of training) is always evaluated. A copy is deleted once evaluated (`keep_checkpoints` keeps it).
- Each evaluation adds a row to `OUT/eval_curve.csv` (step, stage, mode, suite, status = done /
  skipped / failed, success rate with its 95 % Wilson interval, episodes) and redraws
  `OUT/eval_curve.png`, one line per suite, stage and mode. TensorBoard logs go to
  `TRACK/<stage>-<mode>`, so the two stages' evaluations at one step are two runs, not two values.
- The child runs in its own session and dies with its parent (Linux: PR_SET_PDEATHSIG), and `stop`
  ends it (SIGTERM, then SIGKILL to its process group): no `asyncvla-eval` or Ray outlives the
  trainer. A copy whose evaluation was lost that way is evaluated on `--resume` (`resume_lost`).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from asyncvla.checkpoint import atomic_write
from asyncvla.training.errors import TrainError

log = logging.getLogger(__name__)

CURVE_FIELDS = ["step", "stage", "mode", "suite", "status", "success_rate", "ci_low", "ci_high", "episodes"]
CURVE_FIELDS += ["run_dir"]
STOP_GRACE_S = 20.0  # SIGTERM lets asyncvla-eval stop its Ray cluster and mark its run stopped

# Runs asyncvla-eval (`console_main` of the module argv[2]) with its lifetime bound to the trainer's:
# on Linux the kernel sends it SIGTERM when the trainer dies, even by kill -9 (argv[1] is the
# trainer's pid, checked against a race).
_CHILD = """import ctypes, importlib, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(143)
program = importlib.import_module(sys.argv[2])
sys.argv = ["asyncvla-eval", *sys.argv[3:]]
sys.exit(program.console_main())
"""


@dataclass
class PeriodicEvaluator:
    out: Path  # the training's checkpoint directory
    suite: str
    every: int
    episodes_per_task: int = 1
    # the policy stage's checkpoints have no trained rater yet: they are evaluated without it (sfm)
    mode: str = "asyncvla"
    track: str | None = None  # TensorBoard directory for `asyncvla-eval --track`
    extra_args: list[str] = field(default_factory=list)  # any other asyncvla-eval option
    stage: str = "policy"
    keep_checkpoints: bool = False
    program: str = "evalsuite.cli"  # the module whose console_main() is asyncvla-eval
    _running: tuple[int, subprocess.Popen] | None = None
    _waiting: int | None = None

    def __post_init__(self):
        self.out = Path(self.out)

    @property
    def root(self) -> Path:
        return self.out / "evals" / f"{self.stage}-{self.mode}"

    def after_save(self, step: int) -> None:
        """Called once the checkpoint of `step` is on disk: snapshot it, queue its evaluation."""
        self.poll()
        if self._running is not None and self._waiting is not None:
            self._skip(self._waiting, step)
        self._snapshot(step)
        self._waiting = step
        self._start_next()

    def resume_lost(self, up_to: int) -> list[int]:
        """Queue the evaluations a stopped training lost (a snapshot without a row), oldest first;
        drop snapshots of steps past `up_to` (the save being resumed from) and half-made ones.
        Returns the steps queued or skipped."""
        if not self.root.is_dir():
            return []
        done = {int(r["step"]) for r in self.rows()}
        lost = []
        for path in sorted(self.root.glob("step-*")):
            step = int(path.name.split("-")[1])
            shutil.rmtree(path / "checkpoint.tmp", ignore_errors=True)
            if step > up_to:
                shutil.rmtree(path)
            elif step not in done and (path / "checkpoint" / "config.json").is_file():
                lost.append(step)
        for step in lost:
            log.info("evaluating the checkpoint of step %d again: its evaluation was stopped", step)
            if self._running is not None and self._waiting is not None:
                self._skip(self._waiting, step)
            self._waiting = step
            self._start_next()
        return lost

    def poll(self) -> None:
        """Collect a finished evaluation (if any) and start the next one."""
        if self._running is not None and self._running[1].poll() is not None:
            step, process = self._running
            self._running = None
            self._finish(step, process.returncode)
        self._start_next()

    def close(self) -> None:
        """Wait for the running and the waiting evaluation (the end of training)."""
        while self._running is not None or self._waiting is not None:
            if self._running is not None:
                self._running[1].wait()
            self.poll()
        failed = [r["step"] for r in self.rows() if r["status"] == "failed"]
        if failed:
            log.warning(
                "evaluations of steps %s failed: see their eval.log under %s", ", ".join(failed), self.root
            )

    def stop(self) -> None:
        """End the running evaluation now (the trainer is stopping): SIGTERM, then after a grace
        period SIGKILL to its whole process group. Its snapshot and the waiting one stay on disk,
        evaluated on --resume."""
        if self._running is None:
            return
        step, process = self._running
        self._running = None
        if process.poll() is None:
            log.info("stopping the evaluation of step %d", step)
            process.terminate()
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything it left in its session
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()

    def command(self, step: int) -> list[str]:
        run = self._dir(step)
        argv = [sys.executable, "-m", self.program, self.suite, "--ckpt", str(run / "checkpoint")]
        argv += ["--episodes-per-task", str(self.episodes_per_task), "--mode", self.mode]
        argv += ["--out", str(run / "run"), "-q"]
        if self.track:
            argv += [
                "--track",
                str(Path(self.track) / f"{self.stage}-{self.mode}"),
                "--track-step",
                str(step),
            ]
        return [*argv, *self.extra_args]  # last: an option given twice takes its last value

    def preflight(self, write_checkpoint) -> None:
        """Before step 1: `asyncvla-eval --dry-run` on the untrained checkpoint (`write_checkpoint(dir)`
        writes it) with every option an evaluation will get, so that a bad suite, --eval-args option
        or checkpoint/suite mismatch stops the training now rather than at its first evaluation."""
        where = self.out / f".preflight.tmp-{os.getpid()}"
        shutil.rmtree(where, ignore_errors=True)
        try:
            write_checkpoint(where / "checkpoint")
            argv = [a.replace(str(self._dir(0)), str(where)) for a in self.command(0)]
            argv = [a for a in argv if a != "-q"] + ["--dry-run"]
            done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        finally:
            shutil.rmtree(where, ignore_errors=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            reason = lines[-1].removeprefix("asyncvla-eval: error: ") if lines else f"exit {done.returncode}"
            raise TrainError(
                f"the evaluation while training would fail: {reason} (check --eval-suite, --eval-args and "
                f"the dataset's action size; tried `{' '.join(argv[2:])}`)"
            )

    def rows(self) -> list[dict]:
        """This stage and mode's rows of eval_curve.csv."""
        return [r for r in read_curve(self.out) if r["stage"] == self.stage and r["mode"] == self.mode]

    def _dir(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def _snapshot(self, step: int) -> None:
        """Copy the checkpoint files (not the logs, state or evaluations) beside the evaluation."""
        target = self._dir(step) / "checkpoint"
        partial = target.with_name("checkpoint.tmp")
        for path in (partial, target):  # a resumed training saving the same step again
            shutil.rmtree(path, ignore_errors=True)
        from asyncvla.training.saves import is_ours

        skip = {"evals", "eval_curve.csv", "eval_curve.png"}
        shutil.copytree(
            self.out,
            partial,
            ignore=lambda d, names: [
                n
                for n in names
                if n in skip or n.startswith((".", "loss_", "train_state_")) or not is_ours(n)
            ],
        )
        os.replace(partial, target)

    def _skip(self, step: int, newer: int) -> None:
        log.info(
            "the evaluation of step %d is skipped: step %d is newer (one evaluation runs at a time)",
            step,
            newer,
        )
        shutil.rmtree(self._dir(step) / "checkpoint", ignore_errors=True)
        self._add_rows(step, [{"suite": self.suite, "status": "skipped"}])
        if self._waiting == step:
            self._waiting = None

    def _start_next(self) -> None:
        if self._running is not None or self._waiting is None:
            return
        step, self._waiting = self._waiting, None
        with open(self._dir(step) / "eval.log", "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(os.getpid()), self.program, *self.command(step)[3:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches the trainer, which stops it
            )
        self._running = (step, process)
        log.info(
            "evaluating the checkpoint of step %d on %s (%s, %s)", step, self.suite, self.stage, self.mode
        )

    def _finish(self, step: int, returncode: int) -> None:
        run = self._dir(step) / "run"
        table = run / "tables" / "per_suite.csv"
        if returncode in (0, 3) and table.is_file():  # 3: some episodes recorded as errors, the rest counted
            with open(table) as f:
                suites = list(csv.DictReader(f))
            rows = [
                {**{k: r[k] for k in CURVE_FIELDS[5:9]}, "suite": r["suite"], "status": "done"}
                for r in suites
            ]
            self._add_rows(step, [{**r, "run_dir": str(run)} for r in rows])
        else:
            log.warning(
                "evaluation of step %d failed (exit %d): see %s",
                step,
                returncode,
                self._dir(step) / "eval.log",
            )
            self._add_rows(
                step,
                [{"suite": self.suite, "status": "failed", "run_dir": str(self._dir(step) / "eval.log")}],
            )
        if not self.keep_checkpoints:
            shutil.rmtree(self._dir(step) / "checkpoint", ignore_errors=True)

    def _add_rows(self, step: int, rows: list[dict]) -> None:
        base = {"step": step, "stage": self.stage, "mode": self.mode}
        write_curve(self.out, read_curve(self.out) + [{**base, **row} for row in rows])


def read_curve(out: Path) -> list[dict]:
    path = Path(out) / "eval_curve.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: r.get(k) or "" for k in CURVE_FIELDS} for r in csv.DictReader(f)]


def write_curve(out: Path, rows: list[dict]) -> None:
    """eval_curve.csv (replaced whole, so a kill never leaves half a row) and its plot."""
    out = Path(out)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in CURVE_FIELDS} for r in rows)

    atomic_write(out / "eval_curve.csv", write)
    if any(r["status"] == "done" for r in rows):
        atomic_write(out / "eval_curve.png", lambda tmp: plot_curve(out / "eval_curve.csv", tmp))
    else:
        (out / "eval_curve.png").unlink(missing_ok=True)


def drop_stage(out: Path, stage: str) -> None:
    """Forget a stage's evaluations (its training starts anew): their directories and rows."""
    for path in (Path(out) / "evals").glob(f"{stage}-*"):
        shutil.rmtree(path)
    rows = read_curve(out)
    if any(r["stage"] == stage for r in rows):
        write_curve(out, [r for r in rows if r["stage"] != stage])


def plot_curve(curve: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(curve) as f:
        # an evaluation whose every episode crashed is done with no rate: its row stays in the
        # curve's CSV, with nothing to plot
        rows = [r for r in csv.DictReader(f) if r["status"] == "done" and r["success_rate"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for suite, stage, mode in dict.fromkeys((r["suite"], r["stage"], r["mode"]) for r in rows):
        mine = [r for r in rows if (r["suite"], r["stage"], r["mode"]) == (suite, stage, mode)]
        steps = [int(r["step"]) for r in mine]
        rate = [100 * float(r["success_rate"]) for r in mine]
        low = [100 * float(r["ci_low"]) for r in mine]
        high = [100 * float(r["ci_high"]) for r in mine]
        ax.plot(steps, rate, marker="o", label=f"{suite} ({stage} stage, {mode})")
        ax.fill_between(steps, low, high, alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("success (%), 95 % Wilson interval")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120, format="png")
    plt.close(fig)
