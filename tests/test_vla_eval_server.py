"""`asyncvla-eval serve --protocol vla-eval`: the peer harness vla-eval (0.8.0, the real package)
evaluating an AsyncVLA checkpoint through its own orchestrator and client connection, and one
session's bad or slow request leaving a concurrent session's answers alone."""

from __future__ import annotations

import io
import logging
import threading

import anyio
import msgpack
import numpy as np
import pytest

vla_eval = pytest.importorskip("vla_eval")

from servers import serve_in_thread, start_serve_process  # noqa: E402
from vla_eval.benchmarks.base import StepBenchmark, StepResult  # noqa: E402
from vla_eval.connection import Connection  # noqa: E402
from vla_eval.specs import (  # noqa: E402
    GRIPPER_CLOSE_POS,
    IMAGE_RGB,
    LANGUAGE,
    POSITION_DELTA,
    ROTATION_AA,
    STATE_EEF_POS_AA_GRIP,
)

from asyncvla import demo_checkpoint  # noqa: E402
from envs.base import Observation  # noqa: E402
from evalsuite.cli import main  # noqa: E402
from evalsuite.policy import PolicySpec  # noqa: E402
from evalsuite.serving.vla_eval_server import VlaEvalWebsocketServer  # noqa: E402

STEPS = 12
SENT: dict[str, list] = {}  # episode -> [(observation sent, action received)], filled by TabletopBenchmark


class TabletopBenchmark(StepBenchmark):
    """Our tabletop suite as a vla-eval benchmark (the way its LIBERO benchmark presents LIBERO), for
    vla-eval's own orchestrator; records every observation it sends and the action it gets back."""

    def __init__(
        self, send_wrist_image=False, send_state=False, quat_no_antipodal=False, image_size=56, seed=0
    ):
        super().__init__()
        from envs.tabletop import make_env

        self.send_wrist_image, self.send_state = send_wrist_image, send_state
        self.env = make_env(image_size=image_size)
        self.sent: list = []

    def get_tasks(self):
        from envs.tabletop.tasks import TASKS

        return [
            {"name": t.instruction, "suite": "tabletop", "task_id": i, "task": t.name}
            for i, t in enumerate(TASKS[:2])
        ]

    def reset(self, task):
        self.sent = SENT.setdefault(f"tabletop/{task['task_id']}/{task['name']}/ep{task['episode_idx']}", [])
        return self.env.reset(task["task"], task["episode_idx"], 0)

    def make_obs(self, raw, task):
        obs = {"images": {"agentview": raw.images["agentview"]}, "task_description": raw.instruction}
        if self.send_wrist_image:
            obs["images"]["wrist"] = raw.images["wrist"]
        if self.send_state:
            obs["states"] = raw.state.astype(np.float64)
        self.sent.append([raw, None])
        return obs

    def step(self, action):
        self.sent[-1][1] = np.asarray(action["actions"])
        obs, done, success, info = self.env.step(np.asarray(action["actions"], dtype=np.float64))
        return StepResult(obs=obs, reward=float(success), done=bool(success), info=info)

    def get_step_result(self, step_result):
        return {"success": step_result.done}

    def get_metadata(self):
        return {"max_steps": STEPS}

    def get_action_spec(self):
        return {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS}

    def get_observation_spec(self):
        spec = {"agentview": IMAGE_RGB, "language": LANGUAGE}
        if self.send_wrist_image:
            spec["wrist"] = IMAGE_RGB
        if self.send_state:
            spec["state"] = STATE_EEF_POS_AA_GRIP
        return spec

    def cleanup(self):
        self.env.close()


@pytest.fixture(scope="module")
def demo() -> tuple[VlaEvalWebsocketServer, str]:
    server = VlaEvalWebsocketServer(PolicySpec(kind="asyncvla", checkpoint=str(demo_checkpoint())))
    return server, serve_in_thread(server)


