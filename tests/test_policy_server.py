"""The batching policy server (used as a Ray actor; its logic is plain asyncio, tested directly)."""

import asyncio

import numpy as np

from envs.base import Observation
from evalsuite.policy import PolicySpec, RandomPolicy
from evalsuite.policy_server import BatchingPolicyServer

OBS = Observation({"cam": np.zeros((4, 4, 3), np.uint8)}, np.zeros(2, np.float32), "x")


def test_requests_of_all_clients_are_answered_in_one_batch_with_their_own_chunks():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=16, max_wait_ms=60_000, clients=3)
    keys = ["a@0", "b@0", "c@8"]

    async def go():
        return await asyncio.wait_for(asyncio.gather(*(server.act(OBS, k) for k in keys)), timeout=20)

    chunks = asyncio.run(go())
    assert server.batch_sizes == [3]
    expected = RandomPolicy().act([OBS] * 3, keys)
    np.testing.assert_array_equal(np.stack(chunks), expected)


def test_a_lone_client_is_not_kept_waiting_for_partners():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=16, max_wait_ms=60_000, clients=1)
    chunk = asyncio.run(asyncio.wait_for(server.act(OBS, "a@0"), timeout=20))  # would wait 60 s if it batched
    assert chunk.shape == (8, 7) and server.batch_sizes == [1]


def test_a_partial_batch_is_flushed_after_max_wait():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=16, max_wait_ms=50, clients=4)

    async def go():
        return await asyncio.wait_for(
            asyncio.gather(server.act(OBS, "a@0"), server.act(OBS, "b@0")), timeout=20
        )

    assert len(asyncio.run(go())) == 2 and server.batch_sizes == [2]


def test_a_policy_error_reaches_every_caller_of_the_batch():
    server = BatchingPolicyServer(PolicySpec(kind="random"), max_batch=2, max_wait_ms=60_000, clients=2)
    server.policy.act = lambda obs, keys: (_ for _ in ()).throw(RuntimeError("model exploded"))

    async def go():
        return await asyncio.gather(server.act(OBS, "a@0"), server.act(OBS, "b@0"), return_exceptions=True)

    errors = asyncio.run(go())
    assert [str(e) for e in errors] == ["model exploded", "model exploded"]
