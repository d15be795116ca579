"""`evalsuite.evaluate_suite` (the command's path from Python) and `--track` (TensorBoard), read
back with TensorBoard's own reader."""

import json
from pathlib import Path

import numpy as np
import pytest

from evalsuite import evaluate_suite
from evalsuite.cli import main
from evalsuite.errors import UsageError
from evalsuite.policy import RandomPolicy
from evalsuite.store import RunDirError


class CountingPolicy(RandomPolicy):
    """A policy object as a training loop would hand it over: it counts its own calls."""

    def __init__(self):
        super().__init__(action_dim=7, chunk_length=4)
        self.calls = 0

    def act(self, observations, keys):
        self.calls += 1
        return super().act(observations, keys)


def test_a_policy_object_is_evaluated_in_this_process_and_resumes_only_under_its_name(tmp_path):
    policy = CountingPolicy()
    common = dict(tasks=[0, "green_on_white_plate"], episodes_per_task=1, max_steps=8, out=tmp_path / "run")
    named = dict(policy_name="counting", policy_version=1000)
    summary = evaluate_suite("tabletop", policy=policy, **common, **named)
    assert policy.calls == 4  # 2 episodes x 8 steps / 4 actions a chunk: the caller's own object ran
    assert len(summary.records) == 2 and set(summary.tables) >= {"per_task", "per_suite"}
    assert summary.errors == 0 and summary.exit_code == 0
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["policy"]["kind"] == "object"
    assert manifest["policy"]["factory"] == f"{__name__}:CountingPolicy"
    assert (manifest["policy"]["object_name"], manifest["policy"]["object_version"]) == ("counting", "1000")
    again = evaluate_suite("tabletop", policy=policy, **common, **named)  # resumes: nothing left to run
    assert policy.calls == 4 and [r.episode_id for r in again.records] == [
        r.episode_id for r in summary.records
    ]


def test_another_policy_object_never_gets_an_earlier_ones_results(tmp_path, monkeypatch):
    """Issue 34, item 1: a second object of the same class into the same `out` returned the first
    one's records and was never called; without `out` every object call shared one directory."""
    common = dict(tasks=[0], episodes_per_task=1, max_steps=8)
    first, second = CountingPolicy(), CountingPolicy()
    evaluate_suite(
        "tabletop", policy=first, out=tmp_path / "run", policy_name="p", policy_version=1, **common
    )
    with pytest.raises(UsageError, match="policy_name= and policy_version="):
        evaluate_suite("tabletop", policy=second, out=tmp_path / "run", **common)
    with pytest.raises(RunDirError, match="object_version"):
        evaluate_suite(
            "tabletop", policy=second, out=tmp_path / "run", policy_name="p", policy_version=2, **common
        )
    assert second.calls == 0
    # without out: a fresh directory per call, so that step 2 of a training loop is evaluated anew
    monkeypatch.chdir(tmp_path)
    a = evaluate_suite("tabletop", policy=first, policy_name="p", policy_version=1, **common)
    b = evaluate_suite("tabletop", policy=second, policy_name="p", policy_version=2, **common)
    assert a.run_dir != b.run_dir and second.calls == 2
    assert a.run_dir.parent == b.run_dir.parent == Path("runs")


def test_a_policy_object_runs_through_the_ray_runner(tmp_path):
    """Ray copies the object into its policy server: its class must import there (a class of this
    test module would not), as the API's docstring says."""
    common = dict(tasks=[1], episodes_per_task=2, max_steps=8)
    inline = evaluate_suite("tabletop", policy=RandomPolicy(chunk_length=4), out=tmp_path / "a", **common)
    ray = evaluate_suite(
        "tabletop", policy=RandomPolicy(chunk_length=4), workers=2, out=tmp_path / "b", **common
    )
    assert [(r.episode_id, r.steps, r.info["final_state"]) for r in inline.records] == [
        (r.episode_id, r.steps, r.info["final_state"]) for r in ray.records
    ]


def test_the_api_refuses_what_the_command_refuses(tmp_path):
    with pytest.raises(UsageError, match="exactly one of checkpoint= and policy="):
        evaluate_suite("tabletop", out=tmp_path / "x")
    broken = CountingPolicy()
    broken.chunk_length = 0
    with pytest.raises(UsageError, match="chunk_length"):
        evaluate_suite("tabletop", policy=broken, out=tmp_path / "y")
    with pytest.raises(UsageError, match="--max-steps"):
        evaluate_suite("tabletop", policy=CountingPolicy(), max_steps=0, out=tmp_path / "z")
    assert not any((tmp_path / name).exists() for name in "xyz")


def test_track_logs_the_tables_manifest_and_a_video_per_task_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, log = tmp_path / "run", tmp_path / "tb"
    argv = [
        "tabletop",
        "--policy",
        "scripted",
        "--tasks",
        "0,1",
        "--episodes-per-task",
        "2",
        "--max-steps",
        "40",
    ]
    assert main([*argv, "--workers", "0", "-q", "--out", str(run), "--track", str(log)]) == 0
    events = EventAccumulator(str(log), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    records = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    for task in ("red_on_blue_plate", "green_on_white_plate"):
        successes = [r["success"] for r in records if r["task"] == task]
        (logged,) = events.Scalars(f"success/tabletop/{task}")
        assert logged.value == pytest.approx(np.mean(successes)) and logged.step == 0
        low, high = (
            events.Scalars(f"ci_low/tabletop/{task}")[0].value,
            events.Scalars(f"ci_high/tabletop/{task}")[0].value,
        )
        assert 0.0 <= low <= logged.value <= high <= 1.0
        (gif,) = events.Images(f"video/tabletop/{task}")
        assert gif.encoded_image_string[:6] == b"GIF89a" and gif.width > 0
    manifest = events.Tensors("run.json/text_summary")[0].tensor_proto.string_val[0].decode()
    assert (
        json.loads(manifest.strip("`\n"))["command"] == json.loads((run / "run.json").read_text())["command"]
    )


def test_nothing_is_logged_without_track(tmp_path):
    argv = ["tabletop", "--policy", "random", "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "5"]
    assert main([*argv, "--workers", "0", "-q", "--video", "none", "--out", str(tmp_path / "run")]) == 0
    assert not list(tmp_path.rglob("events.out.tfevents*"))
