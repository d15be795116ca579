"""`asyncvla-train` as a hostile new user runs it (issue 35): every bad input is refused before
anything is written, in one line on stderr with exit code 2; a training never ends with exit 0 and
a non-finite checkpoint, never replaces or resumes another training's checkpoint, and its saves
survive kill -9. Each numbered item of the issue has a test here or in test_datasets.py,
test_periodic_eval.py, test_train_distributed.py (marked with the item's number).

Where the user meets the defect at the command line, the command runs in its own process; checks
of the same code path for many values call `main` in-process (no 10 s interpreter start each).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import _deterministic

from asyncvla import demo_checkpoint
from asyncvla.checkpoint import check_weights_finite, read_training_record
from asyncvla.training import saves
from asyncvla.training.datasets import Episode, write_asyncvla_episodes
from asyncvla.training.train import main

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240  # a loaded 2-core machine; a refusal takes the interpreter's start (~10 s)


def train_cli(*args, env: dict | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asyncvla.training.train", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def ctrl_c_after_first_save(args: list, out: Path) -> subprocess.CompletedProcess:
    """asyncvla-train with `args`, Ctrl-C'd once its first save is in `out`."""
    trainer = subprocess.Popen(
        [sys.executable, "-m", "asyncvla.training.train", *map(str, args)],
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not (out / "train_state_policy.pt").exists():
        assert trainer.poll() is None and time.monotonic() < deadline, trainer.stderr.read()
        time.sleep(0.05)
    trainer.send_signal(signal.SIGINT)
    _, stderr = trainer.communicate(timeout=TIMEOUT_S)
    return subprocess.CompletedProcess(trainer.args, trainer.returncode, "", stderr)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_refused(result, *fragments: str, started: bool = False) -> str:
    """Exit 2, no traceback, one line on stderr holding every fragment: the only line, or for a
    training that `started` the last (after its progress bar and log)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert (started or len(lines) == 1) and lines[-1].startswith("asyncvla-train: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def refused_in_process(argv: list, capsys, *fragments: str, started: bool = False) -> str:
    capsys.readouterr()  # what earlier calls printed
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return assert_refused(subprocess.CompletedProcess(argv, code, "", err), *fragments, started=started)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_asyncvla_episodes(
        root / "data", [_deterministic(0), _deterministic(1)], fps=10, source="test"
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """A 4-step policy training (saved at steps 2 and 4); tests resume copies of it."""
    out = tmp_path_factory.mktemp("trained") / "ckpt"
    assert main([str(data), "--out", str(out), "--steps", "4", "--batch-size", "4", "--save-every", "2"]) == 0
    return out


@pytest.fixture
def copy_of(tmp_path):
    def copy(source: Path, name: str = "copy") -> Path:
        return Path(shutil.copytree(source, tmp_path / name))

    return copy


# 1 (data) ---------------------------------------------------------------------------------------
def test_one_nan_action_is_refused_before_training_naming_the_episode_and_field(tmp_path):
    eps = [_deterministic(0), _deterministic(1)]
    eps[1].action[3, 2] = np.nan
    bad = write_asyncvla_episodes(tmp_path / "bad", eps, fps=10, source="test")
    out = tmp_path / "ckpt"
    result = train_cli(bad, "--out", out, "--steps", "2", "--batch-size", "4")
    assert_refused(result, "episodes/000001.npz: action[3, 2] is nan", "fix or remove this episode")
    assert not out.exists()


# 1 and 11 (flags) -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--lr", "nan", "--lr nan: must be a finite number"),
        ("--vision-lr", "inf", "--vision-lr inf: must be a finite number"),
        ("--lr", "-1", "--lr -1.0: must be above 0 and at most 1"),
        ("--lr", "0", "--lr 0.0: must be above 0"),
        ("--batch-size", "0", "--batch-size 0: must be at least 1"),
        ("--save-every", "0", "--save-every 0: must be at least 1"),
        ("--save-every", "-1", "--save-every -1: must be at least 1"),
        ("--threads", "-1", "--threads -1: must be at least 1"),
        ("--threads", "0", "--threads 0: must be at least 1"),
        ("--warmup-steps", "-5", "--warmup-steps -5: must be at least 0"),
        ("--pause-threshold", "nan", "--pause-threshold nan: must be a finite number"),
        ("--pause-threshold", "-1", "--pause-threshold -1.0: must be at least 0"),
        ("--num-workers", "0", "--num-workers 0: must be at least 1"),
        ("--seed", "-3", "--seed -3: must be at least 0"),
        ("--eval-every", "0", "--eval-every 0: must be at least 1"),
        ("--steps", "ten", "argument --steps: invalid int value: 'ten'"),
        ("--device", "gpu", "--device 'gpu': use cpu, cuda or cuda:N"),
    ],
)
def test_a_bad_flag_is_one_line_before_anything_is_written(tmp_path, data, capsys, flag, value, message):
    out = tmp_path / "ckpt"
    refused_in_process([data, "--out", out, "--steps", "2", flag, value], capsys, message)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eval-suite", "libero"], "--eval-suite does nothing without --eval-every N"),
        (["--stage", "rater", "--objective", "sfm"], "--objective: the rater stage trains only the rater"),
        (["--init", "."], "--init: only the rater stage starts from another checkpoint"),
        (["--backbone-dir", "."], "--backbone-dir: the tiny model is built from scratch"),
        (["--resume", "--overwrite"], "not allowed with argument --resume"),
        (["--eval-every", "1", "--eval-args", "--out x"], "--eval-args: --out is set by asyncvla-train"),
        (["--eval-every", "1", "--eval-args", "--tasks 'a"], "No closing quotation"),
        (["--warmup-steps", "10"], "--warmup-steps 10 is more than the 2 steps of the training"),
    ],
)
def test_flags_that_would_do_nothing_or_contradict_are_refused(tmp_path, data, capsys, args, message):
    out = tmp_path / "ckpt"
    refused_in_process([data, "--out", out, "--steps", "2", *args], capsys, message)
    assert not out.exists()


def test_the_command_refuses_a_zero_batch_without_a_traceback(tmp_path, data):
    out = tmp_path / "ckpt"  # was a ZeroDivisionError traceback
    assert_refused(train_cli(data, "--out", out, "--batch-size", "0"), "--batch-size 0: must be at least 1")
    assert not out.exists()


# 1 (training) -----------------------------------------------------------------------------------
def test_a_loss_that_becomes_nan_stops_training_and_keeps_the_last_good_save(
    tmp_path, data, capsys, monkeypatch
):
    from asyncvla.training import train

    forward, calls = train._StageLoss.forward, []

    def nan_at_step_3(self, *args):
        calls.append(1)
        loss = forward(self, *args)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train._StageLoss, "forward", nan_at_step_3)
    out = tmp_path / "ckpt"
    argv = [data, "--out", out, "--steps", "6", "--batch-size", "4", "--save-every", "1"]
    refused_in_process(
        argv, capsys, "the loss is nan at step 3", f"{out} keeps the last good save (step 2)", started=True
    )
    check_weights_finite(out)
    assert read_training_record(out)["stages"]["policy"]["steps"] == 2
    assert torch.load(out / "train_state_policy.pt", weights_only=True)["step"] == 2
    rows = list(csv.DictReader(open(out / "loss_policy.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    monkeypatch.setattr(train._StageLoss, "forward", forward)  # the cause fixed, the training resumes
    assert main([str(a) for a in argv] + ["--resume"]) == 0
    assert [int(r["step"]) for r in csv.DictReader(open(out / "loss_policy.csv"))] == [1, 2, 3, 4, 5, 6]


def test_weights_that_become_non_finite_are_never_saved(tmp_path, data, capsys, monkeypatch):
    step, calls = torch.optim.AdamW.step, []

    def corrupt_at_3(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                self.param_groups[-1]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", corrupt_at_3)
    out = tmp_path / "ckpt"
    argv = [data, "--out", out, "--steps", "6", "--batch-size", "4", "--save-every", "1"]
    refused_in_process(
        argv, capsys, "became non-finite at step 3", "keeps the last good save (step 2)", started=True
    )
    check_weights_finite(out)
    assert read_training_record(out)["stages"]["policy"]["steps"] == 2


# 2 ----------------------------------------------------------------------------------------------
def test_a_fresh_training_refuses_an_out_that_holds_a_trained_checkpoint(data, copy_of):
    demo = copy_of(demo_checkpoint())
    before = snapshot(demo)
    result = train_cli(data, "--out", demo, "--steps", "2", "--batch-size", "4")
    assert_refused(result, "holds a checkpoint trained 20000 policy steps and 150 rater steps", "--overwrite")
    assert snapshot(demo) == before and not (demo / saves.LOCK).exists()


def test_overwrite_replaces_a_training_but_not_files_it_did_not_write(tmp_path, data, capsys, copy_of):
    demo = copy_of(demo_checkpoint())
    before = snapshot(demo)
    argv = [data, "--out", demo, "--steps", "2", "--batch-size", "4", "--overwrite"]
    refused_in_process(
        argv, capsys, "also holds files asyncvla-train did not write (loss.png, manifest.json)"
    )
    assert snapshot(demo) == before
    (demo / "loss.png").unlink()
    (demo / "manifest.json").unlink()
    assert main([str(a) for a in argv]) == 0
    assert not (demo / "loss_rater.csv").exists()  # the old model's logs are gone with it
    assert [int(r["step"]) for r in csv.DictReader(open(demo / "loss_policy.csv"))] == [1, 2]
    assert list(read_training_record(demo)["stages"]) == ["policy"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused_in_process(
        [data, "--out", other, "--steps", "2"], capsys, "holds no checkpoint (it holds notes.txt)"
    )
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_two_trainings_into_one_out_at_once_are_refused(tmp_path, data, capsys):
    out = tmp_path / "ckpt"
    lock = saves.take_lock(out)  # as a running asyncvla-train holds it
    try:
        refused_in_process([data, "--out", out, "--steps", "2"], capsys, "is being trained into by another")
    finally:
        lock.close()


# 3 ----------------------------------------------------------------------------------------------
def test_resume_into_another_models_checkpoint_is_refused(data, copy_of):
    demo = copy_of(demo_checkpoint())
    before = snapshot(demo)
    result = train_cli(data, "--out", demo, "--steps", "2", "--resume")
    assert_refused(result, "but no train_state_policy.pt, so it was not trained here")
    assert snapshot(demo) == before


def test_resume_with_other_settings_is_refused_naming_each_and_both_values(
    tmp_path, data, trained, copy_of, capsys
):
    out = copy_of(trained)
    before = snapshot(out)
    base = ["--out", out, "--steps", "4", "--batch-size", "4", "--save-every", "2", "--resume"]
    refused_in_process([data, *base, "--seed", "1"], capsys, "--seed 0 saved, 1 now")
    eps = [_deterministic(0), _deterministic(1)]
    eps[0].action[0, 0] += 1
    other = write_asyncvla_episodes(tmp_path / "other", eps, fps=10, source="test")
    refused_in_process([other, *base], capsys, "belongs to another training (dataset (sha256 of its files)")
    refused_in_process([data, *base, "--objective", "sfm"], capsys, "--objective 'unified' saved, 'sfm' now")
    assert snapshot(out) == before


def test_resume_with_more_steps_and_a_new_lr_applies_them_as_a_recorded_phase(data, trained, copy_of):
    out = copy_of(trained)
    argv = [str(data), "--out", str(out), "--steps", "6", "--batch-size", "4", "--lr", "5e-5", "--resume"]
    assert main(argv) == 0
    phases = read_training_record(out)["stages"]["policy"]["phases"]
    assert phases == [
        {"from_step": 0, "total_steps": 4, "lr": 1e-4, "warmup_steps": 0, "vision_lr": 2e-5},
        {"from_step": 4, "total_steps": 6, "lr": 5e-5, "warmup_steps": 0, "vision_lr": 2e-5},
    ]
    rows = list(csv.DictReader(open(out / "loss_policy.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    cosine = 0.5 * (1 + np.cos(np.pi * 5 / 6))  # the new schedule's factor after step 5
    assert float(rows[4]["lr"]) == pytest.approx(5e-5 * cosine, rel=1e-2)


def test_a_rater_state_of_an_older_policy_is_not_resumed(data, trained, copy_of, capsys):
    out = copy_of(trained)
    common = [data, "--out", out, "--batch-size", "4"]
    assert main([str(a) for a in [*common, "--stage", "rater", "--steps", "2", "--save-every", "1"]]) == 0
    assert main([str(a) for a in [*common, "--steps", "6", "--resume"]]) == 0  # the policy trains on
    argv = [*common, "--stage", "rater", "--steps", "2", "--resume"]
    refused_in_process(
        argv, capsys, "the policy's steps (the rater was trained on another policy) 4 saved, 6 now"
    )


def test_the_same_training_twice_is_refused_then_resumes_to_nothing_to_do(data, trained, copy_of, capsys):
    out = copy_of(trained)
    before = snapshot(out)
    argv = [data, "--out", out, "--steps", "4", "--batch-size", "4", "--save-every", "2"]
    refused_in_process(argv, capsys, "continue it with --resume, replace it with --overwrite")
    assert main([str(a) for a in argv] + ["--resume"]) == 0
    assert snapshot(out) == before


# 6 ----------------------------------------------------------------------------------------------
def test_a_damaged_training_state_is_named_on_resume(data, trained, copy_of):
    out = copy_of(trained)
    state = out / "train_state_policy.pt"
    state.write_bytes(state.read_bytes()[:1000])
    result = train_cli(data, "--out", out, "--steps", "4", "--batch-size", "4", "--resume")
    assert_refused(result, f"{state}: damaged or truncated training state", "are whole and load as a model")


def test_a_save_is_whole_or_absent(tmp_path, monkeypatch):
    """saves.commit killed before its mark leaves the previous save; after it, `recover` finishes it."""
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "a.txt").write_text("old a")
    (out / "config.json").write_text("old config")

    def write(staging: Path) -> None:
        (staging / "a.txt").write_text("new a")
        (staging / "config.json").write_text("new config")

    def half(staging: Path) -> None:
        (staging / "a.txt").write_text("new a")
        raise KeyboardInterrupt  # killed while writing

    with pytest.raises(KeyboardInterrupt):
        saves.commit(out, half)
    saves.recover(out)
    assert (out / "a.txt").read_text() == "old a" and not (out / saves.STAGING).exists()
    replace, moved = os.replace, []

    def killed_after_one(src, dst):
        if Path(dst).parent == out and moved:
            raise KeyboardInterrupt  # killed between the renames
        replace(src, dst)
        moved.append(dst) if Path(dst).parent == out else None

    monkeypatch.setattr(os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        saves.commit(out, write)
    monkeypatch.setattr(os, "replace", replace)
    assert (out / "a.txt").read_text() == "new a" and (out / "config.json").read_text() == "old config"
    saves.recover(out)
    assert (out / "config.json").read_text() == "new config" and not (out / saves.STAGING).exists()


def test_a_signal_during_a_save_waits_for_the_save_to_end():
    """Ctrl-C or SIGTERM in a save (saves.commit runs inside `deferred`) stops the training after it."""
    from asyncvla.training.stopping import Signals

    signals, finished = Signals().install(), []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                finished.append(True)
        assert finished and signals.exit_code() == 143
    finally:
        signals.restore()


@pytest.mark.slow  # 2 kills and 4 trainings of 12 steps: ~60 s on the shared 2-core machine
def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path):
    """The short version of scripts/kill_train.py (20 kills, results/train/kill_resume.json): kills
    when the loss log reaches a random row, i.e. around a save."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import kill_train
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    result = kill_train.run(kills=2, seed=1, steps=12, kind="row", work=tmp_path)
    assert result["kills"] == 2 and result["wrong"] == 0, result["trial_results"]
    assert result["exact"] + result["refused"] == result["trials"]
    committed = json.loads((ROOT / "results" / "train" / "kill_resume.json").read_text())
    assert set(result) <= set(committed)  # the committed figures are the script's, fields and all
    assert committed["kills"] >= 20 and committed["wrong"] == 0


# 8 ----------------------------------------------------------------------------------------------
def _toy_data(path: Path) -> Path:
    """Episodes the toy suite's checkpoint can be evaluated on (camera "cam", state of 1), moving away
    from the goal: its evaluations run their whole step budget."""
    T = 10
    action = (np.array([-0.3, 0, 0, 0, 0, 0, 1]) * np.linspace(1, 2, T)[:, None]).astype(np.float32)
    state = np.linspace(0, 1, T, dtype=np.float32)[:, None]
    images = [{"cam": np.full((T, 8, 8, 3), 60 + 80 * k, np.uint8)} for k in range(2)]
    eps = [Episode(images[k], state + k, action, "reach the goal") for k in range(2)]
    return write_asyncvla_episodes(path, eps, fps=10, source="test")


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow  # a training stopped while Ray evaluates, then resumed: ~100 s on 2 shared cores
def test_sigterm_stops_the_training_and_its_evaluation_says_how_to_resume_and_redoes_it(tmp_path, toy_suites):
    """Item 8: SIGTERM while the evaluation's Ray cluster starts: exit 143, a line saying how to
    resume, no process of the evaluation (asyncvla-eval, Ray) left; the resumed training (its
    evaluations inline, which --eval-args may change) evaluates the step whose evaluation was lost."""
    data = _toy_data(tmp_path / "data")
    out = tmp_path / "ckpt"
    args = [data, "--out", out, "--steps", "4", "--batch-size", "4", "--threads", "1", "--eval-every", "2"]
    args += ["--eval-suite", "toy", "--eval-args", "--tasks 0 --max-steps 40 --video none --workers 1"]
    env = {**os.environ, "ASYNCVLA_TOY_STEP_DELAY": "0.5"}  # an evaluation of 20 s
    trainer = subprocess.Popen(
        [sys.executable, "-m", "asyncvla.training.train", *map(str, args)],
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    log = out / "evals" / "policy-sfm" / "step-00000002" / "eval.log"
    deadline, seen = time.monotonic() + TIMEOUT_S, set()
    while not (log.exists() and len(seen) >= 4):  # the evaluation and Ray's first processes
        assert trainer.poll() is None and time.monotonic() < deadline, trainer.stderr.read()
        seen |= set(_descendants(trainer.pid))
        time.sleep(0.1)
    time.sleep(2)
    seen |= set(_descendants(trainer.pid))
    trainer.send_signal(signal.SIGTERM)
    _, stderr = trainer.communicate(timeout=TIMEOUT_S)
    assert trainer.returncode == 143, stderr
    assert "Traceback" not in stderr
    last = error_lines(stderr)[-1]
    resume = "resume with: asyncvla-train " + shlex.join([*map(str, args), "--resume"])
    assert last.startswith("asyncvla-train: interrupted; the last save is of step ") and last.endswith(
        resume
    ), last
    deadline = time.monotonic() + 15
    while any(map(_alive, seen)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in seen if _alive(p)]  # no asyncvla-eval, no Ray process left
    args[-1] = args[-1].replace("--workers 1", "--workers 0")
    result = train_cli(*args, "--resume", env={**os.environ, "ASYNCVLA_TOY_STEP_DELAY": "0"})
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out / "eval_curve.csv")))
    assert [(int(r["step"]), r["status"]) for r in rows] == [(2, "done"), (4, "done")]  # step 2 redone


