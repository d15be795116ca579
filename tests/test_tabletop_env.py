"""The tabletop env against the real MuJoCo simulator (mujoco is a core dependency)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.base import InvalidAction
from envs.tabletop import TASKS, make_env
from envs.tabletop.init_states import EPISODES_PER_TASK, InitStates, generate, train_layout
from envs.tabletop.tasks import MAX_STEP_POS, get_task
from evalsuite.suites import get_suite


@pytest.fixture(scope="module")
def env():
    env = make_env()
    yield env
    env.close()


def test_suite_lists_ten_tasks_with_budgets_and_fifty_states():
    suite = get_suite("tabletop")
    assert [t.name for t in suite.tasks] == [t.name for t in TASKS]
    assert len(suite.tasks) == 10 and len({t.instruction for t in suite.tasks}) == 10
    kinds = {t.meta["kind"] for t in suite.tasks}
    assert kinds == {"place", "stack", "push"}
    budgets = {t.name: t.max_steps for t in suite.tasks}
    assert budgets["red_on_blue_plate"] == 180 and budgets["push_green_left"] == 120
    assert all(t.episodes == 50 for t in suite.tasks)
    assert suite.end_on_success and suite.action_dim == 7
    states = InitStates()
    assert all(states.count(t) == EPISODES_PER_TASK for t in TASKS)


def test_shipped_init_states_regenerate_from_the_fixed_seed():
    shipped = InitStates().arrays
    fresh = generate()
    assert sorted(shipped) == sorted(fresh)
    for key in shipped:
        np.testing.assert_array_equal(shipped[key], fresh[key])


def test_train_layouts_are_not_evaluation_layouts():
    task = get_task("red_in_bowl")
    eval_blocks = InitStates().arrays["red_in_bowl/blocks"]
    train = np.stack([train_layout(task, k, 0).blocks for k in range(5)])
    assert not any(np.allclose(t, e) for t in train for e in eval_blocks)
    np.testing.assert_array_equal(train_layout(task, 3, 0).blocks, train[3])  # seeded, repeatable
    assert not np.allclose(train_layout(task, 3, 1).blocks, train[3])  # the seed matters in train


def test_episode_k_twice_is_identical_and_k_plus_one_differs(env):
    a = env.reset("stack_yellow_on_red", 4, 0)
    b = env.reset("stack_yellow_on_red", 4, 0)
    c = env.reset("stack_yellow_on_red", 5, 0)
    np.testing.assert_array_equal(a.state, b.state)
    for cam in ("agentview", "wrist"):
        np.testing.assert_array_equal(a.images[cam], b.images[cam])
    np.testing.assert_array_equal(a.privileged["obj_pos"], b.privileged["obj_pos"])
    assert not np.allclose(a.privileged["obj_pos"], c.privileged["obj_pos"])
    assert not np.array_equal(a.images["agentview"], c.images["agentview"])
    assert a.instruction == "stack the yellow block on the red block"
    assert a.state.dtype == np.float32 and a.state.shape == (8,)


def test_images_only_when_asked(env):
    obs = env.reset("red_on_blue_plate", 0, 0)
    assert {k: (v.shape, v.dtype) for k, v in obs.images.items()} == {
        "agentview": ((128, 128, 3), np.uint8),
        "wrist": ((128, 128, 3), np.uint8),
    }
    assert obs.images["agentview"].std() > 10  # a scene, not a blank buffer
    still = np.zeros(7)
    obs, *_ = env.step(still, render=False)
    assert obs.images == {} and obs.state.shape == (8,)
    obs, *_ = env.step(still, render=True)
    assert sorted(obs.images) == ["agentview", "wrist"]
    frame = env.render_frame()
    assert frame.shape == (128, 256, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[:, :128], obs.images["agentview"])


def test_image_size_and_cameras_are_configurable():
    small = make_env(image_size=64, cameras=["wrist"])
    try:
        obs = small.reset("blue_in_bowl", 0, 0)
        assert list(obs.images) == ["wrist"] and obs.images["wrist"].shape == (64, 64, 3)
        assert small.render_frame().shape == (64, 64, 3)
    finally:
        small.close()


def test_delta_actions_track_the_gripper_and_fingers(env):
    env.reset("red_in_bowl", 1, 0)
    obs0, *_ = env.step(np.zeros(7), render=False)
    move = np.array([1.0, -0.5, 0.0, 0.0, 0.0, 0.0, -1.0])
    for _ in range(6):
        obs, *_ = env.step(move, render=False)
    for _ in range(4):  # let the weld catch up with the target
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]), render=False)
    delta = obs.state[:3] - obs0.state[:3]
    np.testing.assert_allclose(delta, [6 * MAX_STEP_POS, -3 * MAX_STEP_POS, 0.0], atol=0.002)
    assert obs.state[6:].min() > 0.038  # open
    for _ in range(6):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0.5, 1.0]), render=False)
    assert obs.state[6:].max() < 0.003  # closed on nothing
    assert obs.state[5] > 0.3 + obs0.state[5]  # yawed about +z (0.5 x 0.15 rad per step)


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros(6), "shape"),
        (np.array([0, 0, np.nan, 0, 0, 0, 0]), "NaN"),
        (np.full(7, np.inf), "NaN or Inf"),
    ],
)
def test_bad_actions_raise_invalid_action(env, action, match):
    env.reset("red_in_bowl", 0, 0)
    with pytest.raises(InvalidAction, match=match):
        env.step(action)


def test_bad_configuration_and_episode_say_what_to_fix(env):
    with pytest.raises(ValueError, match="image_size"):
        make_env(image_size=0)
    with pytest.raises(ValueError, match="split"):
        make_env(split="test")
    with pytest.raises(ValueError, match="cameras"):
        make_env(cameras=["top"])
    with pytest.raises(KeyError, match="unknown tabletop task"):
        env.reset("open_the_drawer", 0, 0)
    with pytest.raises(IndexError, match="ships 50 initial states"):
        env.reset("red_in_bowl", 50, 0)


def test_the_demo_checkpoint_was_trained_on_images_of_this_scene(env):
    """The shipped demo's training record names the renderer settings of its demonstrations: a
    change to how the scene renders (shadows, lights, reflections) must come with a retrained demo
    (python scripts/reproduce_tabletop.py --stages record,demo,ship), as a changed size must."""
    from pathlib import Path

    import asyncvla
    from asyncvla.checkpoint import read_training_record

    record = read_training_record(Path(asyncvla.__file__).with_name("demo"))
    assert record["data_render"] == env.render_settings
    assert record["stages"]["policy"]["data_render"] == env.render_settings
    assert record["data_image_size"] == [record["image_size"]] * 2  # rendered at the model's size
    assert env.render_settings["shadows"] is False  # what issue 27 chose (render_options.md)
