"""What the inline and the Ray runner share: the options a run is given, which errors stop it and
which are retried, the record of an episode that failed every attempt, which episodes keep a
video, and the progress bar."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

from envs.base import InvalidAction, SetupError
from evalsuite.errors import EvalError, FatalPolicyError
from evalsuite.records import EpisodeRecord, EpisodeSpec
from evalsuite.suites.spec import SuiteSpec

log = logging.getLogger(__name__)

# Errors that retrying cannot fix: the run stops with their message. FloatingPointError: a model
# whose outputs are not finite (the AsyncVLA rater's confidence) is so on every episode.
FATAL_ERRORS = (SetupError, InvalidAction, FatalPolicyError, FloatingPointError)
# Scripted and random policies cost microseconds and have nothing to batch: a round trip to the
# policy server would cost more than the policy, so each env worker runs its own copy.
# A remote policy is a client in each worker: the server at the other end does the batching.
IN_WORKER_POLICIES = ("scripted", "random", "remote")

RecordSink = Callable[[EpisodeRecord, bytes | None], EpisodeRecord]


def measures_latency(suites: dict[str, SuiteSpec]) -> bool:
    """Whether the run times the policy's calls (`--latency measured`): what a call costs then
    changes the outcome, so the first call of each batch size must not pay for a compile."""
    return any(s.latency == "measured" for s in suites.values())


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
    step_timeout_s: float | None = None  # one simulator step (evalsuite/run/watchdog.py)
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


def error_record(spec: EpisodeSpec, error: str, attempts: int) -> EpisodeRecord:
    """The record of an episode that failed on every attempt: neither a success nor a failure."""
    return EpisodeRecord.for_spec(
        spec, success=None, steps=0, wall_time_s=0.0, error=error, attempts=attempts
    )


def describe(e: BaseException) -> str:
    """An exception as one line: its type, message and the file:line it was raised at."""
    last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    return f"{type(e).__name__}: {e}{where}"


def close_quietly(env) -> None:
    try:
        env.close()
    except Exception as e:  # closing a crashed simulator may fail too; nothing to do about it
        log.debug("env close failed: %s", e)
