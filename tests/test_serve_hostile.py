"""`asyncvla-eval serve` against hostile or careless clients and a stuck model (issue 34, items
8-11): huge prompts and images are refused at the boundary and leave the server's memory and its
other clients alone; a model stuck past `--policy-timeout` is never entered again until its call
returns; a request whose client left, or that waited past `--request-timeout`, costs nothing more;
an absurd state is refused naming the client's value. Real servers (a thread of this process, or
the command in a subprocess), real websockets clients."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import psutil
import pytest
from servers import free_port, serve_in_thread, start_serve_process
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from asyncvla import demo_checkpoint
from evalsuite.policy import PolicySpec
from evalsuite.serving.server import PolicyWebsocketServer
from evalsuite.serving.wire import packb, unpackb


def message(prompt: str = "put the red block on the blue plate", key: str | None = None, **extra) -> bytes:
    rng = np.random.default_rng(0)
    fields = {
        "observation/image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
        "observation/state": np.linspace(-0.05, 0.05, 8, dtype=np.float32),
        "prompt": prompt,
        **({"asyncvla/key": key} if key else {}),
        **extra,
    }
    return packb(fields)


def health(url: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@contextmanager
def clients(url: str, n: int) -> Iterator[list]:
    """`n` websocket clients of `url`, each past the metadata message."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(connect(url, compression=None, max_size=None)) for _ in range(n)]
        for ws in sockets:
            unpackb(ws.recv(timeout=10))
        yield sockets


def server_metadata(url: str) -> dict:
    with connect(url, compression=None) as ws:
        return unpackb(ws.recv(timeout=10))


def gate_server(**kwargs) -> tuple[PolicyWebsocketServer, str]:
    server = PolicyWebsocketServer(PolicySpec(kind="import", factory="serve_policies:Gate"), **kwargs)
    return server, serve_in_thread(server)


@pytest.fixture(scope="module")
def demo_server() -> tuple[PolicyWebsocketServer, str]:
    server = PolicyWebsocketServer(
        PolicySpec(kind="asyncvla", checkpoint=str(demo_checkpoint())), max_prompt_tokens=32
    )
    return server, serve_in_thread(server)


# item 8: the prompt and the images are bounded at the boundary


def test_a_prompt_or_an_image_beyond_the_limits_is_a_bad_request_naming_the_limit_and_the_value(demo_server):
    server, url = demo_server
    tokenizer = server.policy.preprocessor.tokenizer
    words = "put the red block on the blue plate then push the green cube left " * 4
    ids = tokenizer(words.strip(), add_special_tokens=False)["input_ids"]
    at_limit = tokenizer.decode(ids[:32])
    assert len(ids) > 32 and len(tokenizer(at_limit.strip(), add_special_tokens=False)["input_ids"]) == 32
    replies = []
    with clients(url, 1) as (ws,):
        for frame in (
            message(words),
            message("x" * 10_000_000),  # never tokenized: far more characters than 32 tokens can hold
            message(**{"observation/image": np.zeros((8, 2049, 3), np.uint8)}),
            message(at_limit),
        ):
            ws.send(frame)
            replies.append(ws.recv(timeout=30))
    assert replies[0] == (
        f"bad request: the prompt under 'prompt' is {len(ids)} tokens long (the checkpoint's tokenizer); "
        "this server takes at most 32 (--max-prompt-tokens)"
    )
    assert replies[1].startswith(
        "bad request: the prompt under 'prompt' has 10000000 characters, more than 32 tokens can hold"
    )
    assert replies[2] == (
        "bad request: the image under 'observation/image' is 8x2049 pixels; this server takes at most "
        "2048 a side (--max-image-px)"
    )
    assert unpackb(replies[3])["actions"].shape == (8, 7)


def test_a_policy_without_a_tokenizer_takes_prompts_of_four_characters_a_token():
    _, url = gate_server(max_prompt_tokens=8)
    with clients(url, 1) as (ws,):
        ws.send(message("x" * 33))
        refusal = ws.recv(timeout=10)
        ws.send(message("x" * 32))
        answer = unpackb(ws.recv(timeout=10))
    assert refusal == (
        "bad request: the prompt under 'prompt' has 33 characters, more than 8 tokens can hold (4 "
        "characters each: the policy has no tokenizer the server knows); this server takes at most 8 "
        "(--max-prompt-tokens)"
    )
    assert answer["actions"].shape == (4, 7)


