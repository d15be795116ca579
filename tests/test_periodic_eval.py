"""Evaluating while training (asyncvla/training/periodic_eval.py, `asyncvla-train --eval-every`): real
`asyncvla-eval` subprocesses on snapshots of the checkpoint, a curve row per evaluation; the queue's
bound, the snapshots' deletion and the child's end checked with a fake `asyncvla-eval` (a module
whose console_main sleeps, then writes the tables a run writes)."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from asyncvla import demo_checkpoint
from asyncvla.training.periodic_eval import PeriodicEvaluator

QUICK = ["--tasks", "0", "--max-steps", "6", "--video", "none", "--workers", "0"]

FAKE_EVAL = '''
"""A stand-in for asyncvla-eval: sleeps FAKE_EVAL_SLEEP_<step> seconds (or FAKE_EVAL_SLEEP), then
writes OUT/tables/per_suite.csv; --dry-run exits at once."""
import os, sys, time
from pathlib import Path

def console_main():
    argv = sys.argv[1:]
    if "--dry-run" in argv:
        return 0
    step = argv[argv.index("--ckpt") + 1].split("step-")[1].split("/")[0]
    time.sleep(float(os.environ.get(f"FAKE_EVAL_SLEEP_{int(step)}", os.environ.get("FAKE_EVAL_SLEEP", "0"))))
    out = Path(argv[argv.index("--out") + 1])
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "tables" / "per_suite.csv").write_text(
        "suite,success_rate,ci_low,ci_high,episodes\\nfake,0.5,0.1,0.9,2\\n"
    )
    return 0

if __name__ == "__main__":
    sys.exit(console_main())
'''


@pytest.fixture
def fake_eval(tmp_path, monkeypatch):
    (tmp_path / "fake_eval.py").write_text(textwrap.dedent(FAKE_EVAL))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return "fake_eval"


def _snapshots(out):
    return sorted(p.parent.name for p in (out / "evals").rglob("checkpoint"))


def test_two_saves_give_two_rows_and_a_plot_and_the_snapshot_outlives_the_next_save(tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint(), out)
    evaluator = PeriodicEvaluator(out, "tabletop", every=2, extra_args=QUICK, stage="rater")
    evaluator.after_save(2)
    (out / "model.safetensors").write_bytes(b"overwritten by the next save")  # the snapshot is what runs
    shutil.copy(demo_checkpoint() / "model.safetensors", out / "model.safetensors")
    evaluator.after_save(4)  # queued behind step 2's evaluation
    evaluator.close()
    rows = list(csv.DictReader(open(out / "eval_curve.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(r["suite"] == "tabletop" and int(r["episodes"]) == 1 for r in rows)
    assert all((r["stage"], r["mode"], r["status"]) == ("rater", "asyncvla", "done") for r in rows)
    assert all(0.0 <= float(r["ci_low"]) <= float(r["success_rate"]) <= float(r["ci_high"]) for r in rows)
    assert (out / "eval_curve.png").stat().st_size > 1000
    assert (out / "evals" / "rater-asyncvla" / "step-00000002" / "run" / "run.json").exists()
    assert _snapshots(out) == []  # each copy deleted once evaluated


def test_the_queue_keeps_one_waiting_evaluation_records_the_skipped_and_deletes_copies(tmp_path, fake_eval):
    """Issue 35 item 7: saves every step while the first evaluation runs: at most two copies exist
    (the running and the newest waiting), the steps in between are recorded as skipped, the last is
    evaluated, and no copy is left."""
    out = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint(), out)
    os.environ["FAKE_EVAL_SLEEP_1"] = "2"
    try:
        evaluator = PeriodicEvaluator(out, "fake", every=1, stage="policy", mode="sfm", program=fake_eval)
        most = 0
        for step in range(1, 7):
            evaluator.after_save(step)
            most = max(most, len(_snapshots(out)))
        evaluator.close()
    finally:
        del os.environ["FAKE_EVAL_SLEEP_1"]
    rows = list(csv.DictReader(open(out / "eval_curve.csv")))
    assert [(int(r["step"]), r["status"]) for r in rows] == [
        (2, "skipped"), (3, "skipped"), (4, "skipped"), (5, "skipped"), (1, "done"), (6, "done"),
    ]  # fmt: skip
    assert most == 2 and _snapshots(out) == []
    assert all((r["stage"], r["mode"]) == ("policy", "sfm") for r in rows)
    assert rows[-1]["suite"] == "fake" and float(rows[-1]["success_rate"]) == 0.5


def test_kept_copies_stay_when_asked(tmp_path, fake_eval):
    out = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint(), out)
    evaluator = PeriodicEvaluator(out, "fake", every=1, program=fake_eval, keep_checkpoints=True)
    evaluator.after_save(1)
    evaluator.close()
    assert _snapshots(out) == ["step-00000001"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stop_ends_the_evaluation_and_a_resume_evaluates_it_again(tmp_path, fake_eval, monkeypatch):
    """Issue 35 item 8: stopping the trainer stops its evaluation child; the copy stays, and the
    next training (--resume) evaluates it."""
    out = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint(), out)
    monkeypatch.setenv("FAKE_EVAL_SLEEP", "600")
    evaluator = PeriodicEvaluator(out, "fake", every=2, program=fake_eval)
    evaluator.after_save(2)
    pid = evaluator._running[1].pid
    start = time.monotonic()
    evaluator.stop()
    assert time.monotonic() - start < 10 and not _alive(pid)
    assert not (out / "eval_curve.csv").exists() and _snapshots(out) == ["step-00000002"]
    monkeypatch.setenv("FAKE_EVAL_SLEEP", "0")
    again = PeriodicEvaluator(out, "fake", every=2, program=fake_eval)
    assert again.resume_lost(up_to=2) == [2]
    again.close()
    rows = list(csv.DictReader(open(out / "eval_curve.csv")))
    assert [(int(r["step"]), r["status"]) for r in rows] == [(2, "done")] and _snapshots(out) == []


def test_the_evaluation_dies_with_a_trainer_killed_by_sigkill(tmp_path, fake_eval, monkeypatch):
    out = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint(), out)
    monkeypatch.setenv("FAKE_EVAL_SLEEP", "600")
    trainer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from asyncvla.training.periodic_eval import PeriodicEvaluator\n"
            f"e = PeriodicEvaluator({str(out)!r}, 'fake', every=2, program={fake_eval!r})\n"
            "e.after_save(2)\n"
            "print(e._running[1].pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(trainer.stdout.readline())
    assert _alive(child)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


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
    assert [(int(r["step"]), r["stage"], r["mode"], r["status"]) for r in rows] == [
        (2, "policy", "sfm", "done"),
        (3, "policy", "sfm", "done"),
    ]
    assert (out / "eval_curve.png").exists() and list(
        (tmp_path / "tb" / "policy-sfm").glob("events.out.tfevents*")
    )


def test_an_evaluation_whose_every_episode_crashed_keeps_its_row_and_the_plot_is_drawn(tmp_path):
    """Was a crash of the training itself: such an evaluation is done with no success rate (every
    episode an error), and plotting its empty rate raised ValueError in rank 0, after the save."""
    from asyncvla.training.periodic_eval import plot_curve

    curve = tmp_path / "eval_curve.csv"
    curve.write_text(
        "step,stage,mode,suite,status,success_rate,ci_low,ci_high,episodes,run_dir\n"
        "2,policy,sfm,toy,done,0.5,0.1,0.9,2,run2\n"
        "4,policy,sfm,toy,done,,0.0,1.0,0,run4\n"
    )
    plot_curve(curve, tmp_path / "eval_curve.png")
    assert (tmp_path / "eval_curve.png").stat().st_size > 1000
