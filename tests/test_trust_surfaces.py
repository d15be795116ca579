"""Issue 34: the silent wrong results of the newest surfaces, each run the way a user meets it.

The API's policy identity is in tests/test_api_tracking.py and the fast path's weight refresh in
tests/test_fast.py; the policy server's items in tests/test_serve*.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from evalsuite import evaluate_suite
from evalsuite.api import RunFailed
from evalsuite.cli import main
from evalsuite.errors import UsageError
from evalsuite.policy import RandomPolicy

TESTS = Path(__file__).resolve().parent
TOY = ["--tasks", "reach", "--episodes-per-task", "1", "--video", "none", "-q"]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def _hostile_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


# -- item 2: a local run never joins a cluster someone else started ---------------------------------
def test_a_local_run_starts_its_own_cluster_beside_a_foreign_one(tmp_path):
    """`ray.init()` without an address joins the latest cluster started with `ray start` on the
    machine. A foreign one-CPU cluster is running: joined, the 2-worker run would be refused for
    want of CPUs (or die with that cluster); on its own local cluster it runs."""
    port = 6390 + os.getpid() % 100
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_bin = Path(sys.executable).parent / "ray"
    foreign = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--num-cpus", "1", "--port", str(port), "--block",
         "--include-dashboard", "false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        current = Path("/tmp/ray/ray_current_cluster")
        while time.monotonic() < deadline and not (
            current.exists() and current.read_text().strip().endswith(f":{port}")
        ):
            time.sleep(0.5)
        assert current.read_text().strip().endswith(f":{port}"), "the foreign cluster did not start"
        out = tmp_path / "run"
        done = subprocess.run(
            [sys.executable, "-m", "evalsuite.cli", "tabletop", "--policy", "random", "--tasks", "0",
             "--episodes-per-task", "2", "--max-steps", "4", "--workers", "2", "--video", "none", "-q",
             "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(_records(out)) == 2
    finally:
        foreign.terminate()
        foreign.wait(timeout=60)


# -- item 3: compare diffs every setting that changes what is measured ------------------------------
def test_compare_names_a_replanning_difference(toy_suites, tmp_path, capsys):
    for name, steps in (("full", []), ("one", ["--replan-steps", "1"])):
        argv = ["toy", "--policy", "scripted", *TOY, "--workers", "0", *steps, "--out", str(tmp_path / name)]
        assert main(argv) == 0
    capsys.readouterr()
    main(["compare", str(tmp_path / "full"), str(tmp_path / "one")])
    out = capsys.readouterr().out
    assert 'replan_steps is "full chunk" there, 1 now' in out


# -- items 4 and 5: time limits hold against a policy that catches Exception, and off the main thread
def test_an_episode_timeout_is_not_swallowed_by_a_policy_that_catches_exception(toy_suites, tmp_path):
    out = tmp_path / "run"
    argv = ["toy", "--policy", "hostile_policies:StubbornPolicy", *TOY, "--workers", "0"]
    started = time.monotonic()
    rc = main([*argv, "--episode-timeout", "1", "--retries", "0", "--out", str(out)])
    assert rc == 3 and time.monotonic() - started < 15  # the policy alone would take 30 s
    (record,) = _records(out)
    assert record["success"] is None and record["error"] == "timed out after 1 s"


class SlowPolicy(RandomPolicy):
    """Half a second a call in episode 1, in Python: that episode of 12 steps takes 6 s."""

    def __init__(self):
        super().__init__(action_dim=7, chunk_length=1)

    def act(self, observations, keys):
        for _ in range(50 if "/ep001/" in keys[0] else 0):
            time.sleep(0.01)
        return super().act(observations, keys)


def test_an_episode_timeout_holds_when_evaluate_suite_runs_off_the_main_thread(toy_suites, tmp_path):
    result: dict = {}

    def evaluate():
        result["summary"] = evaluate_suite(
            "toy", policy=SlowPolicy(), tasks=["reach"], episodes_per_task=2, out=tmp_path / "run",
            extra_args=["--episode-timeout", "1", "--retries", "0"],
        )  # fmt: skip

    thread = threading.Thread(target=evaluate)
    started = time.monotonic()
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and time.monotonic() - started < 5
    first, slow = result["summary"].records
    assert first.success is not None
    assert slow.success is None and slow.error == "timed out after 1 s" and slow.wall_time_s < 2
    assert result["summary"].exit_code == 3


# -- item 6 and 12: chunks the run cannot execute as it says ----------------------------------------
@pytest.mark.parametrize(
    "policy,replan,message",
    [
        ("ShortChunkPolicy", ["--replan-steps", "6"], "chunk of 4 actions, but the run executes 6"),
        ("EmptyChunkPolicy", [], "shape (0, 7)"),
    ],
)
def test_a_chunk_the_run_cannot_execute_is_refused_in_one_line(toy_suites, tmp_path, policy, replan, message):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "evalsuite.cli", "toy", "--policy", f"hostile_policies:{policy}", *TOY,
         "--workers", "0", *replan, "--out", str(out)],
        env={**_hostile_env(), "ASYNCVLA_SUITE_MODULES": "toy_suite"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if "error" in line.lower()] == [
        done.stderr.strip().splitlines()[-1]
    ]


# -- item 7: extra_args cannot replace the policy; a run that measured nothing is not a result -----
def test_extra_args_cannot_override_a_keyword_argument(toy_suites, tmp_path):
    with pytest.raises(UsageError, match="extra_args sets --policy"):
        evaluate_suite("toy", policy=RandomPolicy(), out=tmp_path / "a", extra_args=["--policy", "random"])
    with pytest.raises(UsageError, match="extra_args sets --episodes-per-task"):
        evaluate_suite("toy", policy=RandomPolicy(), out=tmp_path / "b", extra_args=["--episodes-per-task=3"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class CrashingPolicy(RandomPolicy):
    def act(self, observations, keys):
        raise RuntimeError("the model fell over")


def test_a_run_where_every_episode_errored_raises_and_logs_no_nan(toy_suites, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with pytest.raises(RunFailed, match="every one of the 2 episodes ended in an error"):
        evaluate_suite(
            "toy", policy=CrashingPolicy(), episodes_per_task=1, out=tmp_path / "run", track=tmp_path / "tb",
            extra_args=["--retries", "0"],
        )  # fmt: skip
    assert len(_records(tmp_path / "run")) == 2  # the records are kept
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert not [t for t in tags if t.startswith("success")]
    assert events.Scalars("errors")[0].value == 2


# -- item 12: values that could only fail later are refused first -----------------------------------
@pytest.mark.parametrize("flag", ["--episode-timeout", "--step-timeout", "--remote-timeout"])
def test_a_timeout_too_large_for_a_timer_is_refused(toy_suites, tmp_path, capsys, flag):
    assert main(["toy", "--policy", "scripted", *TOY, flag, "1e300", "--out", str(tmp_path / "run")]) == 2
    assert "at most 604800" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_track_pointing_at_a_file_is_refused_before_the_run(toy_suites, tmp_path, capsys):
    (tmp_path / "tb").write_text("not a directory")
    argv = [
        "toy",
        "--policy",
        "scripted",
        *TOY,
        "--track",
        str(tmp_path / "tb"),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 2
    assert "--track" in capsys.readouterr().err and not (tmp_path / "r").exists()


# -- item 13: the scripted expert is the same expert under any replanning ----------------------------
def test_the_scripted_expert_executes_the_same_actions_under_short_replanning(tmp_path):
    """With --replan-steps 1 its holds restarted at every call: 0 of 8 on tasks 0-1. Now every
    replanning executes the same actions: the same steps and final states as whole chunks."""
    runs = {}
    for k in ("8", "1", "3"):
        argv = ["tabletop", "--policy", "scripted", "--tasks", "0,4", "--episodes-per-task", "1",
                "--replan-steps", k, "--workers", "0", "--video", "none", "-q", "--out", str(tmp_path / k)]  # fmt: skip
        assert main(argv) == 0
        runs[k] = [
            (r["task"], r["success"], r["steps"], r["info"]["final_state"]) for r in _records(tmp_path / k)
        ]
    assert all(success for _, success, _, _ in runs["8"])
    assert runs["1"] == runs["8"]
    assert all(success for _, success, _, _ in runs["3"])


def test_random_policy_chunks_are_unchanged():
    np.testing.assert_array_equal(RandomPolicy().act([None], ["k@0"]), RandomPolicy().act([None], ["k@0"]))


# -- item 16: a measured latency is measured on a warm policy, under conditions that are identity --
@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_measured_latency_run_warms_the_policy_up_before_its_first_episode(tmp_path, workers):
    """A policy's first call (a compile, a graph capture) took a second inside the first episode:
    at 20 Hz, 20 steps of standing still that a warm policy never pays."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "evalsuite.cli", "tabletop", "--policy", "hostile_policies:FirstCallSlowPolicy",
         "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "12", "--latency", "measured",
         "--workers", workers, "--video", "none", "-q", "--out", str(out)],
        env=_hostile_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = _records(out)
    assert record["info"]["latency_steps"] <= record["info"]["policy_calls"]  # at most a step a call


def test_a_measured_latency_run_does_not_resume_on_another_inference_path(tmp_path, capsys):
    argv = ["tabletop", "--ckpt", "demo", "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "4",
            "--latency", "measured", "--workers", "0", "--video", "none", "-q", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--eager-inference"]) == 2
    assert "latency_conditions.eager_inference is false there, true now" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "r" / "run.json").read_text())
    assert manifest["latency_conditions"] == {"device": "cpu", "eager_inference": False, "workers": 0}
