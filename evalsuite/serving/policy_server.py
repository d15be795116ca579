"""The policy server: batches `act` requests from all env workers (a Ray actor) or all websocket
clients (`asyncvla-eval serve`).

Callers send `act(observation, key)` one episode step at a time; the server holds requests until
every caller is waiting, `max_batch` have arrived, or the oldest has waited `max_wait_ms` (so a
lone worker never waits for partners that cannot come), runs the policy once on the batch (a GPU
forward pass costs about the same for 1 or 16 observations), and answers each caller with its own
chunk. Ray's async actors (or the websocket server's event loop) give us the concurrency.

One caller's request never fails another's: a batch whose policy call raises is run again one
request at a time, so only the request that breaks the policy gets the error. Policy calls run one
at a time, in arrival order, on one daemon thread, so that a model is never entered twice at once
(on CUDA two calls would share one captured graph's buffers). A request stays in the queue until
the policy is free to take it, so a caller that gives up first (its client disconnected, its
deadline passed) is dropped from the queue and costs nothing; one already inside a call is computed
and its answer thrown away. A call that outlives `act_timeout_s` fails the requests of its batch;
it cannot be stopped from outside, so until it returns the model is not entered again: every
request fails at once with `PolicyStuck` and `stuck_calls` reports the call (the websocket
server's /healthz answers 503). Being a daemon, the thread never holds the process at exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import ray

from envs.base import Observation
from evalsuite.policy import PolicySpec, build_policy, chunk_info_of

log = logging.getLogger(__name__)


class PolicyTimeout(RuntimeError):
    """A policy call outlived its limit; the requests of its batch fail with this error."""


class PolicyStuck(PolicyTimeout):
    """The policy is still inside a call that outlived its limit: a request fails at once with this
    error rather than enter the model a second time."""


@dataclass(eq=False)  # compared by identity: a caller that gives up finds its own request in the queue
class _Request:
    observation: Observation
    key: str
    future: asyncio.Future


class _CallThread:
    """A daemon thread that runs the calls given to it in order, one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.busy_since: float | None = None  # monotonic start of the call in progress
        threading.Thread(target=self._loop, daemon=True, name="policy-call").start()

    def submit(self, fn, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.busy_since = time.monotonic()  # set here, not in the thread: a call is busy from now on
        self._jobs.put((future, fn, args))
        return future

    def _loop(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                self.busy_since = None
                continue
            try:
                result, error = fn(*args), None
            except BaseException as e:  # the caller gets whatever the policy raised
                result, error = None, e
            self.busy_since = None  # before the caller hears of it: its next call finds the thread free
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


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
        self._pending: list[_Request] = []  # requests not yet handed to the policy, in arrival order
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task] = set()
        self._caller = _CallThread()
        self._one_call: asyncio.Lock | None = None  # made in the event loop that serves

    def info(self) -> dict:
        return {"action_dim": self.policy.action_dim, "chunk_length": self.policy.chunk_length}

    def chunk_info(self, key: str) -> dict | None:
        """What the policy said of the chunk it made for request `key` (AsyncVLA: how many tokens
        AFM regenerated), for a rollout video; None where the policy says nothing."""
        return chunk_info_of(self.policy, key)

    async def act(self, observation: Observation, key: str) -> np.ndarray:
        chunk, _ = await self.act_timed(observation, key)
        return chunk

    async def act_timed(self, observation: Observation, key: str) -> tuple[np.ndarray, float]:
        """The request's chunk, and the seconds the policy call that made it took (queueing and
        batching left out). Cancelled before its batch is handed to the policy, the request leaves
        the queue and is never computed."""
        loop = asyncio.get_running_loop()
        request = _Request(observation, key, loop.create_future())
        self._pending.append(request)
        if len(self._pending) >= self.full_batch:  # on its own task: a caller that gives up cannot stop it
            self._start_flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_later(self.max_wait, self._start_flush)
        try:
            return await request.future
        finally:
            if request in self._pending:  # the caller gave up while its request was queued
                self._pending.remove(request)

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._flushes.discard)

    def stuck_s(self) -> float | None:
        """Seconds the policy call that outlived `act_timeout_s` has been running (None: none is)."""
        since = self._caller.busy_since
        if since is None or self.act_timeout_s is None:
            return None
        running = time.monotonic() - since
        return running if running > self.act_timeout_s else None

    async def _flush(self) -> None:
        self._flush_scheduled = False
        if self._one_call is None:
            self._one_call = asyncio.Lock()
        async with self._one_call:  # requests wait in the queue, where their callers can still leave it
            live = [r for r in self._pending if not r.future.done()]
            batch, self._pending = live[: self.max_batch], live[self.max_batch :]
            if not batch:
                return
            if self._pending and not self._flush_scheduled:  # leftovers get their own timer
                self._flush_scheduled = True
                asyncio.get_running_loop().call_later(self.max_wait, self._start_flush)
            await self._run(batch)

    async def _run(self, batch: list[_Request]) -> None:
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
                if request.future.done():  # its caller gave up meanwhile
                    continue
                try:
                    await self._answer([request])
                except Exception as e:  # this request's own error
                    _fail([request], e)

    async def _answer(self, batch: list[_Request]) -> None:
        chunks, seconds = await self._call([r.observation for r in batch], [r.key for r in batch])
        if chunks.shape[:1] != (len(batch),):
            raise ValueError(
                f"the policy returned chunks of shape {chunks.shape} for {len(batch)} observations"
            )
        for request, chunk in zip(batch, chunks):
            if not request.future.done():
                request.future.set_result((np.asarray(chunk), seconds))

    async def _call(self, observations: list[Observation], keys: list[str]) -> tuple[np.ndarray, float]:
        """One policy call on the call thread, at most `act_timeout_s` long (`_one_call` held: calls
        never overlap). A call still running here is one that outlived its limit: `PolicyStuck`."""
        since = self._caller.busy_since
        if since is not None:
            raise PolicyStuck(
                f"the policy is still in a call that outlived the server's {self.act_timeout_s:g} s limit "
                f"(running for {time.monotonic() - since:.1f} s); requests fail until it returns, so that "
                "the model is never entered twice at once"
            )
        start = time.monotonic()
        call = asyncio.wrap_future(self._caller.submit(self.policy.act, observations, keys))
        # asyncio.wait returns at the limit instead of raising: on Python 3.10 wait_for raises
        # asyncio.TimeoutError, which is not the builtin TimeoutError
        done, _ = await asyncio.wait({call}, timeout=self.act_timeout_s)
        if not done:
            call.add_done_callback(_ignore_outcome)  # nobody waits for it any more
            log.error(
                "the policy did not answer a batch of %d within %g s; its requests fail, and every "
                "request fails until the call returns",
                len(observations),
                self.act_timeout_s,
            )
            raise PolicyTimeout(
                f"the policy did not answer within {self.act_timeout_s:g} s (the server's limit)"
            )
        return np.asarray(call.result()), time.monotonic() - start


def _ignore_outcome(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: asyncio does not log it as never retrieved


def _fail(batch: list[_Request], error: BaseException) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(error)


def start_policy_server(
    spec: PolicySpec, max_batch: int, max_wait_ms: float, num_gpus: float = 0, clients: int = 1
):
    actor = ray.remote(num_cpus=0, num_gpus=num_gpus, max_restarts=3, max_concurrency=1000)(
        BatchingPolicyServer
    )
    return actor.remote(spec, max_batch, max_wait_ms, clients)