def test_vla_evals_own_orchestrator_evaluates_the_demo_checkpoint(demo, caplog):
    """`vla_eval.api.run` (its orchestrator, its Connection, its sync runner) against our server: its
    HELLO's observation_params make the benchmark send both cameras and the state, the specs pass
    vla-eval's own check, and every action it executed is the demo model's chunk for that episode's
    key, in order, one action per observation, a new chunk every 8 steps."""
    from vla_eval.api import run

    server, url = demo
    config = {
        "benchmarks": [
            {
                "benchmark": "test_vla_eval_server:TabletopBenchmark",
                "episodes_per_task": 1,
                "params": {"seed": 0},
            }
        ]
    }
    SENT.clear()
    with caplog.at_level(logging.INFO, logger="vla_eval"):
        (result,) = run(config, server_url=url, no_save=True)
    assert "Spec validation passed (server↔benchmark compatible)" in caplog.text
    assert "Spec mismatch" not in caplog.text
    assert result["num_errors"] == 0 and [t["num_episodes"] for t in result["tasks"]] == [1, 1]
    assert result["server_info"]["observation_params"] == {
        "send_wrist_image": True,
        "send_state": True,
        "quat_no_antipodal": True,
    }
    assert result["server_info"]["asyncvla"]["chunk_length"] == 8
    assert len(SENT) == 2
    for episode, steps in SENT.items():
        executed = [a for _, a in steps if a is not None]
        assert len(executed) == STEPS
        for start in range(0, STEPS, 8):
            raw = steps[start][0]
            obs = Observation(
                {"agentview": raw.images["agentview"], "wrist": raw.images["wrist"]},
                raw.state,
                raw.instruction,
            )
            chunk = server.policy.act([obs], [f"{episode}@{start}"])[0]
            np.testing.assert_array_equal(
                np.stack(executed[start : start + 8]), chunk[: len(executed[start : start + 8])]
            )


def observation(instruction: str = "put the red block on the blue plate", state_dim: int = 8) -> dict:
    rng = np.random.default_rng(0)
    return {
        "images": {
            "agentview": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
        },
        "states": np.linspace(-0.5, 0.5, state_dim),
        "task_description": instruction,
    }


def as_observation(message: dict) -> Observation:
    return Observation(
        dict(message["images"]), message["states"].astype(np.float32), message["task_description"]
    )


def test_a_bad_request_fails_only_itself_and_each_session_keeps_its_own_chunk(demo):
    """Two vla-eval client connections at once: one sends a 7-D state, then a frame that is not a
    message, then a good observation; the other, meanwhile, two observations. The bad ones are
    answered with errors on their own session, every good one with its own session's chunk."""
    server, url = demo
    good = observation("put the green block on the white plate")

    async def culprit():
        async with Connection(url, timeout=60) as conn:
            await conn.start_episode(
                {"task": {"suite": "t", "task_id": 1, "name": "culprit", "episode_idx": 0}}
            )
            with pytest.raises(
                RuntimeError, match="bad request: the state under 'observation/state' has 7 numbers"
            ):
                await conn.act(observation(state_dim=7))
            await conn._ws.send(b"\xc1 not msgpack")
            reply = await conn.recv(timeout=60)
            assert reply.type.value == "error" and reply.payload["error"].startswith(
                "bad request: not a msgpack message"
            )
            return [(await conn.act(observation()))["actions"] for _ in range(2)]

    async def innocent():
        async with Connection(url, timeout=60) as conn:
            await conn.start_episode(
                {"task": {"suite": "t", "task_id": 2, "name": "innocent", "episode_idx": 0}}
            )
            return [(await conn.act(good))["actions"] for _ in range(2)]

    async def both():
        results = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _store(results, "culprit", culprit()))
            tg.start_soon(lambda: _store(results, "innocent", innocent()))
        return results

    results = anyio.run(both)
    mine = server.policy.act([as_observation(good)], ["t/2/innocent/ep0@0"])[0]
    theirs = server.policy.act([as_observation(observation())], ["t/1/culprit/ep0@0"])[0]
    np.testing.assert_array_equal(np.stack(results["innocent"]), mine[:2])
    np.testing.assert_array_equal(np.stack(results["culprit"]), theirs[:2])  # refused requests are no step


