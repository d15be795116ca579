"""Stopping `asyncvla-train`: Ctrl-C and SIGTERM end the training the same way (a KeyboardInterrupt
in the main thread, which stops the evaluation subprocess and the workers), never in the middle of
a save, with exit code 130 / 143; worker processes die with the process that spawned them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from contextlib import contextmanager

EXIT_SIGINT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM


class Signals:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, once: a second signal while the
    first one's cleanup runs (stopping the evaluation, the workers) is noted, not raised, so the
    cleanup is not cut short. Inside `deferred()` (a save) the first one waits for the block's end."""

    def __init__(self):
        self.received: int | None = None
        self._raised = False
        self._depth = 0
        self._previous: dict = {}

    def install(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
        if self._depth or self._raised:
            return
        self._raised = True
        raise KeyboardInterrupt(f"signal {signum}")

    @contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self.received is not None and not self._raised:
            self._raised = True
            raise KeyboardInterrupt(f"signal {self.received}")

    def exit_code(self) -> int:
        return EXIT_SIGTERM if self.received == signal.SIGTERM else EXIT_SIGINT


SIGNALS = Signals()  # this process's; installed by the command and by each spawned worker


def die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel sends this process SIGTERM when its parent dies (even by kill -9)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before the call
        os._exit(EXIT_SIGTERM)
