"""Policies over the wire (openpi's websocket + msgpack protocol) and users' own policy classes.

The servers here are real: `asyncvla-eval serve` serving the shipped demo checkpoint (in a
subprocess where a test kills it, in a thread elsewhere), talking to real websockets clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from asyncvla import demo_checkpoint
from evalsuite.cli import main
from evalsuite.policy import PolicySpec

TESTS = Path(__file__).resolve().parent
EPISODES = ["--tasks", "push_yellow_right,red_on_blue_plate", "--episodes-per-task", "1", "--max-steps", "16"]
TABLETOP = ["tabletop", *EPISODES, "--set", "image_size=56", "--video", "none", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_thread_server(spec: PolicySpec, **kwargs) -> str:
    """A PolicyWebsocketServer on a daemon thread; returns its ws:// address once it listens."""
    from evalsuite.serve import PolicyWebsocketServer

    port = free_port()
    ready = threading.Event()

    def run():
        async def main_():
            event = asyncio.Event()
            task = asyncio.ensure_future(
                PolicyWebsocketServer(spec, **kwargs).serve("127.0.0.1", port, event)
            )
            await event.wait()
            ready.set()
            await task

        asyncio.run(main_())

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(60), "the server did not start"
    return f"ws://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def demo_server() -> str:
    return start_thread_server(
        PolicySpec(kind="asyncvla", checkpoint=str(demo_checkpoint()), mode="asyncvla")
    )


