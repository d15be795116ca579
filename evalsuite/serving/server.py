"""`asyncvla-eval serve`: a policy (an AsyncVLA checkpoint or `module:Class`) behind openpi's
websocket protocol, batching the requests of all connected clients.

    asyncvla-eval serve --ckpt CKPT [--mode asyncvla] [--host 127.0.0.1] [--port 8000] [--protocol openpi]

(`--protocol vla-eval` serves the same policy, batching, checks and limits behind vla-eval's
model-server protocol instead: `evalsuite.serving.vla_eval_server`.)

On connect a client receives the metadata map (action_dim, chunk_length, state_dim, image_size, the
image, state, prompt and action keys the server reads and writes, the request limits); then each
binary frame is an observation map and the answer is {"actions": float32 [L, A], "server_timing":
{...}}. A request that cannot be served (not msgpack, a missing key, an array of the wrong type or
size, a prompt longer than `--max-prompt-tokens`, an image larger than `--max-image-px`, a state
that is not finite or lies absurdly far from the training data, the policy failing on it) is
answered with a text frame holding the error, openpi's convention, and the connection stays open;
a frame larger than `--max-message-mb` closes that connection (websockets' 1009). Other clients
are never affected: a request is checked before it joins a batch, a failed batch is run again one
request at a time, and a policy call past `--policy-timeout` fails only its own batch
(`evalsuite.serving.policy_server`). Concurrent requests are batched by the same
`BatchingPolicyServer` the Ray runner uses; its calls run one at a time, so a request is answered
within `--request-timeout` or with an error, and one whose client leaves before its batch runs is
never computed.
"""

from __future__ import annotations

import asyncio
import functools
import http
import itertools
import logging
import math
import re
import time
from typing import Any

import numpy as np

from envs.base import Observation
from evalsuite.errors import ArgumentParser, UsageError
from evalsuite.eval_args import resolve_checkpoint
from evalsuite.policy import PolicySpec
from evalsuite.serving.limits import MAX_IMAGE_PX, MAX_PROMPT_TOKENS, RequestLimits
from evalsuite.serving.policy_server import BatchingPolicyServer, PolicyTimeout
from evalsuite.serving.remote import MAX_MESSAGE_BYTES, WireLayout
from evalsuite.serving.wire import WireError, packb, unpackb
from evalsuite.validate import check_checkpoint_for, resolve_device

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = 90.0  # past one call's default limit, before the harness's client gives up (120 s)


class RequestTimeout(RuntimeError):
    """A request was not answered within the server's `--request-timeout`."""


