"""Latency-aware evaluation (`--latency`, `--async-join`) on the real tabletop simulator: the
environment keeps stepping while the policy computes a chunk (evalsuite/run/asynchronous.py says
what it executes, and when it asks for the next chunk)."""

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
    """Chunk k for call k; the committed actions a request carries (afm-inpaint) come first, as
    AsyncVLA's inpainting returns them, and are remembered."""

    def __init__(self, sleep_s: float = 0.0):
        self.calls, self.sleep_s, self.committed, self.blind = 0, sleep_s, [], 0

    def act(self, observations, keys):
        time.sleep(self.sleep_s)
        self.calls += 1
        self.blind += not observations[0].images  # a request sent without its step's images
        chunk = numbered_chunk(self.calls - 1)
        committed = observations[0].committed
        self.committed.append(committed)
        if committed is not None:
            chunk[: len(committed)] = committed
        return chunk[None]


def decode(action) -> str:
    """'h' for holding still, 'k.i' for chunk k's action i."""
    if not np.any(action[:6]):
        return "h"
    return f"{round(action[0] / 0.1) - 1}.{round(action[1] / 0.01)}"


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


def test_the_pause_join_runs_the_rest_of_the_previous_chunk_then_holds_still(tabletop):
    """`pause`: the protocol of the first latency study (ask only after --replan-steps actions)."""
    suite, env = tabletop
    slow = dataclasses.replace(suite, latency=100.0, async_join="pause")  # 100 ms at 20 Hz: 2 steps a call
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
    slow = dataclasses.replace(
        suite, latency=200.0, async_join="pause"
    )  # 4 steps: 2 of the rest, then 2 still
    _, executed = _run(slow, env, NumberedChunks(), max_steps=16)
    first = numbered_chunk(0)
    still_closed_as_chunk0 = np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32)  # chunk 0 closes
    # steps 0-3 still (open), 4-6 chunk 0, 7-8 its rest, 9-10 still with chunk 0's gripper
    assert np.array_equal(executed[7], first[3]) and np.array_equal(executed[8], first[4])
    assert np.array_equal(executed[9], still_closed_as_chunk0)
    assert np.array_equal(executed[10], still_closed_as_chunk0)


# L = 5 actions a chunk, H = 3 executed before the next request at most; d steps a call
EXECUTED = {
    ("naive", 1): "h 0.0 0.1 0.2 0.3 1.0 1.1 1.2 1.3 2.0 2.1 2.2",
    ("skip", 1): "h 0.1 0.2 0.3 0.4 1.1 1.2 1.3 1.4 2.1 2.2 2.3",
    ("afm-inpaint", 1): "h 0.1 0.2 0.3 0.4 1.1 1.2 1.3 1.4 2.1 2.2 2.3",
    # d = L - H: the rest of the chunk just covers the call
    ("naive", 2): "h h 0.0 0.1 0.2 0.3 0.4 1.0 1.1 1.2 1.3 1.4",
    ("skip", 2): "h h 0.2 0.3 0.4 1.2 1.3 1.4 2.2 2.3 2.4 3.2",
    ("afm-inpaint", 2): "h h 0.2 0.3 0.4 1.2 1.3 1.4 2.2 2.3 2.4 3.2",
    # d > L - H: naive asks earlier (action L - d) and never pauses; skip keeps L - d actions a
    # chunk, all of them run during the next call (it is due as soon as it is joined), then a pause
    ("naive", 3): "h h h 0.0 0.1 0.2 0.3 0.4 1.0 1.1 1.2 1.3",
    ("skip", 3): "h h h 0.3 0.4 h 1.3 1.4 h 2.3 2.4 h",
    ("afm-inpaint", 3): "h h h 0.3 0.4 h 1.3 1.4 h 2.3 2.4 h",
}


@pytest.mark.parametrize("join,d", list(EXECUTED), ids=lambda x: str(x))
def test_query_ahead_executes_the_documented_actions(tabletop, join, d):
    suite, env = tabletop
    late = dataclasses.replace(suite, latency=50.0 * d, async_join=join)  # 50 ms a step at 20 Hz
    policy = NumberedChunks()
    record, executed = _run(late, env, policy, max_steps=12)
    assert " ".join(decode(a) for a in executed) == EXECUTED[(join, d)]
    assert policy.blind == 0  # every request's step was rendered, also one made right at a join
    holds = EXECUTED[(join, d)].split().count("h")
    assert record.info["pause_steps"] == holds
    stale = 0 if join != "naive" else 12 - holds  # naive runs every action d steps late
    assert record.info["stale_ratio"] == pytest.approx(stale / 12, abs=1e-4)
    if join == "afm-inpaint":  # each request carried the d actions that ran during its call
        # chunk k joins at its action d, d steps after the request that carried what ran meanwhile
        starts = [i for i, token in enumerate(EXECUTED[(join, d)].split()) if token.endswith(f".{d}")]
        assert len(starts) >= 3 and all(len(c) == d for c in policy.committed)
        for start, committed in zip(starts, policy.committed):
            assert np.array_equal(committed, np.stack(executed[start - d : start]))


