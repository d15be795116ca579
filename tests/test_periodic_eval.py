"""Evaluating while training (asyncvla/training/periodic_eval.py, `asyncvla-train --eval-every`): real
`asyncvla-eval` subprocesses on snapshots of the checkpoint, a curve row per evaluation."""

import csv
import shutil

from asyncvla import demo_checkpoint
from asyncvla.training.periodic_eval import PeriodicEvaluator

QUICK = ["--tasks", "0", "--max-steps", "6", "--video", "none", "--workers", "0"]


def test_two_saves_give_two_rows_and_a_plot_and_the_snapshot_outlives_the_next_save(tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint(), out)
    evaluator = PeriodicEvaluator(out, "tabletop", every=2, extra_args=QUICK)
    evaluator.after_save(2)
    (out / "model.safetensors").write_bytes(b"overwritten by the next save")  # the snapshot is what runs
    shutil.copy(demo_checkpoint() / "model.safetensors", out / "model.safetensors")
    evaluator.after_save(4)  # queued behind step 2's evaluation
    evaluator.close()
    rows = list(csv.DictReader(open(out / "eval_curve.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(r["suite"] == "tabletop" and int(r["episodes"]) == 1 for r in rows)
    assert all(0.0 <= float(r["ci_low"]) <= float(r["success_rate"]) <= float(r["ci_high"]) for r in rows)
    assert (out / "eval_curve.png").stat().st_size > 1000
    assert (out / "evals" / "step-00000002" / "run" / "run.json").exists()


def test_a_short_training_with_two_evaluations_writes_both_rows(tmp_path):
    """asyncvla-train --eval-every on the tiny model: evaluations at step 2 and at the end (3)."""
    from test_train import _deterministic

    from asyncvla.training.datasets import write_asyncvla_episodes
    from asyncvla.training.train import main

    data = write_asyncvla_episodes(
        tmp_path / "data", [_deterministic(0), _deterministic(1)], fps=10, source="test"
    )
    out = tmp_path / "ckpt"
    argv = [str(data), "--out", str(out), "--steps", "3", "--batch-size", "4", "--save-every", "100"]
    argv += ["--eval-every", "2", "--eval-args", " ".join(QUICK), "--eval-track", str(tmp_path / "tb")]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "eval_curve.csv")))
    assert [int(r["step"]) for r in rows] == [2, 3]
    assert (out / "eval_curve.png").exists() and list((tmp_path / "tb").glob("events.out.tfevents*"))
