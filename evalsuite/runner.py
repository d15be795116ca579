"""Run an episode plan: inline (`--workers 0`) or on Ray (env-worker actors + a batching policy server;
scripted and random policies run inside each env worker).

Recovery uses Ray's own mechanisms: env workers are actors with `max_restarts=-1`, so a worker
that segfaults or is killed for hanging comes back by itself; the driver keeps a pool of episode
futures with `ray.wait`, retries a crashed episode up to `retries` times on a fresh simulator,
then records it as an error. Errors that retrying cannot fix (a missing simulator or asset, a
policy emitting NaN or wrong-sized actions) stop the run with their message; every record
written so far stays in the run directory.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import signal
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from envs.base import InvalidAction, SetupError
from evalsuite.episode import EpisodeResult, run_episode
from evalsuite.errors import EvalError, FatalPolicyError
from evalsuite.policy import PolicySpec, build_policy
from evalsuite.records import EpisodeRecord, EpisodeSpec
from evalsuite.suites.spec import SuiteSpec, import_object

log = logging.getLogger(__name__)

# FloatingPointError: a model whose outputs are not finite (the AsyncVLA rater's confidence) is so
# on every episode
FATAL_ERRORS = (SetupError, InvalidAction, FatalPolicyError, FloatingPointError)
# Scripted and random policies cost microseconds and have nothing to batch: a round trip to the
# policy server would cost more than the policy, so each env worker runs its own copy.
# A remote policy is a client in each worker: the server at the other end does the batching.
IN_WORKER_POLICIES = ("scripted", "random", "remote")
# Ray's settings for a cluster a run starts on its own machine. The raylet connects to its object
# store, which another of its threads is still creating, and a missed connect sleeps
# `raylet_client_connect_timeout_milliseconds` (1 s by default) before retrying: in 2 starts of 8
# here, a whole second before the workers could start. 100 ms between 100 attempts keeps Ray's 10 s
# budget (scripts/bench_startup.py measures the start both ways).
LOCAL_RAY_CONFIG = {
    "raylet_client_connect_timeout_milliseconds": 100,
    "raylet_client_num_connect_attempts": 100,
}


class RunAborted(EvalError):
    """A fatal error (bad input, missing simulator or asset) stopped the run; records are kept."""


@dataclass
class RunOptions:
    workers: int = 2
    address: str | None = None
    replan_steps: int | None = None
    max_steps: int | None = None
    video: str = "first"  # none | first | all
    retries: int = 2  # extra attempts after the first
    episode_timeout_s: float | None = 1800.0
    max_batch: int = 16
    max_wait_ms: float = 5.0
    policy_servers: int = 1  # replicas of the policy server (one GPU each); workers share them round-robin


class VideoSlots:
    """Which episodes to record: all, none, or the first success and first failure of each task."""

    def __init__(self, mode: str, done: dict[str, EpisodeRecord]):
        if mode not in ("none", "first", "all"):
            raise ValueError(f"--video must be none, first or all, got {mode!r}")
        self.mode = mode
        self.filled = {(r.suite, r.task, bool(r.success)) for r in done.values() if r.video}

    def wanted(self, spec: EpisodeSpec) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "none":
            return False
        return not {(spec.suite, spec.task, True), (spec.suite, spec.task, False)} <= self.filled

    def keep(self, record: EpisodeRecord) -> bool:
        if record.success is None or self.mode == "none":
            return False
        slot = (record.suite, record.task, record.success)
        if self.mode == "first" and slot in self.filled:
            return False
        self.filled.add(slot)
        return True


def video_name(spec: EpisodeSpec, success: bool) -> str:
    safe = spec.id.replace("/", "__")
    return f"{safe}__{'success' if success else 'failure'}.mp4"


class Progress:
    def __init__(self, total: int, done: dict[str, EpisodeRecord]):
        self.bar = tqdm(total=total, initial=len(done), unit="ep", dynamic_ncols=True, desc="episodes")
        self.successes = sum(1 for r in done.values() if r.success)
        self.finished = sum(1 for r in done.values() if r.success is not None)
        self.errors = sum(1 for r in done.values() if r.success is None)
        self.steps = 0
        self.start = time.perf_counter()

    def update(self, record: EpisodeRecord) -> None:
        if record.success is None:
            self.errors += 1
        else:
            self.finished += 1
            self.successes += int(record.success)
        self.steps += record.steps
        rate = self.successes / self.finished if self.finished else 0.0
        sps = self.steps / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(success=f"{100 * rate:.1f}%", errors=self.errors, steps_per_s=f"{sps:.1f}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


RecordSink = Callable[[EpisodeRecord, bytes | None], EpisodeRecord]


def run_plan(
    todo: list[EpisodeSpec],
    suites: dict[str, SuiteSpec],
    policy: PolicySpec,
    options: RunOptions,
    sink: RecordSink,
    videos: VideoSlots,
    progress: Progress | None = None,
) -> list[EpisodeRecord]:
    """Run every episode of `todo`; `sink` stores each record (and its video) as it finishes."""
    if options.workers == 0:
        return _run_inline(todo, suites, policy, options, sink, videos, progress)
    return _run_ray(todo, suites, policy, options, sink, videos, progress)


def _error_record(spec: EpisodeSpec, error: str, attempts: int) -> EpisodeRecord:
    return EpisodeRecord.for_spec(
        spec, success=None, steps=0, wall_time_s=0.0, error=error, attempts=attempts
    )


# -- inline ------------------------------------------------------------------------------------
class EpisodeTimeout(Exception):
    """An inline episode outlived --episode-timeout (raised into it by SIGALRM)."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """--episode-timeout for the inline loop: SIGALRM raises `EpisodeTimeout` into the episode,
    which is then retried on a fresh simulator like a crashed one (on Ray the worker is killed
    instead). Python code (a sleeping or looping policy, the env's Python) is interrupted; a call
    into native code is interrupted when it returns. Signals reach the main thread only: elsewhere
    (an embedding application's thread) the limit is not applied."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise EpisodeTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_inline(todo, suites, policy_spec, options, sink, videos, progress):
    policy = build_policy(policy_spec)
    envs: dict[str, object] = {}
    records = []
    try:
        for spec in todo:
            suite = suites[spec.suite]
            for attempt in range(1, options.retries + 2):
                if spec.suite not in envs:
                    envs[spec.suite] = import_object(suite.env_factory)(**suite.env_kwargs)
                try:
                    with _time_limit(options.episode_timeout_s):
                        policy.reset(spec.id)
                        result = run_episode(
                            envs[spec.suite],
                            suite,
                            spec,
                            policy.act,
                            options.replan_steps,
                            options.max_steps,
                            record_video=videos.wanted(spec),
                        )
                    result.record.attempts = attempt
                    break
                except FATAL_ERRORS as e:
                    raise RunAborted(str(e)) from e
                except Exception as e:  # a crashed or hung simulator: start a fresh one and retry
                    log.warning("episode %s attempt %d crashed: %s", spec.id, attempt, e)
                    _close_quietly(envs.pop(spec.suite))
                    reason = str(e) if isinstance(e, EpisodeTimeout) else _describe(e)
                    result = EpisodeResult(_error_record(spec, reason, attempt))
            records.append(sink(result.record, result.video))
            if progress:
                progress.update(records[-1])
    finally:
        for env in envs.values():
            _close_quietly(env)
    return records


# -- Ray -----------------------------------------------------------------------------------------
class EnvWorker:
    """One simulator per worker process, reused across episodes of the same suite."""

    def __init__(self, suites: dict[str, SuiteSpec], local_policy: PolicySpec | None = None):
        self.suites = suites
        self.env = None
        self.env_suite: str | None = None
        self.policy = build_policy(local_policy) if local_policy is not None else None

    def run(self, spec: EpisodeSpec, server, replan_steps, max_steps, record_video) -> EpisodeResult:
        import ray

        suite = self.suites[spec.suite]
        if self.env_suite != spec.suite:
            self._close()
            self.env = import_object(suite.env_factory)(**suite.env_kwargs)
            self.env_suite = spec.suite

        def act(observations, keys):
            return np.stack(ray.get([server.act.remote(o, k) for o, k in zip(observations, keys)]))

        if self.policy is not None:
            self.policy.reset(spec.id)
            act = self.policy.act

        try:
            return run_episode(self.env, suite, spec, act, replan_steps, max_steps, record_video=record_video)
        except Exception:
            self._close()  # the simulator may be in any state now; the retry gets a fresh one
            raise

    def ping(self) -> bool:
        return True

    def _close(self) -> None:
        if self.env is not None:
            _close_quietly(self.env)
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


def _run_ray(todo, suites, policy_spec, options, sink, videos, progress):
    check_ray_can_start()
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    from evalsuite.policy_server import start_policy_server

    started_here = not ray.is_initialized()
    if started_here:
        joins = bool(options.address or os.environ.get("RAY_ADDRESS"))
        sigterm = (
            signal.getsignal(signal.SIGTERM)
            if threading.current_thread() is threading.main_thread()
            else None
        )
        with contextlib.nullcontext() if joins else _node_registration_polled_finely(ray):
            ray.init(
                address=options.address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                # a cluster joined keeps its own settings: Ray refuses others from a joining driver
                _system_config=None if joins else LOCAL_RAY_CONFIG,
            )
        if sigterm is not None:  # ray.init installs one that exits mid-run (kills its processes
            signal.signal(signal.SIGTERM, sigterm)  # under the driver): the caller's handler again
    cpus = ray.cluster_resources().get("CPU", 0)
    if options.workers > cpus:  # each env worker reserves a CPU: the extra ones would never start
        if started_here:
            _stop_local_ray(ray)
        raise RunAborted(
            f"--workers {options.workers} needs {options.workers} CPUs but the Ray cluster has {cpus:g}; "
            f"use --workers {int(cpus)} or fewer (or add nodes to the cluster)"
        )
    worker_cls = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(EnvWorker)
    in_worker = policy_spec.kind in IN_WORKER_POLICIES
    num_gpus = 1 if policy_spec.device.startswith("cuda") and not in_worker else 0
    replicas = 0 if in_worker else min(options.policy_servers, options.workers)
    gpus = ray.cluster_resources().get("GPU", 0)
    if num_gpus * replicas > gpus:  # a policy server without its GPU would wait forever
        if started_here:
            _stop_local_ray(ray)
        raise RunAborted(
            f"--device {policy_spec.device} with --policy-servers {replicas} needs {replicas} GPU(s) but the "
            f"Ray cluster has {gpus:g}; use --device cpu, fewer --policy-servers, or add nodes with GPUs "
            "(ray start --num-gpus=1 ...)"
        )
    servers = []
    if in_worker:
        build_policy(policy_spec)  # surfaces a bad policy before any worker starts
    else:
        servers = [
            start_policy_server(
                policy_spec,
                options.max_batch,
                options.max_wait_ms,
                num_gpus=num_gpus,
                clients=len(range(i, options.workers, replicas)),  # the workers it serves
            )
            for i in range(replicas)
        ]
        try:
            ray.get([server.info.remote() for server in servers])  # a bad checkpoint, before any env
        except (RayTaskError, RayActorError) as e:
            raise RunAborted(f"the policy could not be built: {_cause_text(e)}") from e
    workers = [worker_cls.remote(suites, policy_spec if in_worker else None) for _ in range(options.workers)]
    server_of = {w: servers[i % replicas] if servers else None for i, w in enumerate(workers)}
    queue = deque(todo)
    attempts: Counter[str] = Counter()
    inflight: dict = {}  # episode ref -> (worker, spec, start time)
    recovering: dict = {}  # ping ref -> worker being restarted by Ray after a crash
    timed_out: set = set()
    idle = list(workers)
    last_task: dict = {}  # worker -> (suite, task) of its last episode
    records = []
    try:

        def dispatch() -> None:
            while idle and queue:
                worker = idle.pop()
                spec = _next_for(worker, queue, last_task)
                last_task[worker] = (spec.suite, spec.task)
                attempts[spec.id] += 1
                ref = worker.run.remote(
                    spec, server_of[worker], options.replan_steps, options.max_steps, videos.wanted(spec)
                )
                inflight[ref] = (worker, spec, time.monotonic())

        while queue or inflight:
            dispatch()
            ready, _ = ray.wait(
                [*inflight, *recovering], num_returns=len(inflight) + len(recovering), timeout=0
            )
            if not ready:
                ready, _ = ray.wait([*inflight, *recovering], num_returns=1, timeout=1.0)
            finished = []
            for ref in ready:
                if ref in recovering:  # a restarted worker answers again: give it work
                    worker = recovering.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(worker)
                    except RayActorError:  # still restarting
                        time.sleep(0.2)
                        recovering[worker.ping.remote()] = worker
                    continue
                worker, spec, _ = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                    result.record.attempts = attempts[spec.id]
                    idle.append(worker)
                except RayTaskError as e:
                    if isinstance(e.cause, FATAL_ERRORS):
                        raise RunAborted(str(e.cause)) from e
                    idle.append(worker)  # the worker survived; it dropped its simulator
                    result = _retry_or_error(spec, _cause_text(e), attempts, options, queue)
                except (RayActorError, GetTimeoutError) as e:
                    # segfault, OOM kill or our own kill after a timeout: Ray restarts the actor;
                    # it gets work again once it answers a ping
                    recovering[worker.ping.remote()] = worker
                    reason = (
                        f"timed out after {options.episode_timeout_s:.0f} s"
                        if ref in timed_out
                        else f"env worker died ({type(e).__name__})"
                    )
                    result = _retry_or_error(spec, reason, attempts, options, queue)
                if result is not None:
                    finished.append(result)
            dispatch()  # idle workers get their next episode before the fsynced writes below
            for result in finished:
                records.append(sink(result.record, result.video))
                if progress:
                    progress.update(records[-1])
            if options.episode_timeout_s:
                now = time.monotonic()
                for ref, (worker, spec, t0) in inflight.items():
                    if ref not in timed_out and now - t0 > options.episode_timeout_s:
                        log.warning(
                            "episode %s exceeded %.0f s; restarting its worker",
                            spec.id,
                            options.episode_timeout_s,
                        )
                        timed_out.add(ref)
                        ray.kill(worker, no_restart=False)  # Ray restarts it; the ref fails
    finally:
        for w in workers:
            ray.kill(w, no_restart=True)
        for server in servers:
            ray.kill(server, no_restart=True)
        if started_here:
            _stop_local_ray(ray)
    return records


@contextlib.contextmanager
def _node_registration_polled_finely(ray):
    """While a local cluster starts: Ray asks the GCS for its new raylet once, then once a second
    (a fixed sleep in its C++ `GlobalStateAccessor::GetNode`), and the raylet registers about
    0.95 s after the first ask, once its agents have booted: a start a little slower than that
    waits a whole extra second (3 starts of 8 here, 6 on a loaded machine; scripts/bench_startup.py).
    Ray's own wait (`ray._private.services.get_node`, not public API) is therefore preceded by one
    that asks every 20 ms with the GCS client Ray's services use; Ray's then finds the node at its
    first ask. Any error in ours, or another Ray without that function, leaves Ray's as it was."""
    services = ray._private.services
    rays_wait = getattr(services, "get_node", None)
    if rays_wait is None:
        yield
        return

    def get_node(gcs_address, node_id, *args, **kwargs):
        try:
            gcs = ray._raylet.GcsClient(address=gcs_address)
            deadline = time.monotonic() + 10  # then Ray's own wait, with its own 30 s
            while time.monotonic() < deadline:
                if any(node.hex() == node_id for node in gcs.get_all_node_info(timeout=1)):
                    break
                time.sleep(0.02)
        except Exception as e:  # Ray's wait below still waits, a second at a time
            log.debug("could not poll the GCS for the raylet: %s", e)
        return rays_wait(gcs_address, node_id, *args, **kwargs)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = rays_wait


def _stop_local_ray(ray) -> None:
    """`ray.shutdown()` of the cluster `ray.init()` started here. Ray stops the GCS before the
    autoscaler monitor, whose SIGTERM handler then waits on the dead GCS until Ray's 1 s grace
    period ends in a SIGKILL: a second of every run (shutdown 1.4 s, 0.35 s with the monitor gone
    first). A local cluster has nothing to autoscale, so the monitor gets that SIGKILL first.
    `Node.kill_monitor` is not public API: without it the shutdown is only slower."""
    node = getattr(ray._private.worker, "_global_node", None)
    try:
        node.kill_monitor(check_alive=False)
    except Exception as e:  # another Ray version; nothing is lost but the second
        log.debug("could not stop Ray's monitor first: %s", e)
    ray.shutdown()


def _next_for(worker, queue: deque, last_task: dict) -> EpisodeSpec:
    """The next episode for `worker`. Some simulators (LIBERO) build a new env on a task change
    (2-15 s), so a worker stays on its task while that task has episodes waiting; a worker that
    needs a new task takes the one with the most waiting episodes per worker already on it
    (ties: plan order). Workers thus spread over the tasks and each builds an env about once per
    task it takes, instead of every worker building every task's env in turn (measured by
    `scripts/bench_libero.py --project`; tests/test_scheduler.py)."""
    current = last_task.get(worker)
    index = next((i for i, spec in enumerate(queue) if (spec.suite, spec.task) == current), None)
    if index is None:
        waiting: Counter = Counter((spec.suite, spec.task) for spec in queue)  # in plan order
        on_task = Counter(task for w, task in last_task.items() if w is not worker)
        current = max(waiting, key=lambda task: waiting[task] / (1 + on_task[task]))
        index = next(i for i, spec in enumerate(queue) if (spec.suite, spec.task) == current)
    spec = queue[index]
    del queue[index]
    return spec


def simulate_env_builds(
    plan: list[EpisodeSpec],
    workers: int,
    seconds: Callable[[EpisodeSpec, bool], float],
    choose: Callable[[object, deque, dict], EpisodeSpec] = _next_for,
) -> dict:
    """Replay the dispatch of `plan` over `workers` without running anything: each worker, when
    free, takes `choose(...)`'s episode, which lasts `seconds(spec, built_env)`. Returns how many
    envs the workers built and when the last episode ends (for projections and the scheduler's tests)."""
    queue, last_task, builds = deque(plan), {}, 0
    free_at = [(0.0, w) for w in range(workers)]
    while queue:
        t, worker = heapq.heappop(free_at)
        spec = choose(worker, queue, last_task)
        built = last_task.get(worker) != (spec.suite, spec.task)
        builds += built
        last_task[worker] = (spec.suite, spec.task)
        heapq.heappush(free_at, (t + seconds(spec, built), worker))
    return {"env_builds": builds, "wall_s": max(t for t, _ in free_at)}


def _retry_or_error(spec, reason, attempts, options, queue) -> EpisodeResult | None:
    if attempts[spec.id] <= options.retries:
        log.warning("episode %s failed (%s); retrying (attempt %d)", spec.id, reason, attempts[spec.id] + 1)
        queue.appendleft(spec)
        return None
    return EpisodeResult(_error_record(spec, reason, attempts[spec.id]))


def _cause_text(e) -> str:
    cause = getattr(e, "cause", None) or e
    return _describe(cause)


def _describe(e: BaseException) -> str:
    last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    return f"{type(e).__name__}: {e}{where}"


def _close_quietly(env) -> None:
    try:
        env.close()
    except Exception as e:  # closing a crashed simulator may fail too; nothing to do about it
        log.debug("env close failed: %s", e)
