"""The harness end to end on the real MuJoCo tabletop suite with the scripted expert."""

import json

import pandas as pd

from evalsuite.cli import main
from evalsuite.videos import read_mp4

TASKS = "red_on_blue_plate,push_green_left"


def _run(out, workers, video="none"):
    args = [
        "tabletop",
        "--policy",
        "scripted",
        "--tasks",
        TASKS,
        "--episodes-per-task",
        "2",
        "--workers",
        str(workers),
        "--video",
        video,
        "--out",
        str(out),
        "-q",
    ]
    assert main(args) == 0
    return pd.read_csv(out / "tables" / "per_task.csv")


def test_two_ray_workers_match_the_inline_run(tmp_path):
    parallel = _run(tmp_path / "ray", workers=2, video="first")
    inline = _run(tmp_path / "inline", workers=0)
    assert list(parallel["episodes"]) == [2, 2] and list(parallel["errors"]) == [0, 0]
    pd.testing.assert_frame_equal(parallel, inline)
    assert parallel["success_rate"].min() > 0  # the expert solves these tasks

    records = [json.loads(line) for line in (tmp_path / "ray" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["episode_id"] for r in records) == sorted(
        f"tabletop/{task}/-/ep{k:03d}/seed0/scripted" for task in TASKS.split(",") for k in range(2)
    )
    with_video = [r for r in records if r["video"]]
    assert {r["task"] for r in with_video} == set(TASKS.split(","))  # first success of each task
    frames = read_mp4(str(tmp_path / "ray" / with_video[0]["video"]))
    assert frames.shape[0] == with_video[0]["steps"] + 1  # the reset frame and one per step
    assert frames.shape[2] >= 2 * 128  # both cameras side by side

    manifest = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert manifest["protocol"]["tabletop"]["end_on_success"] is True
    assert manifest["versions"]["mujoco"] and manifest["git"]["commit"]