class PolicyWebsocketServer:
    def __init__(
        self,
        spec: PolicySpec,
        layout: WireLayout | None = None,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        act_timeout_s: float | None = 60.0,
        request_timeout_s: float | None = REQUEST_TIMEOUT_S,
        max_prompt_tokens: int = MAX_PROMPT_TOKENS,
        max_image_px: int = MAX_IMAGE_PX,
    ):
        self.batcher = BatchingPolicyServer(
            spec, max_batch, max_wait_ms, clients=1, act_timeout_s=act_timeout_s
        )
        self.policy = self.batcher.policy
        self.layout = layout or WireLayout()
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.act_timeout_s = act_timeout_s
        self.request_timeout_s = request_timeout_s  # None: a request may wait as long as the calls ahead
        self.limits = RequestLimits.for_policy(self.policy, max_prompt_tokens, max_image_px)
        model = getattr(self.policy, "model", None)  # an AsyncVLA policy: what it reads is in its config
        cfg = getattr(model, "cfg", None)
        # None: a policy that names no cameras gets every image of a request (WireLayout.from_wire)
        self.cameras = (
            list(cfg.cameras) if cfg is not None else list(getattr(self.policy, "cameras", [])) or None
        )
        self.state_dim = (
            cfg.state_dim if cfg is not None else _positive_int(getattr(self.policy, "state_dim", None))
        )
        image_size = (
            cfg.image_size if cfg is not None else _positive_int(getattr(self.policy, "image_size", None))
        )
        self.connections = 0
        self.requests = itertools.count()
        image_keys = self.layout.image_keys(self.cameras or [])
        self.metadata = {
            "server": "asyncvla-eval",
            "policy": spec.kind,
            "mode": spec.mode if spec.kind == "asyncvla" else None,
            "action_dim": int(self.policy.action_dim),
            "chunk_length": int(self.policy.chunk_length),
            "state_dim": self.state_dim,  # None: not checked here, the policy's own business
            "image_size": image_size,  # square images the policy was trained at (None: any)
            "image_keys": list(image_keys.values()),
            "cameras": image_keys,
            "state_key": self.layout.state,
            "prompt_key": self.layout.prompt,
            "actions_key": self.layout.actions,
            "request_key": self.layout.key,
            "max_prompt_tokens": max_prompt_tokens,
            "max_image_px": max_image_px,
            "request_timeout_s": request_timeout_s,
        }

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        """Listen until cancelled (Ctrl-C); a port or host it cannot listen on is a `UsageError`."""
        from websockets.asyncio.server import serve

        try:
            server = await serve(
                self.handle,
                host,
                port,
                compression=None,
                max_size=self.max_message_bytes,
                max_queue=2,  # frames read ahead per connection: an openpi client sends one and waits
                process_request=self._health_check,
            )
        except OSError as e:  # busy port, unknown host, a port below 1024 without the right
            raise UsageError(
                f"cannot listen on {host}:{port}: {e.strerror or e}; choose a free --port and an address "
                "of this machine for --host"
            ) from e
        async with server:
            log.info(
                "serving %s on ws://%s:%d (metadata: %s)", self.metadata["policy"], host, port, self.metadata
            )
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
                received = time.monotonic()
                try:  # checked on its own, before it joins a batch: a bad request fails nobody else
                    obs, key = self._request(frame)
                except Exception as e:  # the client's mistake: say so, keep serving
                    await websocket.send(f"bad request: {e if isinstance(e, WireError) else _text(e)}")
                    continue
                try:
                    answered = await self._act(websocket, obs, key)
                except Exception as e:  # the policy failed on this request (or on its own, alone)
                    if not isinstance(e, (PolicyTimeout, RequestTimeout)):
                        log.exception("policy error for %s", peer)
                    await websocket.send(f"policy error: {_text(e)}")
                    continue
                if answered is None:
                    log.info("client %s went away while its request was in the policy", peer)
                    return
                chunk, infer_s = answered
                answer = {
                    self.layout.actions: np.asarray(chunk, dtype=np.float32),
                    # infer_ms: the policy call of the request's batch (openpi's meaning); total_ms: in
                    # the server, queueing and batching included
                    "server_timing": {
                        "infer_ms": 1000 * infer_s,
                        "total_ms": 1000 * (time.monotonic() - received),
                    },
                }
                await websocket.send(packb(answer))
        except ConnectionClosed as e:
            log.info("client %s disconnected (%s)", peer, e.rcvd.code if e.rcvd else "no close frame")
        finally:
            self._clients_changed(-1)

    def _request(self, frame: Any) -> tuple[Observation, str]:
        """The observation and key of one request, or a `WireError` saying what is wrong with it."""
        return self.checked(unpackb(frame))  # WireError for a text frame or anything not msgpack

    def checked(self, message: Any) -> tuple[Observation, str]:
        """A decoded request's observation and key, checked as every request is before it joins a
        batch (a `WireError` otherwise): its images, its state's size and values, the limits."""
        obs, key = self.layout.from_wire(message, self.cameras)  # a finite float32 state
        if self.state_dim is not None and obs.state.size != self.state_dim:
            raise WireError(
                f"the state under {self.layout.state!r} has {obs.state.size} numbers; this policy takes "
                f"{self.state_dim} (the metadata's state_dim)"
            )
        self.limits.check(obs, self.layout, self.cameras)
        if key is None:  # an openpi client sends no key: draws then depend on the request order
            key = f"request-{next(self.requests)}@0"
        return obs, key

    async def _act(self, websocket, obs: Observation, key: str) -> tuple[np.ndarray, float] | None:
        """The request's chunk and its policy call's seconds; None when the connection closes first
        (the server stopping, or the client gone): nobody waits on a policy call that hangs. A
        request given up (its client gone, `request_timeout_s` past) leaves the batcher's queue if
        it has not reached the policy yet: it is never computed."""
        act = asyncio.ensure_future(self.batcher.act_timed(obs, key))
        closed = asyncio.ensure_future(websocket.wait_closed())
        try:
            done, _ = await asyncio.wait(
                {act, closed}, timeout=self.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            if not act.done():
                act.cancel()
        if act in done:
            return act.result()
        if closed in done:
            return None
        raise RequestTimeout(
            f"the request was not answered within {self.request_timeout_s:g} s (the server's "
            "--request-timeout): policy calls run one at a time, and those ahead of it or its own took "
            "longer"
        )

    def _health_check(self, connection, request):
        """GET /healthz: 200, or 503 while a policy call that outlived its limit has not returned
        (every request fails meanwhile; openpi's servers answer the same path), for load balancers
        and scripts."""
        if request.path != "/healthz":
            return None
        stuck = self.batcher.stuck_s()
        if stuck is not None:
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"policy stuck: a call past the {self.act_timeout_s:g} s limit has been running for "
                f"{stuck:.0f} s; requests fail until it returns\n",
            )
        return connection.respond(http.HTTPStatus.OK, "OK\n")


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text(e: BaseException) -> str:
    return str(e) if isinstance(e, (PolicyTimeout, RequestTimeout)) else f"{type(e).__name__}: {e}"


