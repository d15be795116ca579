"""Evaluate checkpoints while training (`asyncvla-train --eval-every N --eval-suite S --eval-episodes K`).

Every N steps the trainer saves its checkpoint; this copies it aside (the next save overwrites the
training directory) and runs `asyncvla-eval` on the copy in a subprocess, so training goes on
while the simulator runs. One evaluation at a time: a checkpoint saved while one runs waits its
turn. Each finished evaluation adds a row to `OUT/eval_curve.csv` (step, success rate and its 95 %
Wilson interval, episodes) and redraws `OUT/eval_curve.png`. The harness runs as a command, not
an import: the model package does not depend on the harness (docs/CONTRACTS.md).
"""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CURVE_FIELDS = ["step", "suite", "success_rate", "ci_low", "ci_high", "episodes", "run_dir"]


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
    _running: tuple[int, subprocess.Popen] | None = None
    _waiting: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.out = Path(self.out)

    def after_save(self, step: int) -> None:
        """Called once the checkpoint of `step` is on disk: snapshot it, queue its evaluation."""
        self.poll()
        snapshot = self._dir(step) / "checkpoint"
        if snapshot.exists():  # a resumed training saving the same step again
            shutil.rmtree(snapshot)
        shutil.copytree(self.out, snapshot, ignore=shutil.ignore_patterns("evals", "eval_curve.*", "*.pt"))
        self._waiting.append(step)
        self._start_next()

    def poll(self) -> None:
        """Collect a finished evaluation (if any) and start the next one."""
        if self._running is not None and self._running[1].poll() is not None:
            step, process = self._running
            self._running = None
            if process.returncode in (0, 3):  # 3: some episodes recorded as errors, the rest counted
                self._add_row(step)
            else:
                log.warning(
                    "evaluation of step %d failed (exit %d): see %s",
                    step,
                    process.returncode,
                    self._dir(step) / "eval.log",
                )
        self._start_next()

    def close(self) -> None:
        """Wait for every queued evaluation (the end of training)."""
        while self._running is not None or self._waiting:
            if self._running is not None:
                self._running[1].wait()
            self.poll()

    def command(self, step: int) -> list[str]:
        run = self._dir(step)
        argv = [sys.executable, "-m", "evalsuite.cli", self.suite, "--ckpt", str(run / "checkpoint")]
        argv += ["--episodes-per-task", str(self.episodes_per_task), "--mode", self.mode]
        argv += ["--out", str(run / "run"), "-q"]
        if self.track:
            argv += ["--track", str(self.track), "--track-step", str(step)]
        return [*argv, *self.extra_args]  # last: an option given twice takes its last value

    def _dir(self, step: int) -> Path:
        return self.out / "evals" / f"step-{step:08d}"

    def _start_next(self) -> None:
        if self._running is not None or not self._waiting:
            return
        step = self._waiting.pop(0)
        with open(self._dir(step) / "eval.log", "w") as out:
            self._running = (step, subprocess.Popen(self.command(step), stdout=out, stderr=subprocess.STDOUT))
        log.info("evaluating the checkpoint of step %d on %s", step, self.suite)

    def _add_row(self, step: int) -> None:
        run = self._dir(step) / "run"
        with open(run / "tables" / "per_suite.csv") as f:
            suites = list(csv.DictReader(f))
        curve = self.out / "eval_curve.csv"
        new = not curve.exists()
        with open(curve, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
            if new:
                writer.writeheader()
            for row in suites:
                writer.writerow({"step": step, "run_dir": str(run), **{k: row[k] for k in CURVE_FIELDS[1:6]}})
        plot_curve(curve, self.out / "eval_curve.png")


def plot_curve(curve: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(curve) as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for suite in dict.fromkeys(r["suite"] for r in rows):
        mine = [r for r in rows if r["suite"] == suite]
        steps = [int(r["step"]) for r in mine]
        rate = [100 * float(r["success_rate"]) for r in mine]
        low = [100 * float(r["ci_low"]) for r in mine]
        high = [100 * float(r["ci_high"]) for r in mine]
        ax.plot(steps, rate, marker="o", label=suite)
        ax.fill_between(steps, low, high, alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("success (%), 95 % Wilson interval")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
