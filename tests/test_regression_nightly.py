"""`asyncvla-eval nightly` end to end on the toy suite: real evaluations via `evaluate` (inline runner),
a real SQLite history, real run directories and reports.

The checkpoints are a faithful fake of an AsyncVLA checkpoint directory for the toy simulator: the
toy env's 1-D state and 8x8 camera do not fit the real model's inputs, so `asyncvla.load` is
replaced (same signature, returns an object honouring the Policy contract) by a loader that reads
`gain` from the directory's config.json, and the driver's checkpoint check passes these directories
(any other directory, such as a corrupt checkpoint, gets the real check): the policy pushes x by 0.4 * gain per step, so gain 1
solves every toy episode and gain 0 none. Discovery, hashing, the history, resume and the report
are the real code paths.
"""

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import toy_suite

import asyncvla
import evalsuite.eval_args as eval_args_module
import evalsuite.regression.nightly as nightly_module
from evalsuite.cli import main
from evalsuite.manifest import checkpoint_sha256
from evalsuite.regression.history import History

BASE = ["--workers", "0", "--device", "cpu", "--episodes-per-task", "3", "-q"]


class GainPolicy(toy_suite.GainPolicy):
    interrupt_after: int | None = None  # episodes before a simulated crash (Ctrl-C / OOM kill)
    resets = 0

    def reset(self, episode_key: str) -> None:
        GainPolicy.resets += 1
        if GainPolicy.interrupt_after is not None and GainPolicy.resets > GainPolicy.interrupt_after:
            raise KeyboardInterrupt("simulated crash mid-run")


def _is_gain_checkpoint(path) -> bool:
    try:
        return "gain" in json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False


@pytest.fixture
def fake_checkpoints(toy_suites, monkeypatch, tmp_path):
    monkeypatch.setattr(
        asyncvla,
        "load",
        lambda path, **kw: GainPolicy(json.loads((Path(path) / "config.json").read_text())["gain"]),
    )
    real_check = nightly_module.check_checkpoint_for

    def check(path, suites, mode=None):  # the fake checkpoints pass; any other gets the real check
        if not _is_gain_checkpoint(path):
            return real_check(path, suites, mode)
        return SimpleNamespace(chunk_length=GainPolicy.chunk_length)  # what the run reads of the config

    # where each caller looks the name up: the nightly job's own check, and config_from_args's
    monkeypatch.setattr(nightly_module, "check_checkpoint_for", check)
    monkeypatch.setattr(eval_args_module, "check_checkpoint_for", check)
    monkeypatch.setattr(GainPolicy, "interrupt_after", None)
    monkeypatch.setattr(GainPolicy, "resets", 0)
    root = tmp_path / "ckpts"

    def add(name: str, gain: float) -> Path:
        path = root / name
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"weights of " + name.encode())
        (path / "config.json").write_text(json.dumps({"gain": gain}))
        return path

    return root, add


def nightly(tmp_path, root, date, *extra):
    return main(
        [
            "nightly",
            "toy",
            "--ckpt-dir",
            str(root),
            "--out-root",
            str(tmp_path / "out"),
            "--date",
            date,
            *BASE,
            *extra,
        ]
    )


def test_nightly_finds_new_checkpoints_once_and_flags_a_drop(fake_checkpoints, tmp_path, capsys, caplog):
    root, add = fake_checkpoints
    good = add("step1000", 1.0)
    shutil.copytree(good, root / "copy_of_step1000")  # same bytes: same checkpoint, evaluated once
    assert nightly(tmp_path, root, "2026-11-01") == 0  # the first checkpoint has no baseline
    history = tmp_path / "out" / "history.sqlite"
    with History(history) as h:
        runs = h.done_runs(["toy"], "asyncvla")
    assert len(runs) == 1 and Path(runs[0].run_dir).parent.name == "2026-11-01"

    add("step2000", 0.0)
    assert nightly(tmp_path, root, "2026-11-02") == 1  # everything fails now: worse
    out = capsys.readouterr().out
    assert "step2000" in out and "| worse" in out and "100.0 (6/6)" in out and "0.0 (0/6)" in out
    report_dir = tmp_path / "out" / "2026-11-02"
    md = (report_dir / "report.md").read_text()
    assert "### New failures (6)" in md
    assert "[video](step2000-" in md  # --video first: the first failure of each task is linked
    assert "<img class='trend'" in (report_dir / "report.html").read_text()

    caplog.set_level(logging.INFO, logger="evalsuite.regression.nightly")
    assert nightly(tmp_path, root, "2026-11-03") == 0  # nothing new: nothing evaluated twice
    assert "no new checkpoint" in caplog.text
    add("step3000", 1.0)
    assert nightly(tmp_path, root, "2026-11-04") == 0  # back to 100 %: better
    assert "| better" in capsys.readouterr().out
    with History(history) as h:
        runs = h.done_runs(["toy"], "asyncvla")
        trend = h.trend(["toy"], "asyncvla")
    # the copy (same mtime, sorted first by name) stands for both directories of the same bytes
    assert [Path(r.checkpoint_path).name for r in runs] == ["copy_of_step1000", "step2000", "step3000"]
    assert runs[0].checkpoint_sha256 == checkpoint_sha256(good)
    assert list(trend["successes"]) == [6, 0, 6] and list(trend["episodes"]) == [6, 6, 6]


