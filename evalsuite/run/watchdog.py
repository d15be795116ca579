"""Time limits inside a process: `--step-timeout` for one simulator step, `--episode-timeout` inline.

A limit is a SIGALRM timer, nested inside whatever timer is already running (a step's inside the
inline runner's episode limit): the nearer deadline is armed, and the outer one is re-armed with
what is left of it when the block ends, so either limit fires as itself and the record says which.
A step past its limit raises `StepTimeout`; the runner retries the episode on a fresh simulator,
like a crashed one. Python code is interrupted at once; a call into native code (a physics step,
a render) when it returns; a native call that never returns is ended by `--episode-timeout`,
which on Ray kills the worker. Signals reach the main thread only: elsewhere (an embedding
application's thread) no limit is applied.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager


class StepTimeout(Exception):
    """A simulator step ran past `--step-timeout`."""


def step_limit(seconds: float | None, what: str):
    return time_limit(seconds, lambda: StepTimeout(f"{what} ran past --step-timeout {seconds:g} s"))


@contextmanager
def time_limit(seconds: float | None, timeout: Callable[[], Exception]):
    """Raise `timeout()` into the block if it runs past `seconds` (None or 0: no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
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
    signal.setitimer(signal.ITIMER_REAL, seconds if mine else outer_left)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_left:  # the outer timer goes on with what is left of it (at least a tick)
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer_left - (time.monotonic() - started)))
