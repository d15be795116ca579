"""The policy server: one Ray actor that batches `act` requests from all env workers.

Env workers call `act(observation, key)` one episode step at a time; the server holds requests
until every env worker is waiting, `max_batch` have arrived, or the oldest has waited `max_wait_ms`
(so a lone worker never waits for partners that cannot come), runs the policy once on the
batch (a GPU forward pass costs about the same for 1 or 16 observations), and answers each caller
with its own chunk. Ray's async actors give us the concurrency; the policy runs in one thread so
that a model is never entered twice at once.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray

from envs.base import Observation
from evalsuite.policy import PolicySpec, build_policy

log = logging.getLogger(__name__)


class BatchingPolicyServer:
    def __init__(self, spec: PolicySpec, max_batch: int = 16, max_wait_ms: float = 5.0, clients: int = 1):
        self.policy = build_policy(spec)
        self.max_batch = max_batch
        self.full_batch = max(1, min(max_batch, clients))  # no more requests can arrive than clients
        self.max_wait = max_wait_ms / 1000
        self._pending: list[tuple[Observation, str, asyncio.Future]] = []
        self._flush_scheduled = False
        self._executor = ThreadPoolExecutor(max_workers=1)
        self.batch_sizes: list[int] = []

    def info(self) -> dict:
        return {"action_dim": self.policy.action_dim, "chunk_length": self.policy.chunk_length}

    async def act(self, observation: Observation, key: str) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((observation, key, future))
        if len(self._pending) >= self.full_batch:
            await self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.max_wait, lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if not batch:
            return
        if self._pending and not self._flush_scheduled:  # leftovers get their own timer
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.max_wait, lambda: asyncio.ensure_future(self._flush()))
        observations, keys, futures = zip(*batch)
        self.batch_sizes.append(len(batch))
        try:
            chunks = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.policy.act, list(observations), list(keys)
            )
        except Exception as e:  # every caller of this batch sees the policy's error
            for f in futures:
                if not f.done():
                    f.set_exception(e)
            return
        for f, chunk in zip(futures, chunks):
            if not f.done():
                f.set_result(np.asarray(chunk))

    def stats(self) -> dict:
        sizes = self.batch_sizes or [0]
        return {
            "batches": len(self.batch_sizes),
            "mean_batch": float(np.mean(sizes)),
            "max_batch": max(sizes),
        }


def start_policy_server(
    spec: PolicySpec, max_batch: int, max_wait_ms: float, num_gpus: float = 0, clients: int = 1
):
    actor = ray.remote(num_cpus=0, num_gpus=num_gpus, max_restarts=3, max_concurrency=1000)(
        BatchingPolicyServer
    )
    return actor.remote(spec, max_batch, max_wait_ms, clients)
