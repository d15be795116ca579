"""The policy server: batches `act` requests from all env workers (a Ray actor) or all websocket
clients (`asyncvla-eval serve`).

Callers send `act(observation, key)` one episode step at a time; the server holds requests until
every caller is waiting, `max_batch` have arrived, or the oldest has waited `max_wait_ms` (so a
lone worker never waits for partners that cannot come), runs the policy once on the batch (a GPU
forward pass costs about the same for 1 or 16 observations), and answers each caller with its own
chunk. Ray's async actors (or the websocket server's event loop) give us the concurrency.

One caller's request never fails another's: a batch whose policy call raises is run again one
request at a time, so only the request that breaks the policy gets the error. Policy calls run one
at a time on a daemon thread, so that a model is never entered twice at once; a call that outlives
`act_timeout_s` fails the requests of its batch, and the next call runs on a fresh thread beside the
stuck one (a stuck call cannot be stopped from outside; `stuck_calls` reports it, and being a
daemon it never holds the process at exit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time

import numpy as np
import ray

from envs.base import Observation
from evalsuite.policy import PolicySpec, build_policy

log = logging.getLogger(__name__)


class PolicyTimeout(RuntimeError):
    """A policy call outlived its limit; the requests of its batch fail with this error."""


class _CallThread:
    """A daemon thread that runs the calls given to it in order."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.busy_since: float | None = None  # monotonic start of the call in progress
        threading.Thread(target=self._loop, daemon=True, name="policy-call").start()

    def submit(self, fn, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.busy_since = time.monotonic()  # set here, not in the thread: a call is busy from now on
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        """The thread ends after the call in progress, if any (a stuck thread ends when its call does)."""
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            try:
                if future.set_running_or_notify_cancel():
                    future.set_result(fn(*args))
            except BaseException as e:  # the caller gets whatever the policy raised
                future.set_exception(e)
            finally:
                self.busy_since = None


class BatchingPolicyServer:
    def __init__(
        self,
        spec: PolicySpec,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        clients: int = 1,
        act_timeout_s: float | None = None,
    ):
        self.policy = build_policy(spec)
        self.max_batch = max_batch
        self.full_batch = max(1, min(max_batch, clients))  # no more requests can arrive than clients
        self.max_wait = max_wait_ms / 1000
        self.act_timeout_s = act_timeout_s  # None: a policy call may take as long as it takes
        self._pending: list[tuple[Observation, str, asyncio.Future]] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task] = set()
        self._caller = _CallThread()
        self._stuck: list[_CallThread] = []  # threads whose call timed out and has not returned yet
        self._one_call = None  # asyncio.Lock, made in the event loop that serves

    def info(self) -> dict:
        return {"action_dim": self.policy.action_dim, "chunk_length": self.policy.chunk_length}

    async def act(self, observation: Observation, key: str) -> np.ndarray:
        chunk, _ = await self.act_timed(observation, key)
        return chunk

    async def act_timed(self, observation: Observation, key: str) -> tuple[np.ndarray, float]:
        """The request's chunk, and the seconds the policy call that made it took (queueing and
        batching left out)."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((observation, key, future))
        if len(self._pending) >= self.full_batch:  # on its own task: a caller that gives up cannot stop it
            self._start_flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.max_wait, self._start_flush)
        return await future

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._flushes.discard)

    def stuck_calls(self) -> list[float]:
        """Seconds each policy call that outlived its limit has been running (empty: none is stuck)."""
        self._stuck = [t for t in self._stuck if t.busy_since is not None]
        now = time.monotonic()
        return [now - since for t in self._stuck if (since := t.busy_since) is not None]

    async def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if not batch:
            return
        if self._pending and not self._flush_scheduled:  # leftovers get their own timer
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.max_wait, self._start_flush)
        try:
            await self._answer(batch)
        except PolicyTimeout as e:  # a stuck policy would be stuck again: no retry one by one
            _fail(batch, e)
        except Exception as e:
            if len(batch) == 1:
                _fail(batch, e)
                return
            log.warning("a batch of %d failed (%s); running its requests one at a time", len(batch), e)
            for request in batch:
                try:
                    await self._answer([request])
                except Exception as e:  # this request's own error
                    _fail([request], e)

    async def _answer(self, batch: list[tuple[Observation, str, asyncio.Future]]) -> None:
        observations, keys, futures = zip(*batch)
        chunks, seconds = await self._call(list(observations), list(keys))
        if chunks.shape[:1] != (len(batch),):
            raise ValueError(
                f"the policy returned chunks of shape {chunks.shape} for {len(batch)} observations"
            )
        for f, chunk in zip(futures, chunks):
            if not f.done():
                f.set_result((np.asarray(chunk), seconds))

    async def _call(self, observations: list[Observation], keys: list[str]) -> tuple[np.ndarray, float]:
        """One policy call on the call thread, at most `act_timeout_s` long; calls never overlap
        (unless one is stuck)."""
        if self._one_call is None:
            self._one_call = asyncio.Lock()
        async with self._one_call:
            start = time.monotonic()
            call = asyncio.wrap_future(self._caller.submit(self.policy.act, observations, keys))
            try:
                chunks = await asyncio.wait_for(call, self.act_timeout_s)
            except TimeoutError:
                self._stuck.append(self._caller)
                self._caller.stop()
                self._caller = _CallThread()
                log.error(
                    "the policy did not answer a batch of %d within %g s; its requests fail and the next "
                    "call runs on a fresh thread",
                    len(observations),
                    self.act_timeout_s,
                )
                raise PolicyTimeout(
                    f"the policy did not answer within {self.act_timeout_s:g} s (the server's limit)"
                ) from None
            return np.asarray(chunks), time.monotonic() - start


def _fail(batch: list[tuple[Observation, str, asyncio.Future]], error: BaseException) -> None:
    for _, _, f in batch:
        if not f.done():
            f.set_exception(error)


def start_policy_server(
    spec: PolicySpec, max_batch: int, max_wait_ms: float, num_gpus: float = 0, clients: int = 1
):
    actor = ray.remote(num_cpus=0, num_gpus=num_gpus, max_restarts=3, max_concurrency=1000)(
        BatchingPolicyServer
    )
    return actor.remote(spec, max_batch, max_wait_ms, clients)