def test_huge_prompts_neither_grow_the_servers_memory_nor_delay_its_other_clients():
    """Five attackers send prompts of 3,900 characters (counted by the tokenizer: 3,899 tokens, seconds
    of quadratic attention each on this model, were they computed), of 20,000 (a minute or more) and
    of 16 MB, each as fast as it is answered, while another client asks for chunks: every answer it
    gets comes within seconds, and the server's memory (`asyncvla-eval serve --ckpt demo` in a
    subprocess) stays within 150 MB of its use before."""
    port = free_port()
    server = start_serve_process(["--ckpt", "demo", "--port", str(port), "--max-prompt-tokens", "200"])
    url = f"ws://127.0.0.1:{port}"
    process = psutil.Process(server.pid)
    stop = threading.Event()
    peak, refused, errors, waits = [0], [0], [], []

    def watch(baseline: int) -> None:  # past 2 GB more the server is killed; the assertions say why
        while not stop.is_set():
            peak[0] = max(peak[0], rss := process.memory_info().rss)
            if rss > baseline + 2 * 2**30:
                server.kill()
                return
            time.sleep(0.02)

    def attack(prompt: str) -> None:
        with clients(url, 1) as (ws,):
            while not stop.is_set():
                ws.send(message(prompt))
                reply = ws.recv(timeout=120)
                if (
                    isinstance(reply, str)
                    and reply.startswith("bad request: the prompt under 'prompt'")
                    and (reply.endswith("this server takes at most 200 (--max-prompt-tokens)"))
                ):
                    refused[0] += 1
                else:
                    errors.append(repr(reply)[:200])

    try:
        with clients(url, 1) as (bystander,):
            assert server_metadata(url)["max_prompt_tokens"] == 200
            for _ in range(3):  # warm: the first calls allocate what every later one reuses
                bystander.send(message())
                assert unpackb(bystander.recv(timeout=60))["actions"].shape == (8, 7)
            baseline = process.memory_info().rss
            threads = [threading.Thread(target=watch, args=(baseline,), daemon=True)]
            threads += [
                threading.Thread(target=attack, args=(prompt,), daemon=True)
                for prompt in ("go " * 1300, "go " * 6700, "push it " * 2500, "x" * 20_000, "y" * 16_000_000)
            ]
            for t in threads:
                t.start()
            try:
                for step in range(10):
                    start = time.monotonic()
                    bystander.send(message(key=f"bystander@{step}"))
                    assert unpackb(bystander.recv(timeout=20))["actions"].shape == (8, 7)
                    waits.append(time.monotonic() - start)
                    time.sleep(0.2)
            except (ConnectionClosed, TimeoutError) as e:
                killed = " and was killed" if server.poll() is not None else ""
                raise AssertionError(
                    f"the bystander's request {len(waits)} got no answer ({type(e).__name__}); the server "
                    f"grew by {(peak[0] - baseline) / 2**20:.0f} MB{killed}"
                ) from e
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=130)
        grew_mb = (peak[0] - baseline) / 2**20
        print(
            f"RSS {baseline / 2**20:.0f} MB before the attack, at most +{grew_mb:.1f} MB during it; "
            f"{refused[0]} attacks refused; the bystander's longest wait {max(waits):.3f} s"
        )
        assert not errors, errors
        assert refused[0] >= 8 and max(waits) < 3, (refused, waits)
        assert grew_mb < 150, (baseline / 2**20, grew_mb)
    finally:
        stop.set()
        server.kill()
        server.wait()


# item 9: a stuck model is never entered twice