def outcomes(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    return {
        (r["task"], r["episode_index"]): (r["success"], r["steps"], r["info"]["final_state"]) for r in records
    }


def test_a_remote_demo_checkpoint_through_ray_equals_the_in_process_run(demo_server, tmp_path):
    """Two env workers as websocket clients of one batching server: the same trajectories, state for
    state, as the checkpoint run in-process (the request key carries the episode's noise)."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    assert main([*TABLETOP, "--policy", demo_server, "--workers", "2", "--out", str(remote)]) == 0
    assert main([*TABLETOP, "--ckpt", "demo", "--workers", "0", "--out", str(local)]) == 0
    assert outcomes(remote) == outcomes(local) and len(outcomes(local)) == 2


def _openpi_pack(obj):  # openpi_client.msgpack_numpy's convention, from its published description
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    return obj


def _openpi_unpack(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    return obj


def test_a_client_built_from_openpis_protocol_description_gets_actions(demo_server):
    """Not our client class: websockets + msgpack, openpi's LIBERO example keys, no request key."""
    from websockets.sync.client import connect

    with connect(demo_server, compression=None, max_size=None) as ws:
        metadata = msgpack.unpackb(ws.recv(timeout=30), object_hook=_openpi_unpack)
        assert metadata["action_dim"] == 7 and metadata["chunk_length"] == 8
        rng = np.random.default_rng(0)
        obs = {
            "observation/image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
            "observation/state": np.zeros(8, np.float32),
            "prompt": "put the red block on the blue plate",
        }
        ws.send(msgpack.packb(obs, default=_openpi_pack))
        answer = msgpack.unpackb(ws.recv(timeout=60), object_hook=_openpi_unpack)
    assert answer["actions"].shape == (8, 7) and answer["actions"].dtype == np.float32
    assert np.isfinite(answer["actions"]).all() and "infer_ms" in answer["server_timing"]


def test_bad_requests_are_answered_with_an_error_and_the_server_keeps_serving(tmp_path):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from evalsuite.wire import packb

    url = start_thread_server(PolicySpec(kind="random"), max_message_bytes=1 << 20)
    good = {
        "observation/image": np.zeros((8, 8, 3), np.uint8),
        "observation/state": np.zeros(3, np.float32),
        "prompt": "go",
    }
    with (
        connect(url, compression=None, max_size=None) as bystander,
        connect(url, compression=None, max_size=None) as ws,
    ):
        bystander.recv(timeout=10)
        ws.recv(timeout=10)
        bad = [
            "a text frame",
            b"\xc1 not msgpack",
            packb({"prompt": "no image, no state"}),
            msgpack.packb(
                {"observation/image": {b"__ndarray__": True, b"data": b"xx", b"dtype": "|O", b"shape": [1]}}
            ),
            msgpack.packb(
                {"observation/image": {b"__ndarray__": True, b"data": b"xx", b"dtype": "<f4", b"shape": [9]}}
            ),
        ]
        for frame in bad:
            ws.send(frame)
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and reply.startswith("bad request:"), reply
        ws.send(packb(good))  # the same connection still serves
        assert msgpack.unpackb(ws.recv(timeout=10))["actions"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.send(
                packb({**good, "observation/image": np.zeros((1024, 1024, 3), np.uint8)})
            )  # 3 MiB > 1 MiB
            ws.recv(timeout=10)
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1009
        bystander.send(packb(good))  # another client never noticed
        assert isinstance(bystander.recv(timeout=10), bytes)


def test_a_hung_server_turns_into_error_records_not_failures(tmp_path, capsys):
    """A server that sends its metadata and never answers: each episode times out, is retried, and is
    recorded as an error (exit 3), never as a failure."""
    from websockets.sync.server import serve

    from evalsuite.wire import packb

    def handler(ws):
        ws.send(packb({"action_dim": 7, "chunk_length": 8}))
        for _ in ws:  # read and never answer
            pass

    port = free_port()
    server = serve(handler, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "run"
    args = [*TABLETOP, "--policy", f"ws://127.0.0.1:{port}", "--remote-timeout", "1", "--retries", "1"]
    assert main([*args, "--workers", "0", "--out", str(out)]) == 3
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [r["success"] for r in records] == [None, None] and all(r["attempts"] == 2 for r in records)
    assert all("did not answer within 1 s" in r["error"] for r in records)
    server.shutdown()


def test_a_server_killed_mid_run_loses_nothing_and_counts_nothing_twice(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "evalsuite.cli", "serve", "--ckpt", "demo", "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start_server():
        proc = subprocess.Popen(
            command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        for line in proc.stderr:  # wait until it listens
            if "server listening" in line:
                return proc
        raise AssertionError("the server did not start")

    server = start_server()
    out = tmp_path / "run"
    tasks = "push_yellow_right,red_on_blue_plate,blue_in_bowl"
    run = subprocess.Popen(
        [sys.executable, "-m", "evalsuite.cli", "tabletop", "--policy", f"ws://127.0.0.1:{port}", "--tasks", tasks,
         "--episodes-per-task", "2", "--max-steps", "40", "--replan-steps", "2", "--set", "image_size=56",
         "--video", "none", "-q", "--workers", "0", "--out", str(out)],
        env={**env, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "episodes.jsonl").exists() or not (out / "episodes.jsonl").read_text():
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.poll() else ""
        time.sleep(0.2)
    server.kill()  # mid-run: an episode is in flight
    server.wait()
    time.sleep(1.0)
    server = start_server()  # back on the same port; the client reconnects and resends
    try:
        _, err = run.communicate(timeout=300)
    finally:
        server.kill()
    assert run.returncode == 0, err
    assert "reconnecting" in err
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    ids = [r["episode_id"] for r in records]
    assert len(ids) == 6 and len(set(ids)) == 6 and all(r["success"] is not None for r in records)


def test_a_users_policy_class_runs_the_tabletop_suite_through_ray(toy_suites, tmp_path):
    out = tmp_path / "run"
    args = ["tabletop", "--policy", "user_policy:DriftPolicy", "--tasks", "push_green_left,red_in_bowl"]
    args += ["--episodes-per-task", "1", "--max-steps", "8", "--workers", "2", "--video", "none", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["steps"] == 8 and r["mode"] == "import" for r in records)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["policy"]["factory"] == "user_policy:DriftPolicy"


@pytest.mark.parametrize(
    "policy, message",
    [
        (
            "user_policy:NotAPolicy",
            "does not implement the Policy contract (docs/CONTRACTS.md): missing or invalid act, chunk_length",
        ),
        ("no_such_module:Policy", "cannot import it"),
        ("ws://127.0.0.1:1", "no policy server answers at ws://127.0.0.1:1"),
        ("banana", "use scripted, random, ws://HOST:PORT"),
    ],
)
def test_a_bad_external_policy_is_one_line(toy_suites, tmp_path, capsys, policy, message):
    assert main(["tabletop", "--policy", policy, "--workers", "0", "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_server_for_another_action_size_is_refused(tmp_path, capsys):
    url = start_thread_server(PolicySpec(kind="random", action_dim=6))
    assert main([*TABLETOP, "--policy", url, "--workers", "0", "--out", str(tmp_path / "run")]) == 2
    assert f"{url} serves 6-D actions but the suite takes 7-D ones" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ckpt", "/no/such/ckpt"], "checkpoint '/no/such/ckpt' does not exist"),
        (["--ckpt", "demo", "--port", "0"], "--port must be 1-65535"),
        (["--ckpt", "demo", "--remote-layout", "{bad"], "--remote-layout is not JSON"),
        (["--policy", "user_policy:NotAPolicy"], "does not implement the Policy contract"),
    ],
)
def test_serve_refuses_bad_input_before_listening(toy_suites, capsys, args, message):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
