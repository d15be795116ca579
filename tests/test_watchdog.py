"""--step-timeout (evalsuite/run/watchdog.py): a stalled simulator step ends its episode's attempt,
separately from --episode-timeout; the error record says which limit fired."""

import json

import pytest

from evalsuite.cli import main

RUN = ["--policy", "scripted", "--tasks", "reach", "--episodes-per-task", "2", "--video", "none", "-q"]


def _records(out):
    return {r["episode_index"]: r for r in map(json.loads, (out / "episodes.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_stalled_step_ends_the_attempt_and_the_record_names_the_step_limit(toy_suites, tmp_path, workers):
    out = tmp_path / "run"
    argv = [
        "toy-stall",
        *RUN,
        "--step-timeout",
        "1",
        "--retries",
        "1",
        "--workers",
        workers,
        "--out",
        str(out),
    ]
    assert main(argv) == 3  # the stalled episode is an error record, the other one ran
    records = _records(out)
    assert records[0]["success"] is True
    assert records[1]["success"] is None and records[1]["attempts"] == 2
    assert "step 1 ran past --step-timeout 1 s" in records[1]["error"]


def test_the_episode_limit_still_fires_as_itself_inside_a_step(toy_suites, tmp_path):
    out = tmp_path / "run"
    argv = ["toy-stall", *RUN, "--step-timeout", "5", "--episode-timeout", "1", "--retries", "0"]
    assert main([*argv, "--workers", "0", "--out", str(out)]) == 3
    assert _records(out)[1]["error"] == "timed out after 1 s"


def test_a_step_limit_must_be_positive(toy_suites, tmp_path, capsys):
    assert main(["toy", *RUN, "--step-timeout", "0", "--out", str(tmp_path / "run")]) == 2
    assert "--step-timeout 0.0: must be a positive number of seconds" in capsys.readouterr().err
