"""`asyncvla-eval serve`: a policy (an AsyncVLA checkpoint or `module:Class`) behind openpi's
websocket protocol, batching the requests of all connected clients.

    asyncvla-eval serve --ckpt CKPT [--mode asyncvla] [--host 127.0.0.1] [--port 8000]

On connect a client receives the metadata map (action_dim, chunk_length, the image, state, prompt
and action keys the server reads and writes); then each binary frame is an observation map and the
answer is {"actions": float32 [L, A], "server_timing": {...}}. A request that cannot be served (not
msgpack, a missing key, an array of the wrong type, the policy failing) is answered with a text
frame holding the error, openpi's convention, and the connection stays open; a frame larger than
`--max-message-mb` closes that connection (websockets' 1009). Other clients are never affected.
Concurrent requests are batched by the same `BatchingPolicyServer` the Ray runner uses.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import logging
import time
from typing import Any

import numpy as np

from evalsuite.errors import ArgumentParser, UsageError
from evalsuite.policy import PolicySpec
from evalsuite.policy_server import BatchingPolicyServer
from evalsuite.remote import WireLayout
from evalsuite.wire import WireError, packb, unpackb

log = logging.getLogger(__name__)


class PolicyWebsocketServer:
    def __init__(
        self,
        spec: PolicySpec,
        layout: WireLayout | None = None,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_message_bytes: int = 64 << 20,
    ):
        self.batcher = BatchingPolicyServer(spec, max_batch, max_wait_ms, clients=1)
        self.policy = self.batcher.policy
        self.layout = layout or WireLayout()
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        model = getattr(self.policy, "model", None)  # an AsyncVLA policy names its cameras in its config
        self.cameras = (
            list(model.cfg.cameras) if model is not None else list(getattr(self.policy, "cameras", []))
        )
        self.connections = 0
        self.requests = itertools.count()
        self.metadata = {
            "server": "asyncvla-eval",
            "policy": spec.kind,
            "mode": spec.mode if spec.kind == "asyncvla" else None,
            "action_dim": int(self.policy.action_dim),
            "chunk_length": int(self.policy.chunk_length),
            "image_keys": list(self.layout.image_keys(self.cameras).values()),
            "cameras": self.layout.image_keys(self.cameras),
            "state_key": self.layout.state,
            "prompt_key": self.layout.prompt,
            "actions_key": self.layout.actions,
            "request_key": self.layout.key,
        }

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        from websockets.asyncio.server import serve

        async with serve(
            self.handle,
            host,
            port,
            compression=None,
            max_size=self.max_message_bytes,
            process_request=_health_check,
        ) as server:
            log.info("serving %s on ws://%s:%d", self.metadata["policy"], host, port)
            if ready is not None:
                ready.set()
            await server.serve_forever()

    def _clients_changed(self, delta: int) -> None:
        # a batch is complete when every connected client is waiting (or max_batch have arrived)
        self.connections += delta
        self.batcher.full_batch = max(1, min(self.max_batch, self.connections))

    async def handle(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        self._clients_changed(+1)
        peer = websocket.remote_address
        log.info("client %s connected", peer)
        try:
            await websocket.send(packb(self.metadata))
            while True:
                frame = await websocket.recv()
                start = time.monotonic()
                try:
                    answer = await self._answer(frame)
                except (WireError, ValueError) as e:  # the client's mistake: say so, keep serving
                    await websocket.send(f"bad request: {e}")
                    continue
                except Exception as e:  # the policy failed on this request
                    log.exception("policy error for %s", peer)
                    await websocket.send(f"policy error: {type(e).__name__}: {e}")
                    continue
                answer["server_timing"] = {"infer_ms": 1000 * (time.monotonic() - start)}
                await websocket.send(packb(answer))
        except ConnectionClosed as e:
            log.info("client %s disconnected (%s)", peer, e.rcvd.code if e.rcvd else "no close frame")
        finally:
            self._clients_changed(-1)

    async def _answer(self, frame: Any) -> dict:
        message = unpackb(frame)  # WireError for a text frame or anything not msgpack
        obs, key = self.layout.from_wire(message, self.cameras or _cameras_in(message))
        if key is None:  # an openpi client sends no key: draws then depend on the request order
            key = f"request-{next(self.requests)}@0"
        chunk = await self.batcher.act(obs, key)
        return {self.layout.actions: np.asarray(chunk, dtype=np.float32)}


def _cameras_in(message: dict) -> list[str]:
    """A policy that names no cameras gets every image the message carries, under its wire key."""
    return [k for k, v in message.items() if isinstance(v, np.ndarray) and v.ndim == 3]


def _health_check(connection, request):
    """GET /healthz answers 200 (openpi's servers do the same), for load balancers and scripts."""
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


def serve_parser() -> ArgumentParser:
    p = ArgumentParser(prog="asyncvla-eval serve", description=__doc__.split("\n\n")[0])
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--ckpt", help="AsyncVLA checkpoint directory, or 'demo'")
    who.add_argument("--policy", help="package.module:Class implementing the Policy contract")
    p.add_argument("--mode", default="asyncvla", choices=["asyncvla", "sfm", "random-mask"])
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-message-mb", type=float, default=64.0, help="largest request accepted")
    p.add_argument("--remote-layout", help="JSON: the wire keys (evalsuite.remote.WireLayout)")
    return p


def cmd_serve(argv: list[str]) -> int:
    from evalsuite.cli import resolve_checkpoint
    from evalsuite.validate import check_checkpoint_for, resolve_device

    args = serve_parser().parse_args(argv)
    if not 0 < args.port < 65536 or args.max_batch < 1 or args.max_message_mb <= 0:
        raise UsageError("--port must be 1-65535, --max-batch at least 1, --max-message-mb positive")
    try:
        layout = WireLayout.parse(args.remote_layout)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e
    device = resolve_device(args.device, None)
    if args.ckpt:
        checkpoint = resolve_checkpoint(args.ckpt)
        check_checkpoint_for(checkpoint, [], args.mode)
        spec = PolicySpec(
            kind="asyncvla", checkpoint=checkpoint, mode=args.mode, threshold=args.threshold, device=device
        )
    else:
        spec = PolicySpec(kind="import", factory=args.policy, device=device)
    server = PolicyWebsocketServer(
        spec, layout, args.max_batch, args.max_wait_ms, int(args.max_message_mb * (1 << 20))
    )
    print(f"serving on ws://{args.host}:{args.port} (metadata: {server.metadata})", flush=True)
    try:
        asyncio.run(server.serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0
