"""`--step-timeout`: one simulator step that runs past its limit ends the episode's attempt.

A step's limit is a SIGALRM timer, nested inside whatever timer is already running (the inline
runner's `--episode-timeout`): the nearer deadline is armed, and the outer one is re-armed with
what is left of it when the step ends, so either limit fires as itself and the record says which.
A step past its limit raises `StepTimeout`; the runner retries the episode on a fresh simulator,
like a crashed one. Python code is interrupted at once; a call into native code (a physics step,
a render) when it returns; a native call that never returns is ended by `--episode-timeout`,
which kills the Ray worker. Signals reach the main thread only: elsewhere no limit is applied.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager


class StepTimeout(Exception):
    """A simulator step ran past `--step-timeout`."""


@contextmanager
def step_limit(seconds: float | None, what: str):
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_handler = signal.getsignal(signal.SIGALRM)
    mine = not outer_left or seconds < outer_left
    started = time.monotonic()

    def expire(signum, frame):
        if mine:
            raise StepTimeout(f"{what} ran past --step-timeout {seconds:g} s")
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