def test_measured_latency_counts_each_calls_own_time(tabletop):
    suite, env = tabletop
    measured = dataclasses.replace(suite, latency="measured")
    record, _ = _run(measured, env, NumberedChunks(sleep_s=0.12), max_steps=12)
    # each call sleeps 120 ms: at least ceil(0.12 x 20) = 3 steps pass while it thinks
    assert record.info["latency_steps"] >= 3 * record.info["policy_calls"] - 3


def test_zero_latency_is_the_synchronous_run_episode_for_episode_with_every_join(tmp_path, capsys):
    common = ["tabletop", "--ckpt", "demo", "--tasks", "0,1", "--episodes-per-task", "1", "--max-steps", "24"]
    common += ["--replan-steps", "4", "--video", "none", "-q", "--workers", "0"]
    assert main([*common, "--out", str(tmp_path / "sync")]) == 0
    sync = [json.loads(x) for x in (tmp_path / "sync" / "episodes.jsonl").read_text().splitlines()]
    for join in ("naive", "skip", "afm-inpaint", "pause"):
        out = tmp_path / join
        assert main([*common, "--latency", "0", "--async-join", join, "--out", str(out)]) == 0
        zero = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
        assert [(r["success"], r["steps"], r["info"]["final_state"]) for r in sync] == [
            (r["success"], r["steps"], r["info"]["final_state"]) for r in zero
        ]
        assert all(r["info"]["latency_steps"] == r["info"]["pause_steps"] == 0 for r in zero)
        assert all(r["info"]["stale_ratio"] == 0 for r in zero)
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["protocol"]["tabletop"]["latency_ms"] == 0.0  # another run than the synchronous one
        assert manifest["protocol"]["tabletop"]["async_join"] == join
    capsys.readouterr()
    # a resume with another join, latency or horizon is refused with the fields that differ
    assert main([*common, "--latency", "0", "--async-join", "skip", "--out", str(tmp_path / "naive")]) == 2
    assert 'async_join is "naive" there, "skip" now' in capsys.readouterr().err


def test_a_join_needs_a_latency_and_inpainting_an_asyncvla_checkpoint(tmp_path, capsys):
    base = ["tabletop", "--tasks", "0", "--episodes-per-task", "1", "--out", str(tmp_path / "r")]
    assert main([*base, "--policy", "random", "--async-join", "skip"]) == 2
    assert "needs --latency" in capsys.readouterr().err
    assert main([*base, "--policy", "random", "--latency", "100", "--async-join", "afm-inpaint"]) == 2
    assert "it needs --ckpt" in capsys.readouterr().err
    assert main([*base, "--ckpt", "demo", "--latency", "measured", "--async-join", "afm-inpaint"]) == 2
    assert "--latency MS" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_latency_is_refused_for_a_suite_without_a_control_rate_and_for_garbage(tmp_path, capsys):
    assert main(["tabletop", "--policy", "random", "--latency", "soon", "--out", str(tmp_path / "a")]) == 2
    assert "--latency soon" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.libero
@pytest.mark.parametrize("join", ["naive", "skip"])
def test_query_ahead_on_the_real_libero_simulator(join):
    """The same execution on LIBERO (its 20 Hz control rate and delta end-effector actions): the
    documented action sequence, pause steps and stale ratio, a few steps of one task."""
    pytest.importorskip("libero.libero")
    suite = dataclasses.replace(get_suite("libero_spatial"), latency=100.0, async_join=join)  # d = 2
    env = import_object(suite.env_factory)(**suite.env_kwargs)
    try:
        suite = dataclasses.replace(suite, tasks=suite.tasks[:1])
        record, executed = _run(suite, env, NumberedChunks(), max_steps=10)
    finally:
        env.close()
    expected = EXECUTED[(join, 2)].split()[:10]
    assert [decode(a) for a in executed] == expected
    assert record.info["pause_steps"] == expected.count("h") == 2
    stale = 0 if join == "skip" else 10 - 2
    assert record.info["stale_ratio"] == pytest.approx(stale / 10, abs=1e-4)
