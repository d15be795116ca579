"""Rollout videos of the tabletop suite: frames are the observation's images, rendered once a step."""

import numpy as np

from envs.tabletop import make_env
from envs.tabletop.expert import TabletopExpert
from evalsuite.records import EpisodeSpec
from evalsuite.run import episode as episode_module
from evalsuite.run.episode import run_episode
from evalsuite.suites import get_suite
from evalsuite.videos import BANNER

TASK = "push_yellow_right"


def _recorded_episode(monkeypatch, steps: int):
    """Run the expert with a video; return (the frames handed to the encoder without their caption,
    the observations the policy was given, the number of renders)."""
    frames, seen = [], []
    monkeypatch.setattr(episode_module, "encode_mp4", lambda fs, fps: frames.extend(fs) or b"mp4")
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
        result = run_episode(env, get_suite("tabletop"), spec, act, None, steps, record_video=True)
    finally:
        env.close()
    return [f[BANNER:] for f in frames], seen, renders, result.record


def test_video_frames_equal_the_observation_images_bit_for_bit(monkeypatch):
    frames, seen, renders, record = _recorded_episode(monkeypatch, steps=20)
    assert len(frames) == record.steps + 1 == 21  # the reset's frame, then one per step
    # every step renders once, the policy's observations included: no second render for the video
    assert renders == record.steps + 1
    assert frames[0].shape == (32, 64, 3) and frames[0].dtype == np.uint8
    for i, obs in enumerate(seen):  # the policy is asked at steps 0, 8, 16 (chunks of 8)
        side_by_side = np.concatenate([obs.images["agentview"], obs.images["wrist"]], axis=1)
        assert np.array_equal(frames[8 * i], side_by_side)
    assert len(seen) == 3


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