def test_nightly_resumes_the_same_run_directory_after_a_crash(fake_checkpoints, tmp_path, capsys):
    root, add = fake_checkpoints
    add("step1000", 1.0)
    GainPolicy.interrupt_after = 4
    assert nightly(tmp_path, root, "2026-11-01") == 130  # as Ctrl-C stops it: one line, resumable
    assert "interrupted; run the same command to resume" in capsys.readouterr().err
    with History(tmp_path / "out" / "history.sqlite") as h:
        (run,) = h.db.execute("SELECT run_dir, status FROM runs").fetchall()
    assert run["status"] == "running"
    lines = (Path(run["run_dir"]) / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 4
    GainPolicy.interrupt_after, GainPolicy.resets = None, 0
    assert nightly(tmp_path, root, "2026-11-02") == 0  # another day: the same (dated) run directory
    assert GainPolicy.resets == 2  # only the 2 episodes not yet recorded ran
    records = [
        json.loads(line) for line in (Path(run["run_dir"]) / "episodes.jsonl").read_text().splitlines()
    ]
    assert len({r["episode_id"] for r in records}) == len(records) == 6
    assert json.loads((Path(run["run_dir"]) / "run.json").read_text())["resumed"] == 1
    assert not (tmp_path / "out" / "2026-11-02" / "step1000").exists()


def test_nightly_compares_with_a_pinned_baseline(fake_checkpoints, tmp_path, capsys):
    root, add = fake_checkpoints
    pinned = add("release", 1.0)
    add("step2000", 0.34)  # 0.4 * 0.34 * 12 steps = 1.63 >= 1.5: still solves both tasks
    assert nightly(tmp_path, root, "2026-11-01", "--baseline", str(pinned)) == 0
    md = (tmp_path / "out" / "2026-11-01" / "report.md").read_text()
    assert "step2000" in md and "vs baseline release" in md and "no significant change" in md


def test_nightly_bad_input_exits_2(fake_checkpoints, tmp_path, capsys):
    root, add = fake_checkpoints
    add("step1000", 1.0)
    assert main(["nightly", "toy", "--ckpt-dir", str(tmp_path / "missing"), *BASE]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["nightly", "no-such-suite", "--ckpt-dir", str(root), *BASE]) == 2
    assert "unknown suite 'no-such-suite'" in capsys.readouterr().err
    assert nightly(tmp_path, root, "2026-11-01", "--baseline", str(tmp_path)) == 2
    assert "not a run directory (run.json) nor a checkpoint directory" in capsys.readouterr().err
    assert nightly(tmp_path, root, "27.11.2026") == 2
    assert "--date must look like" in capsys.readouterr().err
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 200)
    assert nightly(tmp_path, root, "2026-11-01", "--history", str(tmp_path / "junk.sqlite")) == 2
    assert "not a nightly history database" in capsys.readouterr().err


def test_a_broken_checkpoint_is_reported_and_the_others_still_evaluated(fake_checkpoints, tmp_path, capsys):
    """A corrupt checkpoint (the real checkpoint check judges it) does not stop the night, never
    enters the history, and the exit code (3) says a checkpoint was skipped."""
    import os
    import time

    root, add = fake_checkpoints
    add("step1000", 1.0)
    broken = root / "step1500"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    add("step2000", 1.0)
    for i, name in enumerate(["step1000", "step1500", "step2000"]):  # training order
        os.utime(root / name / "config.json", (time.time() + i, time.time() + i))
    assert nightly(tmp_path, root, "2026-11-01") == 3
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("asyncvla-eval")]
    assert len(err) == 1 and "broken checkpoint" in err[0] and "step1500" in err[0]
    assert "Traceback" not in captured.err
    md = (tmp_path / "out" / "2026-11-01" / "report.md").read_text()
    assert "step2000" in md and "BROKEN checkpoint" in md
    with History(tmp_path / "out" / "history.sqlite") as history:
        runs = history.done_runs(["toy"], "asyncvla")
        count = history.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert [r.checkpoint_name for r in runs] == ["step1000", "step2000"] and count == 2


def test_nightly_script_passes_exit_codes_and_holds_a_lock(tmp_path):
    import fcntl
    import os
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "nightly.sh"
    env = {
        **os.environ,
        "CKPT_DIR": str(tmp_path / "missing"),
        "OUT_ROOT": str(tmp_path / "out"),
        "DATE": "2026-11-01",
    }
    proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    log = (tmp_path / "out" / "logs" / "2026-11-01.log").read_text()
    assert "--ckpt-dir" in log and "is not a directory" in log
    with open(tmp_path / "out" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a night still running
        proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "another run holds" in proc.stderr


def test_nightly_renders_tabletop_at_each_checkpoints_image_size(tmp_path):
    """The nightly job builds the same run as `asyncvla-eval tabletop --ckpt C` (it once kept the
    suite's 128 px while asyncvla-eval rendered at the checkpoint's 56 px); --set still wins."""
    from evalsuite.regression.nightly import Nightly, nightly_parser

    ckpt = tmp_path / "ckpts" / "step1"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(
        json.dumps({"format": "asyncvla-checkpoint", "model": {"image_size": 56}})
    )
    for extra, size in (([], 56), (["--set", "image_size=96"], 96)):
        argv = [
            "tabletop",
            "--ckpt-dir",
            str(tmp_path / "ckpts"),
            "--out-root",
            str(tmp_path / "out"),
            *extra,
        ]
        job = Nightly(nightly_parser().parse_args(argv), argv)
        assert (
            job.config_for(ckpt, tmp_path / "run", check_ckpt=False).suites[0].env_kwargs["image_size"]
            == size
        )
