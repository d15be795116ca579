"""Policies over the wire (openpi's websocket + msgpack protocol) and users' own policy classes.

The servers here are real: `asyncvla-eval serve` serving the shipped demo checkpoint (in a
subprocess where a test kills it, in a thread elsewhere), talking to real websockets clients.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from servers import free_port, start_serve_process, start_thread_server

from asyncvla import demo_checkpoint
from envs.base import Observation
from evalsuite.cli import main
from evalsuite.policy import PolicySpec, RandomPolicy
from evalsuite.serving.remote import RemotePolicy, RemotePolicyError, served_image_size
from evalsuite.serving.server import serve_parser
from evalsuite.serving.wire import packb, unpackb
from evalsuite.validate import check_external_policy

TESTS = Path(__file__).resolve().parent
EPISODES = ["--tasks", "push_yellow_right,red_on_blue_plate", "--episodes-per-task", "1", "--max-steps", "16"]
TABLETOP = ["tabletop", *EPISODES, "--set", "image_size=56", "--video", "none", "-q"]
DEFAULTS = ["tabletop", *EPISODES, "--video", "none", "-q"]  # the suite's own image size and all


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
    state, as the checkpoint run in-process, with the default settings (the request key carries the
    episode's noise; the server announces the checkpoint's image size, 56 px, and the suite renders
    at it as it does for --ckpt, instead of its 128 px default that the model would resample)."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    assert main([*DEFAULTS, "--policy", demo_server, "--workers", "2", "--out", str(remote)]) == 0
    assert main([*DEFAULTS, "--ckpt", "demo", "--workers", "0", "--out", str(local)]) == 0
    assert outcomes(remote) == outcomes(local) and len(outcomes(local)) == 2
    assert [image_size(run) for run in (remote, local)] == [56, 56]


def test_set_image_size_wins_over_the_size_the_server_announces(demo_server, tmp_path):
    out = tmp_path / "run"
    args = [
        *DEFAULTS,
        "--policy",
        demo_server,
        "--set",
        "image_size=84",
        "--max-steps",
        "1",
        "--workers",
        "0",
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert image_size(out) == 84


def test_the_announced_image_size_is_passed_from_the_probe_not_kept_in_a_module_cache(demo_server):
    """The driver's check returns the size the server's metadata announces (issue 34, item 14):
    `served_image_size` reads the metadata it is given; nothing is filled as a side effect."""
    spec = PolicySpec(kind="remote", url=demo_server, action_dim=7)
    assert check_external_policy(spec) == (8, 56)
    assert served_image_size({"action_dim": 7, "image_size": 84}) == 84
    assert served_image_size({"action_dim": 7}) is None


def image_size(run: Path) -> int:
    return json.loads((run / "run.json").read_text())["protocol"]["tabletop"]["env_kwargs"]["image_size"]


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

    from evalsuite.serving.wire import packb

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
            packb([good]),  # msgpack, but a list
        ]
        for frame in bad:
            ws.send(frame)
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and reply.startswith("bad request:"), reply
        ws.send(packb({**good, "asyncvla/key": "same@3"}))  # the same connection still serves
        actions = unpackb(ws.recv(timeout=10))["actions"]
        expected = RandomPolicy().act([None], ["same@3"])[0]
        assert actions.shape == (8, 7) and actions.dtype == np.float32
        np.testing.assert_array_equal(actions, expected)
        with pytest.raises(ConnectionClosed) as closed:
            ws.send(
                packb({**good, "observation/image": np.zeros((1024, 1024, 3), np.uint8)})
            )  # 3 MiB > 1 MiB
            ws.recv(timeout=10)
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1009
        bystander.send(packb({**good, "asyncvla/key": "bystander@0"}))  # another client never noticed
        actions = unpackb(bystander.recv(timeout=10))["actions"]
        np.testing.assert_array_equal(actions, RandomPolicy().act([None], ["bystander@0"])[0])


def test_a_hung_server_turns_into_error_records_not_failures(tmp_path, capsys):
    """A server that sends its metadata and never answers: each episode times out, is retried, and is
    recorded as an error (exit 3), never as a failure."""
    from websockets.sync.server import serve

    from evalsuite.serving.wire import packb

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
    """The run is paused (SIGSTOP) while its server is killed and a new one starts on the same port:
    it goes on only once the new server listens, so the test does not depend on how fast a server
    starts (torch, the checkpoint) against the client's reconnect window."""
    port = free_port()
    server = start_serve_process(["--ckpt", "demo", "--port", str(port)])
    out = tmp_path / "run"
    tasks = "push_yellow_right,red_on_blue_plate,blue_in_bowl"
    run = subprocess.Popen(
        [sys.executable, "-m", "evalsuite.cli", "tabletop", "--policy", f"ws://127.0.0.1:{port}", "--tasks", tasks,
         "--episodes-per-task", "2", "--max-steps", "40", "--replan-steps", "2",
         "--video", "none", "-q", "--workers", "0", "--out", str(out)],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "episodes.jsonl").exists() or not (out / "episodes.jsonl").read_text():
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.poll() else ""
            time.sleep(0.05)
        run.send_signal(signal.SIGSTOP)  # mid-run: an episode is in flight
        server.kill()
        server.wait()
        server = start_serve_process(["--ckpt", "demo", "--port", str(port)])  # listening again
        run.send_signal(signal.SIGCONT)  # its connection is dead: it reconnects and resends
        _, err = run.communicate(timeout=300)
    finally:
        run.kill()
        server.kill()
    assert run.returncode == 0, err
    assert "reconnecting" in err
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    ids = [r["episode_id"] for r in records]
    assert len(ids) == 6 and len(set(ids)) == 6 and all(r["success"] is not None for r in records)


def test_an_answer_larger_than_the_clients_limit_is_an_error_not_a_chunk():
    """The client takes frames up to the same limit as the server (64 MiB by default, here 1 MiB)."""
    from websockets.sync.server import serve

    def handler(ws):
        ws.send(packb({"action_dim": 7, "chunk_length": 8}))
        for _ in ws:  # 2 MiB of actions for every request
            ws.send(packb({"actions": np.zeros((75_000, 7), np.float32)}))

    port = free_port()
    with serve(handler, "127.0.0.1", port) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        client = RemotePolicy(f"ws://127.0.0.1:{port}", 7, max_message_bytes=1 << 20)
        obs = Observation({"agentview": np.zeros((8, 8, 3), np.uint8)}, np.zeros(8, np.float32), "go")
        with pytest.raises(RemotePolicyError, match="answered with a frame larger than 1 MiB"):
            client.act([obs], ["big@0"])
        server.shutdown()
    assert RemotePolicy("ws://x:1", 7).max_message_bytes == 64 << 20 == int(serve_parser().parse_args(
        ["--ckpt", "demo"]).max_message_mb * 2**20)  # fmt: skip


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
        (["--ckpt", "demo", "--max-prompt-tokens", "0"], "--max-prompt-tokens and --max-image-px at least 1"),
        (["--ckpt", "demo", "--max-image-px", "-5"], "--max-prompt-tokens and --max-image-px at least 1"),
        (["--ckpt", "demo", "--request-timeout", "inf"], "--request-timeout positive (and finite)"),
        (["--policy", "user_policy:NotAPolicy"], "does not implement the Policy contract"),
    ],
)
def test_serve_refuses_bad_input_before_listening(toy_suites, capsys, args, message):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