def test_a_stuck_model_is_not_entered_again_until_its_call_returns():
    """A call outlives its 0.5 s limit: its request fails; three clients asking at once while it is
    stuck are refused with the reason and /healthz says 503; once the call returns they are served.
    The model never had two calls inside it."""
    server, url = gate_server(max_wait_ms=1, act_timeout_s=0.5)
    policy = server.policy
    with clients(url, 4) as (stuck, *others):
        stuck.send(message("block", key="stuck@0"))
        assert stuck.recv(timeout=10) == (
            "policy error: the policy did not answer within 0.5 s (the server's limit)"
        )
        for i, ws in enumerate(others):
            ws.send(message(key=f"other{i}@0"))
        replies = [ws.recv(timeout=10) for ws in others]
        status, text = health(url)
        assert policy.keys == ["stuck@0"]
        policy.gate.set()  # the stuck call returns
        deadline = time.monotonic() + 10
        while health(url)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert health(url) == (200, "OK\n")
        for i, ws in enumerate(others):
            ws.send(message(key=f"other{i}@1"))
        answers = [unpackb(ws.recv(timeout=10))["actions"] for ws in others]
    refusal = "policy error: the policy is still in a call that outlived the server's 0.5 s limit"
    assert all(isinstance(r, str) and r.startswith(refusal) for r in replies), replies
    assert status == 503 and text.startswith("policy stuck: a call past the 0.5 s limit has been running")
    assert all((a[:, 0] == np.float32(0.3)).all() for a in answers)
    assert policy.most_inside == 1
    assert sorted(policy.keys[1:]) == ["other0@1", "other1@1", "other2@1"]


# item 10: a request's share of the work ends with its client, and its wait is bounded


def test_a_request_whose_client_left_before_its_batch_ran_is_never_computed():
    server, url = gate_server(max_wait_ms=1)
    policy = server.policy
    with clients(url, 3) as (busy, leaving, late):
        busy.send(message("block", key="busy@0"))
        assert policy.entered.wait(10)
        leaving.send(message(key="leaving@0"))  # queued behind the call in progress
        time.sleep(0.2)
        leaving.close()
        time.sleep(0.2)
        policy.gate.set()
        assert unpackb(busy.recv(timeout=10))["actions"].shape == (4, 7)
        late.send(message(key="late@0"))
        assert unpackb(late.recv(timeout=10))["actions"].shape == (4, 7)
    assert policy.keys == ["busy@0", "late@0"]


def test_a_request_is_answered_within_the_request_timeout_while_a_slow_call_runs():
    server, url = gate_server(max_wait_ms=1, request_timeout_s=1.0)
    policy = server.policy
    with clients(url, 2) as (busy, waiting):
        busy.send(message("block", key="busy@0"))
        assert policy.entered.wait(10)
        start = time.monotonic()
        waiting.send(message(key="waiting@0"))
        reply = waiting.recv(timeout=10)
        waited = time.monotonic() - start
        busy_reply = busy.recv(timeout=10)  # the slow call's own request is past its time, too
        policy.gate.set()
        waiting.send(message(key="after@0"))
        assert unpackb(waiting.recv(timeout=10))["actions"].shape == (4, 7)
    assert (
        reply
        == busy_reply
        == (
            "policy error: the request was not answered within 1 s (the server's --request-timeout): "
            "policy calls run one at a time, and those ahead of it or its own took longer"
        )
    )
    assert 0.9 < waited < 2.5, waited
    assert policy.keys == ["busy@0", "after@0"]  # the request that gave up was never computed


# item 11: the client's state, not the checkpoint, is named


@pytest.mark.parametrize(
    "state, value",
    [
        (np.float32(1e38), "1e+38"),  # finite in float32, overflows once normalised
        (np.float64(1e300), "1e+300"),  # overflows float32 itself
        (np.float32(1e20), "1e+20"),  # finite all the way, absurd
        (np.float32("nan"), "nan"),
        (np.float64("-inf"), "-inf"),
    ],
)
def test_an_absurd_or_non_finite_state_is_refused_naming_the_clients_value(demo_server, state, value):
    _, url = demo_server
    sent = np.zeros(8, dtype=np.asarray(state).dtype)
    sent[3] = state
    with clients(url, 1) as (ws,):
        ws.send(message(**{"observation/state": sent}))
        reply = ws.recv(timeout=30)
        ws.send(message(**{"observation/state": np.full(8, 3.0, np.float32)}))  # far out, but a state
        answered = ws.recv(timeout=30)
    assert isinstance(reply, str) and reply.startswith(
        f"bad request: the state under 'observation/state' has {value} at index 3"
    ), reply
    assert "re-export" not in reply
    assert unpackb(answered)["actions"].shape == (8, 7)
