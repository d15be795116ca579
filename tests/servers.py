"""Real policy servers for the tests: `asyncvla-eval serve`'s server on a thread of this process, or
the command in a subprocess whose readiness is its "serving ... on ws://" log line."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from evalsuite.policy import PolicySpec

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_thread(server) -> str:
    """A PolicyWebsocketServer on a daemon thread; returns its ws:// address once it listens."""
    port = free_port()
    ready = threading.Event()

    def run():
        async def main_():
            event = asyncio.Event()
            task = asyncio.ensure_future(server.serve("127.0.0.1", port, event))
            await event.wait()
            ready.set()
            await task

        asyncio.run(main_())

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(60), "the server did not start"
    return f"ws://127.0.0.1:{port}"


def start_thread_server(spec: PolicySpec, **kwargs) -> str:
    from evalsuite.serving.server import PolicyWebsocketServer

    return serve_in_thread(PolicyWebsocketServer(spec, **kwargs))


def start_serve_process(args: list[str], timeout_s: float = 120) -> subprocess.Popen:
    """`python -m evalsuite.cli serve ARGS` with tests/ on the path, returned once it listens; its
    stderr lines go on being collected in `proc.lines` (a full pipe would block the server)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalsuite.cli", "serve", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    timer = threading.Timer(timeout_s, proc.kill)  # a server that never listens ends the wait below
    timer.start()
    try:
        proc.lines = []
        for line in proc.stderr:
            proc.lines.append(line)
            if " on ws://" in line and "serving" in line:
                threading.Thread(target=lambda: proc.lines.extend(proc.stderr), daemon=True).start()
                return proc
        raise AssertionError("the server did not start:\n" + "".join(proc.lines[-20:]))
    finally:
        timer.cancel()
