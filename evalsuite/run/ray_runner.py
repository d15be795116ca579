"""Run an episode plan on Ray: env workers are actors (one simulator each, `num_cpus=1`); the
policy runs in batching policy-server actors (`evalsuite.serving.policy_server`), except the scripted,
random and remote policies, which run inside each env worker.

Recovery uses Ray's own mechanisms: env workers are actors with `max_restarts=-1`, so a worker
that segfaults or is killed for hanging comes back by itself; the driver keeps a pool of episode
futures with `ray.wait`, retries a crashed episode up to `retries` times on a fresh simulator,
then records it as an error.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections import Counter, deque

import numpy as np

from evalsuite.policy import PolicySpec, build_policy, chunk_info_of
from evalsuite.records import EpisodeSpec
from evalsuite.run.episode import EpisodeResult, run_episode
from evalsuite.run.runner_base import (
    FATAL_ERRORS,
    IN_WORKER_POLICIES,
    RunAborted,
    RunOptions,
    close_quietly,
    describe,
    error_record,
    measures_latency,
)
from evalsuite.run.scheduler import next_for
from evalsuite.run.watchdog import TimeLimitExceeded
from evalsuite.suites.spec import SuiteSpec, import_object

log = logging.getLogger(__name__)


class EnvWorker:
    """One simulator per worker process, reused across episodes of the same suite."""

    def __init__(self, suites: dict[str, SuiteSpec], local_policy: PolicySpec | None = None):
        self.suites = suites
        self.env = None
        self.env_suite: str | None = None
        self.policy = build_policy(local_policy) if local_policy is not None else None

    def observe(self, spec: EpisodeSpec):
        """The first observation of `spec`'s episode (what a warm-up call sends the policy)."""
        self._env_for(spec.suite)
        return self.env.reset(spec.task, spec.episode_index, spec.seed)

    def _env_for(self, suite_name: str) -> None:
        if self.env_suite != suite_name:
            self._close()
            suite = self.suites[suite_name]
            self.env = import_object(suite.env_factory)(**suite.env_kwargs)
            self.env_suite = suite_name

    def run(
        self, spec: EpisodeSpec, server, replan_steps, max_steps, record_video, step_timeout_s=None
    ) -> EpisodeResult:
        import ray

        suite = self.suites[spec.suite]
        self._env_for(spec.suite)

        def act(observations, keys):
            return np.stack(ray.get([server.act.remote(o, k) for o, k in zip(observations, keys)]))

        def chunk_info(key):
            return ray.get(server.chunk_info.remote(key))

        if self.policy is not None:
            self.policy.reset(spec.id)
            act = self.policy.act
            chunk_info = functools.partial(chunk_info_of, self.policy)

        try:
            return run_episode(
                self.env,
                suite,
                spec,
                act,
                replan_steps,
                max_steps,
                record_video=record_video,
                step_timeout_s=step_timeout_s,
                chunk_info=chunk_info,
            )
        except Exception:
            self._close()  # the simulator may be in any state now; the retry gets a fresh one
            raise
        except TimeLimitExceeded as e:  # a BaseException here; to Ray's task errors an Exception
            self._close()
            raise TimeoutError(str(e)) from None

    def ping(self) -> bool:
        return True

    def _close(self) -> None:
        if self.env is not None:
            close_quietly(self.env)
        self.env, self.env_suite = None, None


def check_ray_can_start() -> None:
    """Ray's workers import pyarrow at start when it is installed. A pyarrow built for NumPy 2 next
    to NumPy 1.x (SimplerEnv's environment: sapien 2.2.2 needs numpy<2) kills every worker with a
    traceback in its log, and the driver waits; say so here, with the fix, instead."""
    try:
        import pyarrow  # noqa: F401
    except Exception as e:  # ImportError, or the RuntimeError some builds raise on a NumPy mismatch
        import numpy

        raise RunAborted(
            f"Ray's workers cannot start here: pyarrow fails to import ({type(e).__name__}: {e}); with "
            f"numpy {numpy.__version__} install a pyarrow that supports it: pip install 'pyarrow<22' "
            "(SimplerEnv's versions: constraints/simpler.txt, docs/simpler.md#install)"
        ) from e


