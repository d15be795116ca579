"""Latency-aware evaluation (`--latency`) on the real tabletop simulator: the environment keeps
stepping while the policy computes a chunk (evalsuite/run/episode.py says what it executes)."""

import dataclasses
import json
import time

import numpy as np
import pytest

from evalsuite.cli import main
from evalsuite.records import EpisodeSpec
from evalsuite.run.episode import run_episode
from evalsuite.suites import get_suite
from evalsuite.suites.spec import import_object

CHUNK, REPLAN = 5, 3


def numbered_chunk(k: int) -> np.ndarray:
    """Chunk k's action i is (0.1 (k + 1), 0.01 i, 0, 0, 0, 0, gripper): every executed action says
    which chunk and which slot it came from; the gripper closes on even chunks, opens on odd ones."""
    chunk = np.zeros((CHUNK, 7), np.float32)
    chunk[:, 0] = 0.1 * (k + 1)
    chunk[:, 1] = 0.01 * np.arange(CHUNK)
    chunk[:, 6] = -1.0 if k % 2 else 1.0
    return chunk


class NumberedChunks:
    def __init__(self, sleep_s: float = 0.0):
        self.calls, self.sleep_s = 0, sleep_s

    def act(self, observations, keys):
        time.sleep(self.sleep_s)
        self.calls += 1
        return numbered_chunk(self.calls - 1)[None]


@pytest.fixture(scope="module")
def tabletop():
    suite = get_suite("tabletop")
    suite = dataclasses.replace(suite, env_kwargs={**suite.env_kwargs, "image_size": 56})
    env = import_object(suite.env_factory)(**suite.env_kwargs)
    yield suite, env
    env.close()


def _run(suite, env, policy, max_steps):
    executed = []
    step = env.step

    def spy(action, render=True):
        executed.append(np.array(action, dtype=np.float32))
        return step(action, render=render)

    env.step = spy
    try:
        spec = EpisodeSpec(
            suite=suite.name, task=suite.tasks[0].name, episode_index=0, seed=0, variant="", mode="t"
        )
        result = run_episode(env, suite, spec, policy.act, REPLAN, max_steps=max_steps)
    finally:
        del env.step
    return result.record, executed


def test_a_latency_runs_the_rest_of_the_previous_chunk_then_holds_still(tabletop):
    suite, env = tabletop
    slow = dataclasses.replace(suite, latency=100.0)  # 100 ms at 20 Hz: 2 steps per call
    record, executed = _run(slow, env, NumberedChunks(), max_steps=15)

    chunk = numbered_chunk
    hold_open = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)
    expected = [hold_open, hold_open]  # call 0: nothing left to execute, the gripper stays open
    for k in range(3):
        expected += list(chunk(k)[:REPLAN])  # the chunk's own steps
        expected += list(chunk(k)[REPLAN:])  # the next call's 2 steps: the rest of this chunk
    assert len(executed) == 15 == record.steps
    assert all(np.array_equal(a, b) for a, b in zip(executed, expected[:15]))
    assert record.info["latency_steps"] == 6 and record.info["policy_calls"] == 3


def test_a_latency_longer_than_the_rest_holds_still_with_the_last_gripper_command(tabletop):
    suite, env = tabletop
    slow = dataclasses.replace(suite, latency=200.0)  # 4 steps: 2 of the rest, then 2 still
    _, executed = _run(slow, env, NumberedChunks(), max_steps=16)
    first = numbered_chunk(0)
    still_closed_as_chunk0 = np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32)  # chunk 0 closes
    # steps 0-3 still (open), 4-6 chunk 0, 7-8 its rest, 9-10 still with chunk 0's gripper
    assert np.array_equal(executed[7], first[3]) and np.array_equal(executed[8], first[4])
    assert np.array_equal(executed[9], still_closed_as_chunk0)
    assert np.array_equal(executed[10], still_closed_as_chunk0)


def test_measured_latency_counts_each_calls_own_time(tabletop):
    suite, env = tabletop
    measured = dataclasses.replace(suite, latency="measured")
    record, _ = _run(measured, env, NumberedChunks(sleep_s=0.12), max_steps=12)
    # each call sleeps 120 ms: at least ceil(0.12 x 20) = 3 steps pass while it thinks
    assert record.info["latency_steps"] >= 3 * record.info["policy_calls"] - 3


def test_zero_latency_is_the_synchronous_run_episode_for_episode(tmp_path):
    common = ["tabletop", "--ckpt", "demo", "--tasks", "0,1", "--episodes-per-task", "1", "--max-steps", "24"]
    common += ["--replan-steps", "4", "--video", "none", "-q", "--workers", "0"]
    assert main([*common, "--out", str(tmp_path / "sync")]) == 0
    assert main([*common, "--latency", "0", "--out", str(tmp_path / "zero")]) == 0
    sync, zero = (
        [json.loads(x) for x in (tmp_path / name / "episodes.jsonl").read_text().splitlines()]
        for name in ("sync", "zero")
    )
    assert [(r["success"], r["steps"], r["info"]["final_state"]) for r in sync] == [
        (r["success"], r["steps"], r["info"]["final_state"]) for r in zero
    ]
    assert all(r["info"]["latency_steps"] == 0 for r in zero)
    manifest = json.loads((tmp_path / "zero" / "run.json").read_text())
    assert manifest["protocol"]["tabletop"]["latency_ms"] == 0.0  # another run than the synchronous one


def test_latency_is_refused_for_a_suite_without_a_control_rate_and_for_garbage(tmp_path, capsys):
    assert main(["tabletop", "--policy", "random", "--latency", "soon", "--out", str(tmp_path / "a")]) == 2
    assert "--latency soon" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