@pytest.mark.slow  # a training of 2 s per step stopped, then resumed: ~30 s
def test_ctrl_c_is_one_line_with_exit_130_and_the_resume_goes_on(tmp_path, data):
    """Item 8 (was a traceback): Ctrl-C mid-training; the line's command resumes it."""
    out = tmp_path / "ckpt"
    args = [data, "--out", out, "--steps", "30", "--batch-size", "4", "--save-every", "2", "--threads", "1"]
    stopped = ctrl_c_after_first_save(args, out)
    stderr = stopped.stderr
    assert stopped.returncode == 130 and "Traceback" not in stderr, stderr
    last = error_lines(stderr)[-1]
    assert last.startswith("asyncvla-train: interrupted; the last save is of step "), last
    resume = shlex.split(last.split("resume with: ")[1])
    assert resume == ["asyncvla-train", *map(str, args), "--resume"]
    assert train_cli(*resume[1:]).returncode == 0
    assert [int(r["step"]) for r in csv.DictReader(open(out / "loss_policy.csv"))] == list(range(1, 31))


# 5 ----------------------------------------------------------------------------------------------
@pytest.mark.slow  # two trainings, two evaluations and two checks: ~60 s on 2 shared cores
def test_the_rater_stages_evaluations_keep_apart_from_the_policy_stages(tmp_path, toy_suites):
    data = _toy_data(tmp_path / "data")
    out, tb = tmp_path / "ckpt", tmp_path / "tb"
    common = [str(data), "--out", str(out), "--steps", "2", "--batch-size", "4", "--eval-every", "2"]
    common += ["--eval-suite", "toy", "--eval-args", "--tasks 0 --max-steps 5 --video none --workers 0"]
    assert main([*common, "--eval-track", str(tb)]) == 0
    assert main([*common, "--stage", "rater", "--eval-track", str(tb)]) == 0
    rows = list(csv.DictReader(open(out / "eval_curve.csv")))
    assert [(r["step"], r["stage"], r["mode"], r["status"]) for r in rows] == [
        ("2", "policy", "sfm", "done"),
        ("2", "rater", "asyncvla", "done"),
    ]
    for run in ("policy-sfm", "rater-asyncvla"):  # two runs in TensorBoard, not two values at one step
        assert (out / "evals" / run / "step-00000002" / "run" / "run.json").is_file()
        assert list((tb / run).glob("events.out.tfevents*"))


# 10 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--eval-suite", "nosuch"], "the evaluation while training would fail: unknown suite 'nosuch'"),
        (
            ["--eval-args", "--bogus 1"],
            "the evaluation while training would fail: unrecognized arguments: --bogus 1",
        ),
    ],
)
def test_a_bad_evaluation_is_found_before_step_1(tmp_path, data, capsys, args, message):
    out = tmp_path / "ckpt"
    refused_in_process(
        [data, "--out", out, "--steps", "2", "--batch-size", "4", "--eval-every", "1", *args], capsys, message
    )
    assert not out.exists()  # nothing trained, nothing left


def test_an_eval_track_that_is_a_file_is_refused(tmp_path, data, capsys):
    track = tmp_path / "tb"
    track.write_text("a file")
    argv = [data, "--out", tmp_path / "ckpt", "--steps", "2", "--eval-every", "1", "--eval-track", track]
    refused_in_process(argv, capsys, f"--eval-track {track} is a file")