def run_ray(todo, suites, policy_spec, options, sink, videos, progress):
    """Run `todo` on `options.workers` env-worker actors; Ray is started here unless the process
    already runs it, and then stopped here too."""
    check_ray_can_start()
    import ray

    started_here = _start_ray(ray, options)
    servers, workers, records = [], [], []
    try:
        in_worker = policy_spec.kind in IN_WORKER_POLICIES
        _check_cluster_resources(ray, policy_spec, options, in_worker)
        if in_worker:
            build_policy(policy_spec)  # surfaces a bad policy before any worker starts
        else:
            servers = _start_policy_servers(ray, policy_spec, options)
        worker_cls = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(EnvWorker)
        workers = [
            worker_cls.remote(suites, policy_spec if in_worker else None) for _ in range(options.workers)
        ]
        if servers and measures_latency(suites):
            _warm_up(ray, workers[0], servers, todo[0], options)
        pool = _EpisodePool(ray, workers, servers, todo, options, videos)
        while pool.busy():
            pool.dispatch()
            finished = pool.collect(pool.wait())
            pool.dispatch()  # idle workers get their next episode before the fsynced writes below
            for result in finished:
                records.append(sink(result.record, result.video))
                if progress:
                    progress.update(records[-1])
            pool.kill_overdue()
    finally:
        for actor in [*workers, *servers]:
            ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()
    return records


def _start_ray(ray, options: RunOptions) -> bool:
    """`ray.init()` unless this process already runs Ray: the cluster at `--address` or
    RAY_ADDRESS, else a new local one. Returns whether it was started here (and must be stopped
    here). Never `address=None`: Ray's own rule then joins the latest cluster anyone started on
    this machine with `ray start` (the address it records in its temp directory), so a "local" run
    would land on another job's cluster and die with it."""
    if ray.is_initialized():
        return False
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    if sigterm is not None:  # ray.init installs one that exits mid-run (kills its processes
        signal.signal(signal.SIGTERM, sigterm)  # under the driver): the caller's handler again
    return True


def _policy_gpus(policy_spec: PolicySpec, in_worker: bool) -> int:
    return 1 if policy_spec.device.startswith("cuda") and not in_worker else 0


