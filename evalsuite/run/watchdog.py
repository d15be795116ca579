"""Time limits inside a process: `--step-timeout` for one simulator step, `--episode-timeout` inline.

On the main thread a limit is a SIGALRM timer, nested inside whatever timer is already running (a
step's inside the inline runner's episode limit): the nearer deadline is armed, and the outer one
is re-armed with what is left of it when the block ends, so either limit fires as itself and the
record says which. Off the main thread (an application calling `evaluate_suite` from a worker
thread), where signals cannot go, a watchdog thread raises the same exception into the block's
thread (`PyThreadState_SetAsyncExc`).

Either way the exception is a `TimeLimitExceeded`, a `BaseException`: a policy or simulator that
catches `Exception` to retry cannot swallow it; and it is raised again every `REPEAT_S` until the
block ends, so a retry loop that catches everything is interrupted again. Python code is
interrupted at once; a call into native code (a physics step, a render, a sleep off the main
thread) when it returns; a native call that never returns is ended by `--episode-timeout` on Ray,
which kills the worker. The runner retries an attempt that ran past a limit on a fresh simulator.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

REPEAT_S = 0.5  # how often a limit that has fired fires again while its block goes on


class TimeLimitExceeded(BaseException):
    """A block ran past its time limit. A BaseException, as KeyboardInterrupt is: code under the
    limit that catches Exception must not turn it into an ordinary failure or a retry."""


class StepTimeout(TimeLimitExceeded):
    """A simulator step ran past `--step-timeout`."""


class EpisodeTimeout(TimeLimitExceeded):
    """An inline episode outlived --episode-timeout; it is then retried on a fresh simulator like a
    crashed one (on Ray the worker is killed instead)."""


def step_limit(seconds: float | None, what: str):
    return time_limit(seconds, lambda: StepTimeout(f"{what} ran past --step-timeout {seconds:g} s"))


def time_limit(seconds: float | None, timeout: Callable[[], TimeLimitExceeded]):
    """Raise `timeout()` into the block if it runs past `seconds` (None or 0: no limit)."""
    if threading.current_thread() is threading.main_thread():
        return _alarm_limit(seconds, timeout)
    return _thread_limit(seconds, timeout)


@contextmanager
def _alarm_limit(seconds: float | None, timeout: Callable[[], TimeLimitExceeded]):
    if not seconds:
        yield
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_handler = signal.getsignal(signal.SIGALRM)
    mine = not outer_left or seconds < outer_left
    started = time.monotonic()

    def expire(signum, frame):
        if mine:
            raise timeout()
        if callable(outer_handler):  # the outer deadline came first: it fires as itself
            outer_handler(signum, frame)

    signal.signal(signal.SIGALRM, expire)
    # the interval re-fires the limit while the block goes on (a retry loop that caught it)
    signal.setitimer(signal.ITIMER_REAL, seconds if mine else outer_left, REPEAT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_left:  # the outer timer goes on with what is left of it (at least a tick)
            left = max(1e-3, outer_left - (time.monotonic() - started))
            signal.setitimer(signal.ITIMER_REAL, left, REPEAT_S)


@contextmanager
def _thread_limit(seconds: float | None, timeout: Callable[[], TimeLimitExceeded]):
    if not seconds:
        yield
        return
    target = ctypes.c_ulong(threading.get_ident())
    ended = threading.Event()
    lock = threading.Lock()

    def watch():
        wait = seconds
        while not ended.wait(wait):
            with lock:
                if ended.is_set():
                    return
                # an exception class, not an instance, is what the C API raises: give it the message
                error = timeout()
                kind = type(error.__class__.__name__, (error.__class__,), {"__init__": _fixed(error.args)})
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(kind))
            wait = REPEAT_S

    watcher = threading.Thread(target=watch, daemon=True, name="time-limit")
    watcher.start()
    try:
        yield
    finally:
        with lock:
            ended.set()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(target, None)  # one not yet delivered: drop it


def _fixed(args: tuple):
    def __init__(self, *_):
        BaseException.__init__(self, *args)

    return __init__
