"""`asyncvla-eval serve`: one client's request never fails another's, a hung policy call fails
requests until it returns (never entered twice), and start-up errors are one line. Real servers (a thread of this process, or the
command in a subprocess), real websockets clients, real msgpack."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from servers import TESTS, free_port, serve_in_thread, start_serve_process
from websockets.sync.client import connect

from asyncvla import demo_checkpoint
from envs.base import Observation
from evalsuite.cli import main
from evalsuite.errors import UsageError
from evalsuite.policy import PolicySpec
from evalsuite.serving.remote import WireLayout
from evalsuite.serving.server import PolicyWebsocketServer
from evalsuite.serving.wire import packb, unpackb


def request(prompt: str = "put the red block on the blue plate", state_dim: int = 8, **extra) -> dict:
    rng = np.random.default_rng(0)
    return {
        "observation/image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
        "observation/state": np.linspace(-0.5, 0.5, state_dim, dtype=np.float32),
        "prompt": prompt,
        **extra,
    }


def test_a_bad_state_fails_only_its_own_request_not_the_one_batched_with_it():
    """Two clients' requests outstanding at once (the server would batch them: 2 clients, a 1 s
    window), one with a 7-D state: it is refused on its own, the other gets its own actions."""
    server = PolicyWebsocketServer(
        PolicySpec(kind="asyncvla", checkpoint=str(demo_checkpoint())), max_wait_ms=1000
    )
    url = serve_in_thread(server)
    good = request(**{"asyncvla/key": "innocent@0"})
    with connect(url, compression=None) as bad_client, connect(url, compression=None) as good_client:
        metadata = unpackb(bad_client.recv(timeout=10))
        good_client.recv(timeout=10)
        bad_client.send(packb(request(state_dim=7, **{"asyncvla/key": "culprit@0"})))
        good_client.send(packb(good))
        refusal = bad_client.recv(timeout=30)
        answer = unpackb(good_client.recv(timeout=30))
    assert refusal == (
        "bad request: the state under 'observation/state' has 7 numbers; this policy takes 8 "
        "(the metadata's state_dim)"
    )
    images = {"agentview": good["observation/image"], "wrist": good["observation/wrist_image"]}
    expected = server.policy.act(
        [Observation(images, good["observation/state"], good["prompt"])], ["innocent@0"]
    )
    assert answer["actions"].shape == (8, 7) and answer["actions"].dtype == np.float32
    np.testing.assert_array_equal(answer["actions"], expected[0])
    assert metadata["state_dim"] == 8 and metadata["image_size"] == 56


@pytest.mark.parametrize(
    "layout, cameras",
    [
        (None, ["observation/exterior_image_1_left", "observation/exterior_image_2_left", "observation/wrist_image_left"]),
        (
            WireLayout(images={"front": "observation/exterior_image_1_left"}),
            ["front", "observation/exterior_image_2_left", "observation/wrist_image_left"],
        ),
    ],
)  # fmt: skip
def test_a_policy_that_names_no_cameras_gets_every_image_of_the_request(layout, cameras):
    """DROID-style keys, two of them not wrist cameras: each image reaches the policy once, under
    its wire key (or the camera name the layout gives it)."""
    server = PolicyWebsocketServer(PolicySpec(kind="import", factory="serve_policies:ImageMeans"), layout)
    url = serve_in_thread(server)
    message = {
        "observation/exterior_image_1_left": np.full((8, 8, 3), 10, np.uint8),
        "observation/exterior_image_2_left": np.full((8, 8, 3), 20, np.uint8),
        "observation/wrist_image_left": np.full((4, 6, 3), 30, np.uint8),
        "observation/state": np.zeros(3, np.float32),
        "prompt": "go",
    }
    with connect(url, compression=None) as ws:
        metadata = unpackb(ws.recv(timeout=10))
        ws.send(packb(message))
        answer = unpackb(ws.recv(timeout=10))
    assert metadata["image_keys"] == [] and metadata["state_dim"] is None
    assert server.policy.seen == [cameras]
    np.testing.assert_array_equal(answer["actions"][:, 0], [10, 20, 30, 0])


def health(port: int) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_a_hung_policy_call_fails_requests_until_it_returns_and_ctrl_c_stops_the_server():
    """The model is never entered again while a call past its limit is inside it (issue 34, item 9):
    the other client is refused with the reason, /healthz says 503, and Ctrl-C still stops it."""
    port = free_port()
    server = start_serve_process(
        ["--policy", "serve_policies:HangsOnRequest", "--port", str(port), "--policy-timeout", "1"]
    )
    try:
        url = f"ws://127.0.0.1:{port}"
        assert health(port) == (200, "OK\n")
        with connect(url, compression=None) as stuck, connect(url, compression=None) as healthy:
            stuck.recv(timeout=10)
            healthy.recv(timeout=10)
            stuck.send(packb(request("hang")))
            assert stuck.recv(timeout=30) == (
                "policy error: the policy did not answer within 1 s (the server's limit)"
            )
            status, text = health(port)
            assert status == 503 and text.startswith("policy stuck: a call past the 1 s limit"), text
            healthy.send(packb(request("go")))  # not run beside the stuck call: refused at once
            assert healthy.recv(timeout=30).startswith(
                "policy error: the policy is still in a call that outlived the server's 1 s limit"
            )
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=30) == 0, "".join(server.lines[-20:])
    finally:
        server.kill()
        server.wait()


def serve_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "evalsuite.cli", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_port_or_host_serve_cannot_listen_on_is_one_line_and_nothing_says_serving():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = serve_command("--policy", "serve_policies:HangsOnRequest", "--port", str(port))
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}: "):
            # the server's own bind, for a port taken after the command's check
            server = PolicyWebsocketServer(PolicySpec(kind="import", factory="serve_policies:HangsOnRequest"))
            asyncio.run(server.serve("127.0.0.1", port))
    unknown = serve_command("--policy", "serve_policies:HangsOnRequest", "--host", "nosuch.invalid")
    advice = "; choose a free --port and an address of this machine for --host\n"
    assert (busy.returncode, busy.stdout) == (2, "")
    assert (
        busy.stderr
        == f"asyncvla-eval: error: cannot listen on 127.0.0.1:{port}: Address already in use{advice}"
    )
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr.startswith("asyncvla-eval: error: cannot listen on nosuch.invalid:8000: ")
    assert unknown.stderr.endswith(advice) and unknown.stderr.count("\n") == 1


@pytest.mark.parametrize("policy", ["random", "scripted", "ws://127.0.0.1:8000"])
def test_serve_says_which_policies_it_serves(policy, capsys):
    assert main(["serve", "--policy", policy]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"asyncvla-eval: error: serve --policy takes package.module:Class (a Policy class of yours, "
        f"docs/CONTRACTS.md), got {policy!r}; serve AsyncVLA with --ckpt PATH"
    )
    assert err.count("\n") == 1


def test_infer_ms_is_the_policy_call_without_the_wait_for_a_batch():
    """Two clients connected, one asking: its request waits the whole batching window (0.5 s) for a
    partner; infer_ms counts only the policy call, total_ms the wait as well."""
    url = serve_in_thread(PolicyWebsocketServer(PolicySpec(kind="random"), max_wait_ms=500))
    with connect(url, compression=None) as asking, connect(url, compression=None) as idle:
        asking.recv(timeout=10)
        idle.recv(timeout=10)
        start = time.monotonic()
        asking.send(packb(request()))
        timing = unpackb(asking.recv(timeout=30))["server_timing"]
        waited_ms = 1000 * (time.monotonic() - start)
    assert waited_ms >= 500 > timing["infer_ms"] >= 0
    assert waited_ms >= timing["total_ms"] >= 500