def serve_parser() -> ArgumentParser:
    p = ArgumentParser(prog="asyncvla-eval serve", description=__doc__.split("\n\n")[0])
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--ckpt", help="AsyncVLA checkpoint directory, or 'demo'")
    who.add_argument("--policy", help="package.module:Class implementing the Policy contract")
    p.add_argument("--mode", default="asyncvla", choices=["asyncvla", "sfm", "random-mask"])
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--eager-inference", action="store_true", help="the reference inference path (debugging)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument(
        "--max-message-mb", type=float, default=MAX_MESSAGE_BYTES / 2**20, help="largest request accepted"
    )
    p.add_argument(
        "--policy-timeout",
        type=float,
        default=60.0,
        help="seconds a policy call may take; its requests then fail, and so does every request until the "
        "call returns (default 60)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT_S,
        help="seconds a request may wait in the server, the calls ahead of it included (calls run one at a "
        f"time); it is then answered with an error (default {REQUEST_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=MAX_PROMPT_TOKENS,
        help=f"longest prompt accepted, in the checkpoint's tokens (default {MAX_PROMPT_TOKENS})",
    )
    p.add_argument(
        "--max-image-px",
        type=int,
        default=MAX_IMAGE_PX,
        help=f"largest image side accepted, in pixels (default {MAX_IMAGE_PX})",
    )
    p.add_argument("--remote-layout", help="JSON: the wire keys (evalsuite.serving.remote.WireLayout)")
    p.add_argument(
        "--protocol",
        choices=["openpi", "vla-eval"],
        default="openpi",
        help="openpi's websocket protocol (default) or vla-eval's model-server protocol, so that `vla-eval run "
        "--server-url ws://HOST:PORT` evaluates the policy (one protocol a port: docs/remote.md)",
    )
    p.add_argument(
        "--replan-steps",
        type=int,
        help="--protocol vla-eval: actions of each chunk that answer observations before the policy is asked "
        "again (default: the whole chunk)",
    )
    return p


def check_protocol_options(args, layout: WireLayout) -> None:
    """Options that mean something under one protocol only are refused under the other."""
    if args.protocol == "openpi" and args.replan_steps is not None:
        raise UsageError(
            "--replan-steps: an openpi client gets the whole chunk and executes what it chooses; the server "
            "keeps a chunk only under --protocol vla-eval"
        )
    if args.replan_steps is not None and args.replan_steps < 1:
        raise UsageError(f"--replan-steps {args.replan_steps}: at least 1 (actions of a chunk answered)")
    if args.protocol == "vla-eval":
        default = WireLayout()
        fixed = [
            f for f in ("state", "prompt", "actions", "key") if getattr(layout, f) != getattr(default, f)
        ]
        if fixed:
            raise UsageError(
                f"--remote-layout {', '.join(fixed)}: vla-eval's observations carry 'states' and 'task_description' "
                "and its actions 'actions'; under --protocol vla-eval only 'images' (camera -> the benchmark's "
                'image name, e.g. {"agentview": "primary"}) applies'
            )


def check_listen(host: str, port: int) -> None:
    """Refuse at once a host that does not resolve or a port already taken, before a model loads
    (the server's own bind says the same if the port is taken in between)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            s.bind(address)
    except OSError as e:
        raise UsageError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose a free --port and an address of "
            "this machine for --host"
        ) from e


def cmd_serve(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    if (
        not 0 < args.port < 65536
        or args.max_batch < 1
        or not args.max_message_mb > 0
        or not 0 < args.policy_timeout < math.inf
        or not 0 < args.request_timeout < math.inf
        or args.max_prompt_tokens < 1
        or args.max_image_px < 1
    ):
        raise UsageError(
            "--port must be 1-65535, --max-batch, --max-prompt-tokens and --max-image-px at least 1, "
            "--max-message-mb, --policy-timeout and --request-timeout positive (and finite)"
        )
    if args.policy and not re.fullmatch(r"[\w.]+:[\w.]+", args.policy):
        raise UsageError(
            f"serve --policy takes package.module:Class (a Policy class of yours, docs/CONTRACTS.md), got "
            f"{args.policy!r}; serve AsyncVLA with --ckpt PATH (or --ckpt demo). scripted, random and "
            "ws:// policies are for evaluations: asyncvla-eval SUITE --policy ..."
        )
    try:
        layout = WireLayout.parse(args.remote_layout)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e
    check_protocol_options(args, layout)
    check_listen(args.host, args.port)
    device = resolve_device(args.device, None)
    if args.ckpt:
        checkpoint = resolve_checkpoint(args.ckpt)
        check_checkpoint_for(checkpoint, [], args.mode)
        spec = PolicySpec(
            kind="asyncvla",
            checkpoint=checkpoint,
            mode=args.mode,
            threshold=args.threshold,
            device=device,
            eager=args.eager_inference,
        )
    else:
        spec = PolicySpec(kind="import", factory=args.policy, device=device)
    if args.protocol == "vla-eval":
        from evalsuite.serving.vla_eval_server import VlaEvalWebsocketServer

        make_server = functools.partial(VlaEvalWebsocketServer, replan_steps=args.replan_steps)
    else:
        make_server = PolicyWebsocketServer
    server = make_server(
        spec,
        layout,
        args.max_batch,
        args.max_wait_ms,
        int(args.max_message_mb * 2**20),
        act_timeout_s=args.policy_timeout,
        request_timeout_s=args.request_timeout,
        max_prompt_tokens=args.max_prompt_tokens,
        max_image_px=args.max_image_px,
    )
    try:
        asyncio.run(server.serve(args.host, args.port))  # logs "serving ... on ws://..." once it listens
    except KeyboardInterrupt:
        log.info("server stopped")
    return 0
