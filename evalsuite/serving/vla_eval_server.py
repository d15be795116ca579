"""`asyncvla-eval serve --protocol vla-eval`: a policy behind the peer harness vla-eval's model-server
protocol (0.8.0), so that `vla-eval run --server-url ws://HOST:PORT` evaluates it on vla-eval's
benchmarks.

A connection is a session, as in vla-eval's own `serve`: the client sends HELLO and gets ours
(versions, the `observation_params` its benchmark should send us, our observation and action
specs); EPISODE_START begins an episode (the chunk buffer is emptied); each OBSERVATION is answered
with one ACTION `{"actions": float32 [action_dim]}`, echoing its `seq`. The policy is asked for a
chunk when the session's buffer is empty and the chunk's first `replan_steps` actions (all by
default) answer the observations that follow, as vla-eval's `PredictModelServer(chunk_size=...)`
does; EPISODE_END empties the buffer.

Everything the openpi path guarantees holds here, by the same code (`PolicyWebsocketServer`): an
observation is checked on its own before it joins a batch (images, a finite state of the policy's
`state_dim`, the prompt and image limits; an image's declared size is checked before it is
decompressed), requests from all sessions are batched by the same `BatchingPolicyServer`, a
request is answered within `--request-timeout` or with an error, a stuck model is never entered
twice. A request that cannot be served is answered with an ERROR `{"error": "bad request: ..."}`
or `{"error": "policy error: ..."}` (vla-eval's client raises it, its orchestrator records the
episode as an error) and the session goes on. A chunk's request key is the episode (its task and
`episode_idx` from EPISODE_START) and the step, so an AsyncVLA server draws the same noise for the
same episode whichever connection or batch carries it.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import json
import logging
import time
from collections import deque
from typing import Any

import numpy as np

from evalsuite.serving.server import PolicyWebsocketServer
from evalsuite.serving.vla_eval_client import harness_version
from evalsuite.serving.vla_eval_suites import (
    GRIPPER_CLOSE_POS,
    IMAGE_RGB,
    LANGUAGE,
    POSITION_DELTA,
    ROTATION_AA,
    STATE_EEF_POS_AA_GRIP,
)
from evalsuite.serving.vla_eval_wire import PROTOCOL_VERSION, Message, pack, unpack
from evalsuite.serving.wire import WireError

log = logging.getLogger(__name__)


class _Session:
    """One connection: its episode, the actions left of its current chunk, its step."""

    def __init__(self, name: str):
        self.name = name
        self.episode = f"{name}/episode-0"
        self.buffer: deque[np.ndarray] = deque()
        self.step = 0

    def start(self, payload: dict, count: int) -> None:
        task = payload.get("task") if isinstance(payload.get("task"), dict) else {}
        parts = [task.get(k) for k in ("suite", "task_id", "name") if task.get(k) is not None]
        episode = task.get("episode_idx")
        self.episode = (
            "/".join(map(str, parts)) + f"/ep{episode}"
            if parts and episode is not None
            else f"{self.name}/episode-{count}"
        )
        self.buffer.clear()
        self.step = 0


class VlaEvalWebsocketServer(PolicyWebsocketServer):
    """`PolicyWebsocketServer`'s policy, batching, checks and limits behind vla-eval's protocol."""

    def __init__(self, *args, replan_steps: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.replan_steps = replan_steps or int(self.policy.chunk_length)
        if self.replan_steps > self.policy.chunk_length:
            from evalsuite.errors import UsageError

            raise UsageError(
                f"--replan-steps {self.replan_steps}: the policy predicts chunks of {self.policy.chunk_length} "
                f"actions; use {self.policy.chunk_length} or fewer"
            )
        self.sessions = itertools.count()
        self.hello = self._hello()

    def _hello(self) -> dict[str, Any]:
        """Our HELLO: vla-eval's fields, and this server's own metadata (the openpi path's)."""
        cameras = self.cameras or ["agentview"]
        observation_spec = {camera: IMAGE_RGB for camera in cameras}
        observation_spec["language"] = LANGUAGE
        if self.state_dim == 8:
            observation_spec["state"] = STATE_EEF_POS_AA_GRIP
        elif self.state_dim:
            observation_spec["state"] = {"name": "state", "dims": self.state_dim, "format": "raw"}
        hello = {
            "harness_version": harness_version(),
            "protocol_version": PROTOCOL_VERSION,
            "model_server": f"asyncvla-eval serve ({self.metadata['policy']})",
            "capabilities": {},
            # what vla-eval's orchestrator merges into its benchmark's options: our cameras and state,
            # and robosuite's axis-angle (LIBERO's demos', which AsyncVLA is trained on: docs/libero.md)
            "observation_params": {
                "send_wrist_image": any("wrist" in c for c in cameras),
                "send_state": bool(self.state_dim),
                "quat_no_antipodal": True,
            },
            "observation_spec": observation_spec,
            "asyncvla": {**self.metadata, "replan_steps": self.replan_steps},
        }
        if self.metadata["action_dim"] == 7:
            hello["action_spec"] = {
                "position": POSITION_DELTA,
                "rotation": ROTATION_AA,
                "gripper": GRIPPER_CLOSE_POS,
            }
        return hello

    async def handle(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        self._clients_changed(+1)
        peer = websocket.remote_address
        session = _Session(f"session-{next(self.sessions)}")
        episodes = itertools.count(1)
        log.info("client %s connected (%s)", peer, session.name)
        try:
            while True:
                frame = await websocket.recv()
                received = time.monotonic()
                try:  # off the event loop: decoding a PNG must not hold up the other sessions
                    message = await asyncio.to_thread(unpack, frame, self.limits.max_image_px)
                except WireError as e:  # not a message: the seq it carried is unknown
                    await self._send(websocket, "error", {"error": f"bad request: {e}"}, 0)
                    continue
                if message.type == "hello":
                    await self._send(websocket, "hello", self.hello, message.seq)
                elif message.type == "episode_start":
                    session.start(message.payload, next(episodes))
                elif message.type == "episode_end":
                    session.buffer.clear()
                elif message.type == "observation":
                    if not await self._observation(websocket, session, message, received):
                        log.info("client %s went away while its request was in the policy", peer)
                        return
                else:  # action / error from a client: nothing to answer
                    log.info("client %s sent %s: %s", peer, message.type, str(message.payload)[:200])
        except ConnectionClosed as e:
            log.info("client %s disconnected (%s)", peer, e.rcvd.code if e.rcvd else "no close frame")
        finally:
            self._clients_changed(-1)

    async def _observation(self, websocket, session: _Session, message: Message, received: float) -> bool:
        """Answer one OBSERVATION (an ACTION, or an ERROR); False when the client left meanwhile."""
        step = session.step  # counts answered observations, as vla-eval's SessionContext.step does
        if not session.buffer:
            try:  # checked on its own, before it joins a batch: a bad request fails nobody else
                obs, _ = self.checked(self._as_openpi(message.payload))
            except Exception as e:  # the client's mistake: say so, keep serving
                text = e if isinstance(e, WireError) else f"{type(e).__name__}: {e}"
                await self._send(websocket, "error", {"error": f"bad request: {text}"}, message.seq)
                return True
            try:
                answered = await self._act(websocket, obs, f"{session.episode}@{step}")
            except Exception as e:  # the policy failed on this request (or on its own, alone)
                from evalsuite.serving.server import _text

                await self._send(websocket, "error", {"error": f"policy error: {_text(e)}"}, message.seq)
                return True
            if answered is None:
                return False
            chunk, _ = answered
            session.buffer.extend(np.asarray(chunk, dtype=np.float32)[: self.replan_steps])
        action = session.buffer.popleft()
        session.step += 1
        await self._send(websocket, "action", {"actions": action, "server_timing": {"total_ms": 1000 * (time.monotonic() - received)}}, message.seq)  # fmt: skip
        return True

    def _as_openpi(self, payload: dict) -> dict:
        """vla-eval's observation as the openpi-style map the shared checks read: each image under
        its camera's wire key, `states` (or `state`) and `task_description`."""
        images = payload.get("images")
        if not isinstance(images, dict):
            raise WireError(
                f"an observation carries its images as a map under 'images'; got keys {sorted(map(str, payload))}"
            )
        message: dict[str, Any] = {}
        wanted = self.cameras or list(images)
        keys = self.layout.image_keys(wanted) if self.cameras else {c: c for c in wanted}
        for camera in wanted:
            name = self.layout.images.get(camera, camera)
            if name not in images:
                raise WireError(
                    f"camera {camera!r} expects an image under images[{name!r}]; the observation has images "
                    f"{sorted(map(str, images))} (the benchmark's send_wrist_image?)"
                )
            message[keys[camera]] = images[name]
        state = payload.get("states", payload.get("state"))
        if state is None and self.state_dim:
            raise WireError(
                f"the observation has no 'states'; this policy takes a {self.state_dim}-D state (the benchmark's "
                "send_state, which this server's HELLO asks for in observation_params)"
            )
        prompt = payload.get("task_description")
        if not isinstance(prompt, str):
            raise WireError(f"the observation has no text 'task_description' (got {type(prompt).__name__})")
        message[self.layout.state] = np.zeros(0, np.float32) if state is None else state
        message[self.layout.prompt] = prompt
        return message

    async def _send(self, websocket, kind: str, payload: dict, seq: int) -> None:
        await websocket.send(pack(Message(kind, payload, seq), image_format="raw"))

    def _health_check(self, connection, request):
        """vla-eval's readiness probe (`GET /health`) as well as ours (`/healthz`)."""
        if request.path == "/health":
            stuck = self.batcher.stuck_s()
            status = http.HTTPStatus.OK if stuck is None else http.HTTPStatus.SERVICE_UNAVAILABLE
            body = {"status": "ok"} if stuck is None else {"status": f"policy stuck for {stuck:.0f} s"}
            return connection.respond(status, json.dumps(body) + "\n")
        return super()._health_check(connection, request)
