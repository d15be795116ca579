"""Run an episode plan: inline (`--workers 0`, this module) or on Ray (`evalsuite.run.ray_runner`:
env-worker actors and a batching policy server).

Either way a crashed episode is retried on a fresh simulator up to `retries` times, then recorded
as an error; errors that retrying cannot fix (a missing simulator or asset, a policy emitting NaN
or wrong-sized actions) stop the run with their message, and every record written so far stays
in the run directory. `sink` stores each record (and its video) as it finishes.
"""

from __future__ import annotations

import functools
import logging

from evalsuite.policy import PolicySpec, build_policy, chunk_info_of
from evalsuite.records import EpisodeRecord, EpisodeSpec
from evalsuite.run.episode import EpisodeResult, run_episode
from evalsuite.run.ray_runner import run_ray
from evalsuite.run.runner_base import (
    FATAL_ERRORS,
    Progress,
    RecordSink,
    RunAborted,
    RunOptions,
    VideoSlots,
    close_quietly,
    describe,
    error_record,
    measures_latency,
)
from evalsuite.run.watchdog import EpisodeTimeout, TimeLimitExceeded, time_limit
from evalsuite.suites.spec import SuiteSpec, import_object

log = logging.getLogger(__name__)


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
    return run_ray(todo, suites, policy, options, sink, videos, progress)


def _run_inline(todo, suites, policy_spec, options, sink, videos, progress):
    """One simulator per suite in this process, one episode after the other."""
    policy = build_policy(policy_spec)
    envs: dict[str, object] = {}
    records = []
    try:
        if todo and measures_latency(suites):  # a first call's compile must not count as thinking
            first = todo[0]
            envs[first.suite] = import_object(suites[first.suite].env_factory)(
                **suites[first.suite].env_kwargs
            )
            policy.act([envs[first.suite].reset(first.task, first.episode_index, first.seed)], ["warm-up@0"])
        for spec in todo:
            result = _attempt_inline(spec, suites[spec.suite], policy, envs, options, videos)
            records.append(sink(result.record, result.video))
            if progress:
                progress.update(records[-1])
    finally:
        for env in envs.values():
            close_quietly(env)
    return records


def _attempt_inline(spec, suite, policy, envs, options, videos) -> EpisodeResult:
    """The episode's result, retried on a fresh simulator after a crash or a timeout; an error
    record once the retries are spent."""
    for attempt in range(1, options.retries + 2):
        if spec.suite not in envs:
            envs[spec.suite] = import_object(suite.env_factory)(**suite.env_kwargs)
        try:
            with time_limit(
                options.episode_timeout_s,
                lambda: EpisodeTimeout(f"timed out after {options.episode_timeout_s:g} s"),
            ):
                policy.reset(spec.id)
                result = run_episode(
                    envs[spec.suite],
                    suite,
                    spec,
                    policy.act,
                    options.replan_steps,
                    options.max_steps,
                    record_video=videos.wanted(spec),
                    step_timeout_s=options.step_timeout_s,
                    chunk_info=functools.partial(chunk_info_of, policy),
                )
            result.record.attempts = attempt
            return result
        except FATAL_ERRORS as e:
            raise RunAborted(str(e)) from e
        except (Exception, TimeLimitExceeded) as e:  # a crashed or hung simulator: a fresh one, retry
            log.warning("episode %s attempt %d crashed: %s", spec.id, attempt, e)
            close_quietly(envs.pop(spec.suite))
            reason = str(e) if isinstance(e, EpisodeTimeout) else describe(e)
            result = EpisodeResult(error_record(spec, reason, attempt))
    return result
