"""Rollout videos of the tabletop suite: frames are the observation's images, rendered once a step,
scaled up for a person with the whole instruction, the outcome, a step counter and (AsyncVLA) a
strip of the policy calls; and the run's page (evalsuite/page.py) in a real browser."""

import re
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import ImageFont
from test_regression_report import CHROMIUM, FLAGS

from envs.tabletop import make_env
from envs.tabletop.expert import TabletopExpert
from evalsuite.cli import main
from evalsuite.records import EpisodeSpec
from evalsuite.run import episode as episode_module
from evalsuite.run.episode import run_episode
from evalsuite.suites import get_suite
from evalsuite.videos import MIN_CAMERA_PX, STRIP_PX, read_mp4, video_frames, wrap

TASK = "push_yellow_right"


def _recorded_episode(monkeypatch, steps: int, chunk_info=None):
    """Run the expert with a video; return (the env's frames handed to the video maker, the
    observations the policy was given, the number of renders, the record, the policy calls and the
    frames of the video)."""
    frames, seen, calls, video = [], [], [], []

    def make_video(fs, cameras, instruction, outcome, made):
        frames.extend(fs)
        calls.extend(made)
        video.extend(video_frames(fs, cameras, instruction, outcome, made)[0])
        return video, []

    monkeypatch.setattr(episode_module, "video_frames", make_video)
    monkeypatch.setattr(episode_module, "encode_mp4", lambda fs, fps: b"mp4")
    env, expert = make_env(image_size=32), TabletopExpert()
    renders = 0
    render = env._render_cameras

    def counted():
        nonlocal renders
        renders += 1
        return render()

    env._render_cameras = counted

    def act(observations, keys):
        seen.append(observations[0])
        return expert.act(observations, keys)

    spec = EpisodeSpec("tabletop", TASK, 0, 0, "", "scripted")
    try:
        result = run_episode(
            env, get_suite("tabletop"), spec, act, None, steps, record_video=True, chunk_info=chunk_info
        )
    finally:
        env.close()
    return frames, seen, renders, result.record, calls, video


def test_video_frames_equal_the_observation_images_bit_for_bit(monkeypatch):
    frames, seen, renders, record, _, video = _recorded_episode(monkeypatch, steps=20)
    assert len(frames) == record.steps + 1 == 21  # the reset's frame, then one per step
    # every step renders once, the policy's observations included: no second render for the video
    assert renders == record.steps + 1
    assert frames[0].shape == (32, 64, 3) and frames[0].dtype == np.uint8
    for i, obs in enumerate(seen):  # the policy is asked at steps 0, 8, 16 (chunks of 8)
        side_by_side = np.concatenate([obs.images["agentview"], obs.images["wrist"]], axis=1)
        assert np.array_equal(frames[8 * i], side_by_side)
    assert len(seen) == 3
    # scaled up by nearest neighbour: every 8th pixel of the video's cameras is the frame's own
    scale = 8  # 32 px cameras -> 256 px
    top = video[0].shape[0] - 32 * scale
    for frame, shown in zip(frames, video):
        assert np.array_equal(shown[top::scale, ::scale], frame)


def test_a_56_px_run_makes_videos_a_person_can_watch(tmp_path):
    """The README's main job renders 56 px cameras: its videos are at least 256 px a camera, every
    frame the same size, and the page of the run plays them."""
    out = tmp_path / "run"
    argv = [
        "tabletop",
        "--policy",
        "scripted",
        "--tasks",
        "0",
        "--episodes-per-task",
        "1",
        "--max-steps",
        "12",
    ]
    assert main([*argv, "--workers", "0", "--video", "all", "-q", "--out", str(out)]) == 0
    (path,) = (out / "videos").glob("*.mp4")
    frames = read_mp4(str(path))
    assert len(frames) == 13 and frames.shape[2] >= 2 * MIN_CAMERA_PX  # two cameras side by side
    assert (out / "index.html").is_file() and path.name in (out / "index.html").read_text()


def test_the_banner_wraps_the_whole_instruction_and_counts_the_steps():
    instruction = (
        "put both the alphabet soup and the cream cheese box in the basket, then push the yellow block to "
        "the right edge of the table and close the top drawer of the cabinet"
    )
    frames = [np.zeros((16, 32, 3), np.uint8)] * 3
    video, lines = video_frames(frames, 2, instruction, "failure after 2 steps")
    assert len(lines) > 1 and " ".join(lines) == instruction  # nothing of it is cut
    assert all(ImageFont.load_default().getlength(line) <= video[0].shape[1] - 8 for line in lines)
    assert len({f.shape for f in video}) == 1 and video[0].shape[1] == 2 * MIN_CAMERA_PX
    assert wrap("a" * 200, 100, ImageFont.load_default())[0] != "a" * 200  # a word wider than a line


def test_an_asyncvla_video_marks_each_call_and_what_afm_regenerated(monkeypatch):
    info = {
        f"tabletop/{TASK}/-/ep000/seed0@{step}": {"regenerated": step // 2, "tokens": 8}
        for step in (0, 8, 16)
    }
    _, _, _, _, calls, video = _recorded_episode(monkeypatch, steps=20, chunk_info=info.get)
    assert [(c.step, c.regenerated, c.tokens) for c in calls] == [(0, 0, 8), (8, 4, 8), (16, 8, 8)]
    strip = video[-1][-STRIP_PX:]
    x = lambda step: round(step * (video[-1].shape[1] - 1) / 20)  # noqa: E731
    bar = lambda step: int((strip[:, x(step)] == (250, 180, 40)).all(axis=1).sum())  # noqa: E731
    assert 0 < bar(0) < bar(8) < bar(16)  # taller where AFM regenerated more of the chunk
    plain = _recorded_episode(monkeypatch, steps=4)[5]
    assert plain[0].shape[0] < video[0].shape[0]  # no strip where the policy says nothing


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_the_run_page_opens_in_headless_chromium_with_playable_videos(tmp_path):
    out = tmp_path / "run"
    argv = [
        "tabletop",
        "--policy",
        "scripted",
        "--tasks",
        "0,1",
        "--episodes-per-task",
        "1",
        "--max-steps",
        "8",
    ]
    assert main([*argv, "--workers", "0", "--video", "all", "-q", "--out", str(out)]) == 0
    assert main(["report", str(out), "--html"]) == 0
    url = (out / "index.html").resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
    sources = re.findall(r"<video[^>]*src=\"([^\"]+)\"", dom)
    assert len(sources) == 2 and "per_task" in dom
    for source in sources:
        assert len(read_mp4(str(out / source))) == 9  # the reset's frame and 8 steps


def test_render_frame_renders_when_the_step_did_not():
    env = make_env(image_size=32)
    try:
        obs = env.reset(TASK, 0, 0)
        assert np.array_equal(env.render_frame(), np.concatenate([obs.images[c] for c in env.cameras], 1))
        moved, *_ = env.step(np.array([0, 0, -1, 0, 0, 0, -1.0]), render=False)  # the hand moves down
        assert moved.images == {}
        fresh = env.render_frame()  # the current state, not the reset's images
        assert not np.array_equal(fresh, np.concatenate([obs.images[c] for c in env.cameras], 1))
        again, *_ = env.step(np.zeros(7), render=True)
        assert np.array_equal(env.render_frame(), np.concatenate([again.images[c] for c in env.cameras], 1))
    finally:
        env.close()
