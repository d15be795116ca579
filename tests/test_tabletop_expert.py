"""The scripted expert solves every tabletop task, deterministically, on the real simulator."""

from __future__ import annotations

import numpy as np
import pytest

from envs.base import Observation
from envs.tabletop import TASKS, make_env
from envs.tabletop.expert import TabletopExpert
from evalsuite.policy import Policy


@pytest.fixture(scope="module")
def env():
    env = make_env()
    yield env
    env.close()


def _run(env, expert, task, k):
    obs = env.reset(task.name, k, 0)
    steps, success = 0, False
    while steps < task.max_steps and not success:
        for action in expert.act([obs], [f"t/{task.name}/{k}@{steps}"])[0]:
            obs, done, success, _ = env.step(action, render=False)
            steps += 1
            if success or steps >= task.max_steps:
                break
    return success, steps, obs


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_expert_solves_an_episode_of_every_task(env, task):
    success, steps, obs = _run(env, TabletopExpert(), task, 7)
    assert success, f"{task.name} episode 7 not solved in {task.max_steps} steps"
    assert 15 < steps < 0.75 * task.max_steps  # several phases, and inside the budget
    assert obs.privileged["fingers"].min() > 0.02 or task.kind == "push"  # released, not held


def test_expert_follows_the_policy_contract_and_is_deterministic(env):
    expert = TabletopExpert(chunk_length=8)
    assert isinstance(expert, Policy)
    a = env.reset("stack_blue_on_green", 2, 0)
    b = env.reset("push_yellow_right", 2, 0)
    chunks = expert.act([a, b], ["k1@0", "k2@0"])
    assert chunks.shape == (2, 8, 7) and chunks.dtype == np.float32
    assert np.abs(chunks).max() <= 1.0
    np.testing.assert_array_equal(expert.act([b], ["other@0"])[0], chunks[1])  # batching-independent
    assert chunks[0, :, 6].max() == -1.0 and chunks[1, :, 6].min() == 1.0  # open to grasp, closed to push


def test_an_interrupted_grasp_is_retried(env):
    """Open the gripper mid-carry: the stateless expert goes back for the block and still succeeds."""
    task = next(t for t in TASKS if t.name == "red_in_bowl")
    expert = TabletopExpert()
    obs = env.reset(task.name, 3, 0)
    steps, dropped, success = 0, False, False
    while steps < task.max_steps and not success:
        for action in expert.act([obs], [f"x@{steps}"])[0]:
            if not dropped and obs.privileged["obj_pos"][2] > 0.08:  # lifted high: let go
                action = action.copy()
                action[6] = -1.0
                for _ in range(5):
                    obs, *_ = env.step(action, render=False)
                dropped = True
                break
            obs, done, success, _ = env.step(action, render=False)
            steps += 1
            if success:
                break
    assert dropped and success


def test_expert_refuses_observations_without_tabletop_ground_truth():
    obs = Observation({}, np.zeros(8, np.float32), "put the red block in the bowl")
    with pytest.raises(ValueError, match="privileged"):
        TabletopExpert().act([obs], ["k@0"])
