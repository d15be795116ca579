"""Hostile input, second round (issue 26): each numbered case of the issue, run as a user runs
`asyncvla-eval`, in its own process with a timeout. A refusal is one line on stderr, exit code 2,
and leaves the run directory (or checkpoint, or history file) byte-identical.
"""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_cli_hostile import TIMEOUT_S, _env, assert_refused, cli, snapshot

from asyncvla import demo_checkpoint

# the N: one episode of 5 steps, inline, no video
TINY = [
    "--episodes-per-task",
    "1",
    "--tasks",
    "0",
    "--max-steps",
    "5",
    "--workers",
    "0",
    "--video",
    "none",
    "-q",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished toy run (2 episodes, budget 12) that the cases below point at or copy."""
    out = tmp_path_factory.mktemp("run2") / "run"
    result = cli(
        "toy", "--policy", "random", "--workers", "0", "--episodes-per-task", "1", "--out", str(out), "-q"
    )
    assert result.returncode == 0, result.stderr
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("asyncvla-eval")]


def _poison(ckpt: Path, file: str, only: str | None = None) -> None:
    """Set every tensor of `file` (or only the one named `only`) to NaN, as a diverged run would."""
    tensors = load_file(str(ckpt / file))
    for key in tensors:
        if only is None or key == only:
            tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(ckpt / file), metadata={"format": "asyncvla-checkpoint", "version": "1"})


# 1 ---------------------------------------------------------------------------------------------
def test_a_checkpoint_with_a_nan_rater_is_refused_before_anything_is_written(run_dir, tmp_path):
    ckpt = Path(shutil.copytree(demo_checkpoint(), tmp_path / "ckpt"))
    _poison(ckpt, "rater.safetensors")
    before, weights = snapshot(run_dir), snapshot(ckpt)
    result = cli("toy", "--ckpt", str(ckpt), *TINY, "--out", str(run_dir))
    assert_refused(result, f"{ckpt / 'rater.safetensors'}: tensor rater.")
    assert "non-finite value(s) (NaN)" in result.stderr
    assert snapshot(run_dir) == before and snapshot(ckpt) == weights


def test_a_nan_in_the_model_weights_is_refused_where_it_is_loaded_naming_the_tensor(tmp_path):
    ckpt = Path(shutil.copytree(demo_checkpoint(), tmp_path / "ckpt"))
    key = next(k for k in load_file(str(ckpt / "model.safetensors")) if k.startswith("action_out"))
    _poison(ckpt, "model.safetensors", only=key)
    out = tmp_path / "run"
    result = cli("toy", "--ckpt", str(ckpt), *TINY, "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{ckpt / 'model.safetensors'}: tensor {key} holds" in error_lines(result)[-1]
    assert not (out / "episodes.jsonl").exists()


# 2, 3 ------------------------------------------------------------------------------------------
def test_records_without_their_run_json_are_refused(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    (run / "run.json").unlink()
    before = snapshot(run)
    result = cli("toy", "--policy", "random", *TINY, "--max-steps", "50", "--out", str(run))
    assert_refused(result, "holds episode records (episodes.jsonl) but no run.json")
    assert snapshot(run) == before


def test_out_on_a_checkpoint_directory_is_refused(tmp_path):
    ckpt = Path(shutil.copytree(demo_checkpoint(), tmp_path / "ckpt"))
    before = snapshot(ckpt)
    result = cli("toy", "--policy", "random", *TINY, "--out", str(ckpt))
    assert_refused(result, "is a non-empty directory that is not a run directory (it holds config.json")
    assert snapshot(ckpt) == before


# 4 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(seed=5), "its seed 0 is not run.json's seed 5"),
        (
            lambda m: m["policy"].update(kind="scripted"),
            "its mode 'random' is not the mode of run.json's policy",
        ),
        (lambda m: m["protocol"]["toy"].update(step_budgets=[3]), "over run.json's step budget 3"),
    ],
)
def test_report_refuses_records_that_disagree_with_run_json(run_dir, tmp_path, edit, message):
    run = copy_of(run_dir, tmp_path)
    manifest = json.loads((run / "run.json").read_text())
    edit(manifest)
    (run / "run.json").write_text(json.dumps(manifest))
    before = snapshot(run)
    result = cli("report", str(run))
    assert_refused(result, "does not belong to the run run.json describes")
    assert message in result.stderr
    assert snapshot(run) == before


# 5, 7, 9, 16: refused in the boundary, before anything is written -------------------------------
@pytest.mark.parametrize(
    "args, env, message",
    [
        (["toy", "--suites", "toy,toy", "--policy", "random"], {}, "--suites names toy more than once"),
        (["tabletop", "--suites", "libero_spatial", "--policy", "random"], {}, "not a suite of 'tabletop'"),
        (
            ["libero", "--suites", "tabletop", "--policy", "random"],
            {},
            "--suites tabletop: not a suite of 'libero'",
        ),
        (
            ["tabletop", "--policy", "random", "--set", "image_size=-1"],
            {},
            "image_size=-1: must be an integer from 16 to 512",
        ),
        (
            ["tabletop", "--policy", "random", "--set", "image_size=8"],
            {},
            "image_size=8: must be an integer from 16 to 512",
        ),
        (
            ["tabletop", "--policy", "random", "--set", "image_size=513"],
            {},
            "image_size=513: must be an integer from 16",
        ),
        (
            ["tabletop", "--policy", "random", "--set", "split=bogus"],
            {},
            'split=bogus: choose one of "eval", "train"',
        ),
        (
            ["tabletop", "--policy", "random", "--set", "settle_steps=-1"],
            {},
            "settle_steps=-1: must be at least 0",
        ),
        (
            ["toy", "--policy", "scripted", "--replan-steps", "5"],
            {},
            "--replan-steps 5: the policy (scripted) predicts chunks of 4",
        ),
        (
            ["toy", "--ckpt", "demo", "--replan-steps", "100"],
            {},
            "--replan-steps 100: the policy (demo) predicts chunks of 8",
        ),
        (
            ["toy", "--policy", "random", "--workers", "1"],
            {"RAY_ADDRESS": "bogus:xyz"},
            "RAY_ADDRESS=bogus:xyz: expected HOST:PORT",
        ),
        (
            ["toy", "--policy", "random", "--workers", "1"],
            {"RAY_ADDRESS": "127.0.0.1:1"},
            "RAY_ADDRESS=127.0.0.1:1: no Ray cluster answers",
        ),
        (
            ["toy", "--policy", "random", "--remote-layout", "{}"],
            {},
            "--remote-layout sets the wire keys of a remote policy",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(run_dir, args, env, message):
    before = snapshot(run_dir)
    start = time.perf_counter()
    result = cli(*TINY, *args, "--out", str(run_dir), env=_env(**env))  # args' --workers 1 wins
    assert_refused(result, message)
    assert time.perf_counter() - start < 60  # RAY_ADDRESS=127.0.0.1:1 hung before
    assert snapshot(run_dir) == before


# 6 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy, workers, rows",
    [("ExtraRowPolicy", "0", 2), ("MissingRowPolicy", "0", 0), ("MissingRowPolicy", "1", 0)],
)
def test_a_policy_answering_the_wrong_number_of_chunks_stops_the_run(tmp_path, policy, workers, rows):
    out = tmp_path / "run"
    # --workers 1: the user's class runs in the batching policy server
    result = cli(
        "toy", "--policy", f"hostile_policies:{policy}", *TINY, "--workers", workers, "--out", str(out)
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and f"the policy returned {rows} action chunks for 1 observation(s)" in lines[0]
    assert not (out / "episodes.jsonl").exists()  # the one episode is not recorded as anything


# 8 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers, sig, code", [("0", signal.SIGINT, 130), ("1", signal.SIGTERM, 143)])
def test_an_interrupted_run_says_so_and_resumes(tmp_path, workers, sig, code):
    out = tmp_path / "run"
    args = ["toy", "--policy", "scripted", "--set", "goal=100", "--episodes-per-task", "3", "--video", "none"]
    args += ["--workers", workers, "-q", "--out", str(out)]
    slow = subprocess.Popen(
        [sys.executable, "-m", "evalsuite.cli", *args],
        env=_env(ASYNCVLA_TOY_STEP_DELAY="0.2"),  # 12 steps: 2.4 s an episode
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    records = out / "episodes.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while not (records.exists() and records.read_bytes().count(b"\n") >= 1):
        assert slow.poll() is None and time.monotonic() < deadline, slow.stderr.read() if slow.poll() else ""
        time.sleep(0.05)
    slow.send_signal(sig)
    _, stderr = slow.communicate(timeout=TIMEOUT_S)
    assert slow.returncode == code, stderr
    assert "Traceback" not in stderr
    assert error_lines(subprocess.CompletedProcess([], code, "", stderr)) == [
        "asyncvla-eval: interrupted; run the same command to resume"
    ]
    kept = [json.loads(line) for line in records.read_text().splitlines()]  # whole lines only
    assert json.loads((out / "run.json").read_text())["stopped"] is not None
    args[args.index("--workers") + 1] = "0"  # the same run (workers are not part of it), resumed fast
    assert cli(*args).returncode == 0
    ids = [json.loads(line)["episode_id"] for line in records.read_text().splitlines()]
    assert ids[: len(kept)] == [r["episode_id"] for r in kept] and len(ids) == len(set(ids)) == 6


# 10 --------------------------------------------------------------------------------------------
def test_a_websocket_policy_aimed_at_a_plain_http_server_is_one_line(run_dir):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        before = snapshot(run_dir)
        url = f"ws://127.0.0.1:{server.server_address[1]}"
        result = cli("toy", "--policy", url, *TINY, "--out", str(run_dir))
        assert_refused(result, f"--policy {url}: the server there does not speak the websocket protocol")
        assert snapshot(run_dir) == before
    finally:
        server.shutdown()


# 11 --------------------------------------------------------------------------------------------
def test_the_episode_timeout_applies_inline(tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    result = cli(
        "toy", "--policy", "hostile_policies:SleepyPolicy", *TINY, "--episode-timeout", "1", "--retries", "0",
        "--out", str(out),
    )  # fmt: skip
    assert time.perf_counter() - start < 30  # the policy sleeps 600 s
    assert result.returncode == 3, result.stderr
    (record,) = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert record["success"] is None and record["error"] == "timed out after 1 s"


# 12 --------------------------------------------------------------------------------------------
def test_nightly_refuses_a_sqlite_file_of_another_schema_and_an_impossible_date(tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO runs (name) VALUES ('not ours')")
    before = other.read_bytes()
    nightly = ["nightly", "toy", "--ckpt-dir", str(ckpts), "--out-root", str(tmp_path / "nightly")]
    result = cli(*nightly, "--history", str(other))
    assert_refused(
        result, f"{other} is a SQLite database of another schema (tables: runs; no table checkpoints"
    )
    assert other.read_bytes() == before
    assert_refused(cli(*nightly, "--date", "2026-13-45"), "--date must look like 2026-11-27 (a calendar date")
    assert not (tmp_path / "nightly").exists()


# 15 --------------------------------------------------------------------------------------------
def test_a_protocol_mismatch_on_resume_names_the_field_and_both_values(run_dir):
    before = snapshot(run_dir)
    result = cli("toy", "--policy", "random", *TINY, "--out", str(run_dir))  # --max-steps 5, was 12
    assert_refused(result, "a different 'protocol': protocol.toy.step_budgets is [12] there, [5] now;")
    assert len(result.stderr) < 300
    assert snapshot(run_dir) == before


# 16 --------------------------------------------------------------------------------------------
def test_record_demos_takes_task_indices(tmp_path):
    out = tmp_path / "demos"
    args = ["record-demos", "tabletop", "--episodes-per-task", "1", "--workers", "0", "--image-size", "32"]
    result = cli(*args, "--tasks", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    listed = cli("list", "tabletop").stdout.splitlines()[1].split()  # "0  <name>  (50 episodes)"
    assert list(json.loads((out / "info.json").read_text())["tasks"]) == [listed[1]]
    result = cli(*args, "--tasks", "10", "--out", str(tmp_path / "other"))
    assert result.returncode == 2 and "task index 10 is out of range for suite 'tabletop'" in result.stderr


# 29.7 ------------------------------------------------------------------------------------------
def test_a_user_policy_class_is_built_once(tmp_path):
    builds = tmp_path / "builds"
    builds.mkdir()
    result = cli(
        "toy", "--policy", "hostile_policies:CountedPolicy", *TINY, "--out", str(tmp_path / "run"),
        env=_env(ASYNCVLA_TEST_BUILD_DIR=str(builds)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list(builds.iterdir())) == 1  # by the run only: the driver's checks import the class


def test_a_user_policy_class_of_the_wrong_action_size_is_refused_unbuilt(run_dir):
    before = snapshot(run_dir)
    result = cli("toy", "--policy", "hostile_policies:SixDimPolicy", *TINY, "--out", str(run_dir))
    assert_refused(
        result, "--policy hostile_policies:SixDimPolicy returns 6-D actions but the suite takes 7-D"
    )
    assert snapshot(run_dir) == before


def test_every_set_range_admits_its_suites_defaults():
    """The one table of --set values (evalsuite.validate.SET_OPTIONS) never refuses a default."""
    from evalsuite.suites import registry
    from evalsuite.validate import SET_OPTIONS

    seen = set()
    for suite in registry().values():
        for key, value in suite.env_kwargs.items():
            if key in SET_OPTIONS:
                seen.add(key)
                assert SET_OPTIONS[key].problem(value) is None, (suite.name, key, value)
    assert seen == set(SET_OPTIONS) - {"client"}