def _check_cluster_resources(ray, policy_spec: PolicySpec, options: RunOptions, in_worker: bool) -> None:
    """Refuse a run the cluster cannot host: an actor without its CPU or GPU would wait forever."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if options.workers > cpus:  # each env worker reserves a CPU
        raise RunAborted(
            f"--workers {options.workers} needs {options.workers} CPUs but the Ray cluster has {cpus:g}; "
            f"use --workers {int(cpus)} or fewer (or add nodes to the cluster)"
        )
    replicas = 0 if in_worker else min(options.policy_servers, options.workers)
    gpus = ray.cluster_resources().get("GPU", 0)
    if _policy_gpus(policy_spec, in_worker) * replicas > gpus:
        raise RunAborted(
            f"--device {policy_spec.device} with --policy-servers {replicas} needs {replicas} GPU(s) but the "
            f"Ray cluster has {gpus:g}; use --device cpu, fewer --policy-servers, or add nodes with GPUs "
            "(ray start --num-gpus=1 ...)"
        )


def _warm_up(ray, worker, servers: list, spec: EpisodeSpec, options: RunOptions) -> None:
    """Before a run that measures the policy's latency, one call of every batch size each server can
    form, with the first episode's observation: a compile or a CUDA graph capture (once per batch
    size) is paid here instead of inside an episode, where it would be counted as thinking time."""
    observation = ray.get(worker.observe.remote(spec))
    replicas = len(servers)
    for i, server in enumerate(servers):
        clients = len(range(i, options.workers, replicas))
        for size in range(1, min(options.max_batch, clients) + 1):
            ray.get([server.act.remote(observation, f"warm-up/{size}/{j}@0") for j in range(size)])
    log.info("warmed the policy up at batch sizes up to %d", min(options.max_batch, options.workers))


def _start_policy_servers(ray, policy_spec: PolicySpec, options: RunOptions) -> list:
    """`--policy-servers` batching servers (at most one per worker), each built before any env:
    a bad checkpoint stops the run here."""
    from ray.exceptions import RayActorError, RayTaskError

    from evalsuite.serving.policy_server import start_policy_server

    replicas = min(options.policy_servers, options.workers)
    servers = [
        start_policy_server(
            policy_spec,
            options.max_batch,
            options.max_wait_ms,
            num_gpus=_policy_gpus(policy_spec, in_worker=False),
            clients=len(range(i, options.workers, replicas)),  # the workers it serves
        )
        for i in range(replicas)
    ]
    try:
        ray.get([server.info.remote() for server in servers])
    except (RayTaskError, RayActorError) as e:
        for server in servers:
            ray.kill(server, no_restart=True)
        raise RunAborted(f"the policy could not be built: {_cause_text(e)}") from e
    return servers


class _EpisodePool:
    """The driver's pool of episode futures (Ray's `ray.wait` pattern). Each idle worker gets the
    scheduler's next episode (with its policy server, round-robin); a worker whose episode raised
    takes the next one; a worker that died (segfault, OOM kill, or killed here for outliving
    --episode-timeout) is restarted by Ray and gets work again once it answers a ping."""

    def __init__(self, ray, workers: list, servers: list, todo: list[EpisodeSpec], options, videos):
        self.ray, self.options, self.videos = ray, options, videos
        self.server_of = {w: servers[i % len(servers)] if servers else None for i, w in enumerate(workers)}
        self.queue = deque(todo)
        self.attempts: Counter[str] = Counter()
        self.inflight: dict = {}  # episode ref -> (worker, spec, start time)
        self.recovering: dict = {}  # ping ref -> worker being restarted by Ray after a crash
        self.timed_out: set = set()
        self.idle = list(workers)
        self.last_task: dict = {}  # worker -> (suite, task) of its last episode

    def busy(self) -> bool:
        return bool(self.queue or self.inflight)

    def dispatch(self) -> None:
        while self.idle and self.queue:
            worker = self.idle.pop()
            spec = next_for(worker, self.queue, self.last_task)
            self.last_task[worker] = (spec.suite, spec.task)
            self.attempts[spec.id] += 1
            ref = worker.run.remote(
                spec,
                self.server_of[worker],
                self.options.replan_steps,
                self.options.max_steps,
                self.videos.wanted(spec),
                self.options.step_timeout_s,
            )
            self.inflight[ref] = (worker, spec, time.monotonic())

    def wait(self) -> list:
        """Every ref ready now, or else the first within a second."""
        refs = [*self.inflight, *self.recovering]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        if not ready:
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
        return ready

    def collect(self, ready: list) -> list[EpisodeResult]:
        """The results of the finished episodes among `ready` (error records for those out of
        retries); restarted workers that answered are idle again."""
        finished = []
        for ref in ready:
            if ref in self.recovering:
                self._recovered(ref)
            else:
                result = self._episode_done(ref)
                if result is not None:
                    finished.append(result)
        return finished

    def kill_overdue(self) -> None:
        """Kill the worker of every episode past --episode-timeout: Ray restarts it and the
        episode's ref fails (then retried like a crash)."""
        if not self.options.episode_timeout_s:
            return
        now = time.monotonic()
        for ref, (worker, spec, t0) in self.inflight.items():
            if ref not in self.timed_out and now - t0 > self.options.episode_timeout_s:
                log.warning(
                    "episode %s exceeded %.0f s; restarting its worker",
                    spec.id,
                    self.options.episode_timeout_s,
                )
                self.timed_out.add(ref)
                self.ray.kill(worker, no_restart=False)

    def _recovered(self, ref) -> None:
        from ray.exceptions import RayActorError

        worker = self.recovering.pop(ref)
        try:
            self.ray.get(ref)
            self.idle.append(worker)
        except RayActorError:  # still restarting
            time.sleep(0.2)
            self.recovering[worker.ping.remote()] = worker

    def _episode_done(self, ref) -> EpisodeResult | None:
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        worker, spec, _ = self.inflight.pop(ref)
        try:
            result = self.ray.get(ref)
            result.record.attempts = self.attempts[spec.id]
            self.idle.append(worker)
            return result
        except RayTaskError as e:
            if isinstance(e.cause, FATAL_ERRORS):
                raise RunAborted(str(e.cause)) from e
            self.idle.append(worker)  # the worker survived; it dropped its simulator
            return self._retry_or_error(spec, _cause_text(e))
        except (RayActorError, GetTimeoutError) as e:
            self.recovering[worker.ping.remote()] = worker  # Ray restarts the actor
            if ref in self.timed_out:
                reason = f"timed out after {self.options.episode_timeout_s:.0f} s"
            else:
                reason = f"env worker died ({type(e).__name__})"
            return self._retry_or_error(spec, reason)

    def _retry_or_error(self, spec: EpisodeSpec, reason: str) -> EpisodeResult | None:
        tries = self.attempts[spec.id]
        if tries <= self.options.retries:
            log.warning("episode %s failed (%s); retrying (attempt %d)", spec.id, reason, tries + 1)
            self.queue.appendleft(spec)
            return None
        return EpisodeResult(error_record(spec, reason, tries))


def _cause_text(e) -> str:
    cause = getattr(e, "cause", None) or e
    return describe(cause)
