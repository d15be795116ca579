"""The batching policy server (used as a Ray actor; its logic is plain asyncio, tested directly)."""

import asyncio
import re
import threading
import time

import numpy as np

from envs.base import Observation
from evalsuite.policy import PolicySpec, RandomPolicy
from evalsuite.serving.policy_server import BatchingPolicyServer, PolicyStuck, PolicyTimeout

OBS = Observation({"cam": np.zeros((4, 4, 3), np.uint8)}, np.zeros(2, np.float32), "x")


def _batches_of(server: BatchingPolicyServer) -> list[int]:
    """The size of every batch the server hands its policy, in order."""
    sizes, act = [], server.policy.act

    def recording(observations, keys):
        sizes.append(len(observations))
        return act(observations, keys)

    server.policy.act = recording
    return sizes


def test_requests_of_all_clients_are_answered_in_one_batch_with_their_own_chunks():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=16, max_wait_ms=60_000, clients=3)
    batches = _batches_of(server)
    keys = ["a@0", "b@0", "c@8"]

    async def go():
        return await asyncio.wait_for(asyncio.gather(*(server.act(OBS, k) for k in keys)), timeout=20)

    chunks = asyncio.run(go())
    assert batches == [3]
    expected = RandomPolicy().act([OBS] * 3, keys)
    np.testing.assert_array_equal(np.stack(chunks), expected)


def test_a_lone_client_is_not_kept_waiting_for_partners():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=16, max_wait_ms=60_000, clients=1)
    batches = _batches_of(server)
    chunk = asyncio.run(asyncio.wait_for(server.act(OBS, "a@0"), timeout=20))  # would wait 60 s if it batched
    assert chunk.shape == (8, 7) and batches == [1]


def test_a_partial_batch_is_flushed_after_max_wait():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=16, max_wait_ms=50, clients=4)
    batches = _batches_of(server)

    async def go():
        return await asyncio.wait_for(
            asyncio.gather(server.act(OBS, "a@0"), server.act(OBS, "b@0")), timeout=20
        )

    assert len(asyncio.run(go())) == 2 and batches == [2]


def test_a_policy_error_reaches_every_caller_of_the_batch():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=2, max_wait_ms=60_000, clients=2)
    server.policy.act = lambda obs, keys: (_ for _ in ()).throw(RuntimeError("model exploded"))

    async def go():
        return await asyncio.gather(server.act(OBS, "a@0"), server.act(OBS, "b@0"), return_exceptions=True)

    errors = asyncio.run(go())
    assert [str(e) for e in errors] == ["model exploded", "model exploded"]


def test_a_batch_that_fails_is_run_again_one_request_at_a_time():
    """The policy breaks on one request only: its batch-mates get their own chunks, it gets the error."""
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=3, max_wait_ms=60_000, clients=3)
    random_act = server.policy.act
    calls = []

    def act(observations, keys):
        calls.append(list(keys))
        if "bad@0" in keys:
            raise ValueError("cannot read this observation")
        return random_act(observations, keys)

    server.policy.act = act

    async def go():
        requests = (server.act(OBS, k) for k in ["a@0", "bad@0", "c@8"])
        return await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), timeout=20)

    a, bad, c = asyncio.run(go())
    assert calls == [["a@0", "bad@0", "c@8"], ["a@0"], ["bad@0"], ["c@8"]]
    assert isinstance(bad, ValueError) and str(bad) == "cannot read this observation"
    np.testing.assert_array_equal(np.stack([a, c]), RandomPolicy().act([OBS] * 2, ["a@0", "c@8"]))


def test_a_policy_call_past_its_limit_fails_requests_until_it_returns_then_the_next_is_answered():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_wait_ms=1, act_timeout_s=0.5)
    random_act = server.policy.act
    release = threading.Event()

    def act(observations, keys):
        if keys == ["hang@0"]:
            release.wait()
        return random_act(observations, keys)

    server.policy.act = act

    async def go():
        hung = await asyncio.gather(server.act(OBS, "hang@0"), return_exceptions=True)
        stuck = server.stuck_s()
        refused = await asyncio.gather(server.act(OBS, "next@0"), return_exceptions=True)
        release.set()  # the stuck call returns: nothing is stuck any more
        deadline = time.monotonic() + 20
        while server.stuck_s() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        chunk, seconds = await asyncio.wait_for(server.act_timed(OBS, "next@0"), timeout=20)
        return hung[0], stuck, refused[0], chunk, seconds

    hung, stuck, refused, chunk, seconds = asyncio.run(go())
    assert isinstance(hung, PolicyTimeout) and str(hung) == (
        "the policy did not answer within 0.5 s (the server's limit)"
    )
    assert stuck is not None and stuck >= 0.5
    assert isinstance(refused, PolicyStuck) and re.fullmatch(
        r"the policy is still in a call that outlived the server's 0\.5 s limit \(running for 0\.\d s\); "
        "requests fail until it returns, so that the model is never entered twice at once",
        str(refused),
    ), refused
    assert server.stuck_s() is None
    np.testing.assert_array_equal(chunk, RandomPolicy().act([OBS], ["next@0"])[0])
    assert 0 <= seconds < 0.5


def test_a_request_cancelled_while_queued_leaves_the_queue_and_is_never_computed():
    """The Ray actor's and the websocket server's callers alike: a caller that gives up (a client
    gone, a deadline past) while a call is in progress takes its request out of the queue."""
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_wait_ms=1)
    random_act = server.policy.act
    inside, release, calls = threading.Event(), threading.Event(), []

    def act(observations, keys):
        calls.append(list(keys))
        if keys == ["slow@0"]:
            inside.set()
            release.wait(20)
        return random_act(observations, keys)

    server.policy.act = act

    async def go():
        slow = asyncio.ensure_future(server.act(OBS, "slow@0"))
        while not inside.is_set():
            await asyncio.sleep(0.01)
        leaving = asyncio.ensure_future(server.act(OBS, "leaving@0"))
        await asyncio.sleep(0.05)  # its flush is due, and waits for the call in progress
        leaving.cancel()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(slow, timeout=20)
        return await asyncio.wait_for(server.act(OBS, "after@0"), timeout=20)

    asyncio.run(go())
    assert calls == [["slow@0"], ["after@0"]]