async def _store(results: dict, name: str, coroutine) -> None:
    results[name] = await coroutine


def test_a_slow_request_delays_but_does_not_fail_a_concurrent_one():
    """A session whose observation holds the model (a slow call, released after 1 s) and one whose
    observation arrives meanwhile: both are answered with their own actions."""
    server = VlaEvalWebsocketServer(PolicySpec(kind="import", factory="serve_policies:Gate"))
    url = serve_in_thread(server)
    gate = server.policy.policy
    threading.Timer(1.0, gate.gate.set).start()

    async def ask(instruction: str):
        async with Connection(url, timeout=30) as conn:
            await conn.start_episode({"task": {"name": instruction, "episode_idx": 0}})
            message = observation(instruction)
            return (await conn.act(message))["actions"]

    async def both():
        results = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _store(results, "slow", ask("block")))
            await anyio.to_thread.run_sync(lambda: gate.entered.wait(10))
            tg.start_soon(lambda: _store(results, "other", ask("go")))
        return results

    results = anyio.run(both)
    expected = np.zeros(7, np.float32)
    expected[0] = 0.3
    np.testing.assert_array_equal(results["slow"], expected)
    np.testing.assert_array_equal(results["other"], expected)
    assert gate.most_inside == 1  # never entered twice


def _png(height: int, width: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image, refusal",
    [
        ({"__image__": True, "format": "png", "data": _png(8, 8), "shape": [50000, 50000, 3]},
         "an image of 50000x50000 pixels; this side takes at most 2048 a side"),
        ({"__image__": True, "format": "png", "data": _png(3000, 3000), "shape": [56, 56, 3]},
         "the png image's header says PNG 3000x3000; the message declares png 56x56"),
        ({"__ndarray__": True, "data": b"\0" * 10, "dtype": "|O", "shape": [10]}, "refused an array of dtype object; arrays are bool, integer or float"),
    ],
)  # fmt: skip
def test_an_image_is_refused_by_its_declared_size_and_its_header_before_it_is_decompressed(
    demo, image, refusal
):
    from websockets.sync.client import connect

    _, url = demo
    payload = {"images": {"agentview": image}, "states": np.zeros(8).tolist(), "task_description": "x"}
    frame = msgpack.packb(
        {"type": "observation", "payload": payload, "seq": 7, "timestamp": 0.0}, use_bin_type=True
    )
    with connect(url, compression=None) as ws:
        ws.send(frame)
        reply = msgpack.unpackb(ws.recv(timeout=30))
    assert reply["type"] == "error" and reply["payload"]["error"] == f"bad request: {refusal}"


def test_serve_protocol_vla_eval_listens_and_answers_vla_evals_health_probe(tmp_path):
    import http.client

    from servers import free_port

    port = free_port()
    proc = start_serve_process(
        ["--ckpt", "demo", "--protocol", "vla-eval", "--port", str(port), "--replan-steps", "4"]
    )
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b'{"status": "ok"}\n'

        async def hello():
            async with Connection(f"ws://127.0.0.1:{port}", timeout=30) as conn:
                return conn.server_info

        info = anyio.run(hello)
        assert info["protocol_version"] == 1 and info["asyncvla"]["replan_steps"] == 4
        assert info["action_spec"]["rotation"] == ROTATION_AA.to_dict()
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--replan-steps", "4"], "--replan-steps: an openpi client gets the whole chunk"),
        (["--protocol", "vla-eval", "--replan-steps", "0"], "--replan-steps 0: at least 1"),
        (
            ["--protocol", "vla-eval", "--remote-layout", '{"state": "s"}'],
            "--remote-layout state: vla-eval's",
        ),
        (["--protocol", "vla-eval", "--replan-steps", "9"], "the policy predicts chunks of 8 actions"),
    ],
)
def test_options_of_the_other_protocol_are_refused_in_one_line(args, message, capsys):
    from servers import free_port

    assert main(["serve", "--ckpt", "demo", "--port", str(free_port()), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
