"""`--policy vla-eval+ws://HOST:PORT`: evaluate any model server of the peer harness vla-eval
(0.8.0's protocol: HELLO / EPISODE_START / OBSERVATION / ACTION / EPISODE_END / ERROR, one msgpack
frame each, `evalsuite.serving.vla_eval_wire`) on our suites.

Each env worker holds one connection, as each of vla-eval's shards does: HELLO once (the server
answers with its versions, its `observation_params` and its observation / action specs),
EPISODE_START with the task at every episode, then one OBSERVATION per control step, sent as
vla-eval's own benchmark of the suite sends it (`evalsuite.serving.vla_eval_suites`), answered by
one ACTION: vla-eval's servers keep a policy's chunk themselves and answer one action per
observation (`PredictModelServer(chunk_size=...)`), so this policy's chunks are one action long
and the harness asks it at every step. EPISODE_END goes when the next episode starts (the harness
tells a policy when an episode starts, not when it ends; the server hears of it before the next
EPISODE_START, and at the latest when the connection closes, as vla-eval's own server does).

Before the first episode the driver connects once (`check_vla_eval_server`): the options the
observations follow are merged as vla-eval merges them (the URL's query wins over the server's
`observation_params`, which win over the benchmark's defaults), and the server's specs are checked
against the suite's with vla-eval's own rules; a mismatch stops the run with both specs named. The
HELLO and the options go into run.json (`policy.vla_eval`, part of the run's identity).

A connection lost in the middle of an episode fails the episode's attempt (the server's buffered
chunk went with it, so the episode could not go on as it would have); the harness retries it from
its start on a fresh simulator, and the next episode reconnects.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np

from envs.base import Observation
from evalsuite.errors import FatalPolicyError, UsageError
from evalsuite.policy import PolicySpec
from evalsuite.serving.remote import MAX_MESSAGE_BYTES, RemotePolicyError
from evalsuite.serving.vla_eval_suites import (
    PeerMismatch,
    PeerSuite,
    peer_suite,
    spec_conflicts,
    spec_mismatches,
)
from evalsuite.serving.vla_eval_wire import PROTOCOL_VERSION, Message, pack, unpack
from evalsuite.serving.wire import WireError
from evalsuite.suites.spec import SuiteSpec

log = logging.getLogger(__name__)
SCHEME = "vla-eval+"


def is_vla_eval_url(url: str | None) -> bool:
    return bool(url) and url.startswith((SCHEME + "ws://", SCHEME + "wss://"))


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """`vla-eval+ws://HOST:PORT/PATH?key=value&...` -> (the websocket URL, the benchmark options
    the query sets: true / false / numbers / null parsed as JSON, anything else a string)."""
    parts = urlsplit(url.removeprefix(SCHEME))
    params = {}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), params


def harness_version() -> str:
    from importlib import metadata

    try:
        return f"asyncvla-eval {metadata.version('asyncvla')}"
    except metadata.PackageNotFoundError:
        return "asyncvla-eval"


def jsonable(value: Any) -> Any:
    """The HELLO payload as run.json can hold it (arrays as lists, bytes by their length)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return value


class _Connection:
    """One websocket to a vla-eval model server, past the HELLO exchange."""

    def __init__(self, url: str, timeout_s: float, max_message_bytes: int, benchmark: str | None):
        from websockets.sync.client import connect

        self.url = url
        self.timeout_s = timeout_s
        self.seq = 0
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(
            connect(url, compression=None, max_size=max_message_bytes, open_timeout=min(10.0, timeout_s))
        )
        try:
            hello = {"harness_version": harness_version(), "protocol_version": PROTOCOL_VERSION}
            self.send("hello", {**hello, **({"benchmark": benchmark} if benchmark else {})})
            reply = self.recv()
        except BaseException:
            self.close()
            raise
        if reply.type != "hello":
            self.close()
            raise WireError(f"the server answered HELLO with {reply.type} {str(reply.payload)[:200]}")
        self.server_info = reply.payload

    def send(self, kind: str, payload: dict) -> int:
        self.seq += 1
        self.ws.send(pack(Message(kind, payload, self.seq)))
        return self.seq

    def recv(self) -> Message:
        frame = self.ws.recv(timeout=self.timeout_s)
        if isinstance(frame, str):
            raise WireError(f"a text frame ({frame.strip()[:200]!r}), not a vla-eval message")
        return unpack(frame)

    def close(self) -> None:
        try:
            self._stack.close()
        except Exception as e:  # closing a broken connection may fail too
            log.debug("closing %s: %s", self.url, e)


def _parse_key(key: str) -> tuple[str, str, int, int] | None:
    """`suite/task/variant/epK/seedS@step` -> (suite, task, K, step); None for another key."""
    draw, _, step = key.rpartition("@")
    parts = draw.split("/")
    if len(parts) < 5 or not parts[-2].startswith("ep") or not step.isdigit():
        return None
    try:
        return parts[0], "/".join(parts[1:-3]), int(parts[-2][2:]), int(step)
    except ValueError:
        return None


class VlaEvalPolicy:
    """The `Policy` contract over one connection to a vla-eval model server (one per env worker)."""

    chunk_length = 1  # the server answers one action per observation

    def __init__(
        self,
        url: str,
        action_dim: int,
        setup: dict | None = None,
        timeout_s: float = 120.0,
        reconnects: int = 5,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.url, _ = split_url(url)
        self.action_dim = action_dim
        self.setup = setup or {}
        self.timeout_s = timeout_s
        self.reconnects = reconnects
        self.max_message_bytes = max_message_bytes
        self.conn: _Connection | None = None
        self._episode: str | None = None  # the draw key of the episode the server was told of
        self._sent = 0  # observations sent in it
        self._suites: dict[str, SuiteSpec] | None = None
        self._seq_warned = False

    # -- the Policy contract ---------------------------------------------------------------
    def reset(self, episode_key: str) -> None:
        """The next observation starts a new episode on the server (EPISODE_START)."""
        self._end_episode()

    def act(self, observations: list[Observation], keys: list[str]) -> np.ndarray:
        return np.stack([self._request(obs, key) for obs, key in zip(observations, keys)])

    def close(self) -> None:
        self._end_episode()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- one step ---------------------------------------------------------------------------
    def _request(self, obs: Observation, key: str) -> np.ndarray:
        from websockets.exceptions import ConnectionClosed

        draw = key.rpartition("@")[0]
        suite_name, peer, params, task_name = self._suite_of(key)
        payload = peer.observation(obs, params, task_name)
        try:
            if self._episode != draw:
                self._end_episode()
                self._start_episode(draw, key, obs, peer)
            seq = self.conn.send("observation", payload)
            self._sent += 1
            reply = self._reply(seq)
        except TimeoutError as e:
            self._drop()
            raise RemotePolicyError(f"{self.url} did not answer within {self.timeout_s:g} s") from e
        except (ConnectionClosed, OSError) as e:
            self._drop()
            raise RemotePolicyError(
                f"lost the connection to {self.url} during an episode ({type(e).__name__}: {e}); the server's "
                "episode state (its buffered chunk) went with it, so the episode is retried from its start"
            ) from e
        except WireError as e:
            self._drop()
            raise FatalPolicyError(f"{self.url} does not speak vla-eval's protocol: {e}") from e
        return self._action(reply, peer)

    def _start_episode(self, draw: str, key: str, obs: Observation, peer: PeerSuite) -> None:
        if self.conn is None:
            self._connect()
        parsed = _parse_key(key)
        if parsed is None:  # a key of no episode (a warm-up call): the task as far as it is known
            task = {"name": obs.instruction}
        else:
            suite_name, task_name, episode_index, _ = parsed
            task = peer.task_info(self._suite(suite_name), task_name, episode_index, obs.instruction)
        self.conn.send("episode_start", {"task": task})
        self._episode, self._sent = draw, 0

    def _end_episode(self) -> None:
        if self._episode is None or self.conn is None:
            self._episode = None
            return
        try:
            self.conn.send("episode_end", {"steps": self._sent})
        except Exception as e:  # the connection is gone: the server ended the episode when it closed
            log.debug("episode_end to %s: %s", self.url, e)
            self._drop()
        self._episode = None

    def _reply(self, seq: int) -> Message:
        while True:
            reply = self.conn.recv()
            if reply.type == "error":
                raise RemotePolicyError(
                    f"{self.url} answered with an error: {str(reply.payload.get('error', reply.payload))[-500:]}"
                )
            if reply.type == "action":
                if reply.seq != seq and not self._seq_warned:  # vla-eval's client warns too
                    self._seq_warned = True
                    log.warning("%s answered observation %d with seq %d", self.url, seq, reply.seq)
                return reply
            log.debug("%s sent %s while an action was awaited; ignored", self.url, reply.type)

    def _action(self, reply: Message, peer: PeerSuite) -> np.ndarray:
        payload = reply.payload
        raw = payload.get("actions", payload.get("action"))
        if raw is None:
            raise FatalPolicyError(
                f"{self.url} answered an ACTION without 'actions' (got {sorted(map(str, payload))})"
            )
        try:
            action = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise FatalPolicyError(f"{self.url} answered actions that are not numbers ({e})") from e
        if action.ndim == 2 and action.shape[0] == 1:
            action = action[0]
        if action.shape != (self.action_dim,):
            raise FatalPolicyError(
                f"{self.url} answered actions of shape {list(action.shape)}; vla-eval's benchmarks execute one "
                f"{self.action_dim}-D action per observation (a server keeps its chunk: PredictModelServer's chunk_size)"
            )
        return peer.env_action(action)[None]

    # -- connection and suites ------------------------------------------------------------------
    def _connect(self) -> None:
        from websockets.exceptions import WebSocketException

        for attempt in range(self.reconnects + 1):
            try:
                self.conn = _Connection(
                    self.url, self.timeout_s, self.max_message_bytes, self.setup.get("benchmark")
                )
                break
            except WireError as e:
                raise FatalPolicyError(f"{self.url} does not speak vla-eval's protocol: {e}") from e
            except (OSError, TimeoutError, WebSocketException) as e:
                if attempt == self.reconnects:
                    raise RemotePolicyError(
                        f"could not connect to {self.url} ({self.reconnects + 1} tries): {type(e).__name__}: {e}"
                    ) from e
                log.warning("connecting to %s failed (%s); retrying", self.url, e)
                time.sleep(min(0.5 * 2**attempt, 5.0))
        expected = self.setup.get("server")
        if expected is not None and jsonable(self.conn.server_info) != expected:
            self._drop()
            raise FatalPolicyError(
                f"{self.url} now answers HELLO with {json.dumps(jsonable(self.conn.server_info))[:300]}, not what the "
                f"run was started against ({json.dumps(expected)[:300]}): another model server; start a new run"
            )

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn, self._episode = None, None

    def _suite(self, name: str) -> SuiteSpec:
        if self._suites is None:
            from evalsuite.suites import registry

            self._suites = registry()
        return self._suites[name]

    def _suite_of(self, key: str) -> tuple[str, PeerSuite, dict, str]:
        """The suite a request belongs to, how its peer benchmark sends it, its options, and the
        task's name as the peer names it."""
        suites = self.setup.get("suites") or {}
        parsed = _parse_key(key)
        name = parsed[0] if parsed and parsed[0] in suites else next(iter(suites), None)
        if name is None:
            raise FatalPolicyError(
                f"{self.url}: the policy was not set up for any suite (check_vla_eval_server)"
            )
        entry = suites[name]
        peer = PeerSuite(**entry["peer"])
        task_name = peer.peer_task_name(self._suite(name), parsed[1]) if parsed and parsed[0] == name else ""
        return name, peer, entry["params"], task_name


def probe_hello(url: str, timeout_s: float, benchmark: str | None = None) -> dict:
    """Connect once, exchange HELLO, disconnect: the server's HELLO payload (a `UsageError` when
    nothing answers or what answers is not a vla-eval model server)."""
    from websockets.exceptions import WebSocketException

    try:
        conn = _Connection(url, timeout_s, MAX_MESSAGE_BYTES, benchmark)
    except WireError as e:
        raise UsageError(
            f"--policy vla-eval+{url}: the server there does not speak vla-eval's protocol ({e}); for an openpi "
            "server (asyncvla-eval serve, openpi's) use --policy ws://HOST:PORT"
        ) from e
    except (OSError, TimeoutError, WebSocketException) as e:
        raise UsageError(
            f"--policy vla-eval+{url}: no vla-eval model server answers there ({type(e).__name__}: {e})"
        ) from e
    conn.close()
    return conn.server_info


def check_vla_eval_server(
    policy: PolicySpec,
    suites: list[SuiteSpec],
    seed: int,
    max_steps: int | None,
    latency: str | float | None = None,
) -> PolicySpec:
    """The driver's check before anything starts: the server answers HELLO, the options merge
    into something we reproduce, and its specs fit every suite's. Returns the spec with the
    `vla_eval` record (run.json's `policy.vla_eval`) the env workers' clients follow."""
    url, given = split_url(policy.url)
    if policy.layout:
        raise UsageError(
            "--remote-layout sets openpi's wire keys; a vla-eval server reads vla-eval's observation (set its "
            "benchmark options in the URL's query instead, e.g. vla-eval+ws://HOST:PORT?send_state=true)"
        )
    if latency is not None:
        raise UsageError(
            "--latency: a vla-eval model server answers one action per observation and keeps its chunk itself, "
            "so the harness cannot run the chunk while the next one is computed; leave --latency out"
        )
    peers = {}
    for suite in suites:
        try:
            peers[suite.name] = peer_suite(suite, seed, max_steps)
        except PeerMismatch as e:
            raise UsageError(f"--policy {policy.url}: {e}") from e
    for key in given:
        unknown = [s for s, peer in peers.items() if key not in peer.defaults]
        if unknown:
            options = sorted(peers[unknown[0]].defaults)
            raise UsageError(
                f"--policy {policy.url}: {key!r} is not an option of vla-eval's benchmark of {unknown[0]} "
                f"({peers[unknown[0]].benchmark}); its options: {', '.join(options)}"
            )
    first = next(iter(peers.values()))
    info = probe_hello(url, min(10.0, policy.timeout_s), first.benchmark)
    announced = info.get("observation_params") or {}
    if not isinstance(announced, dict):
        raise UsageError(
            f"--policy {policy.url}: the server's observation_params is not a map: {announced!r}"
        )
    server_action = info.get("action_spec") or {}
    server_obs = info.get("observation_spec") or {}
    record: dict[str, Any] = {
        "protocol": f"vla-eval {PROTOCOL_VERSION}",
        "server": jsonable(info),
        "suites": {},
    }
    for name, peer in peers.items():
        params, dropped = peer.merge(announced, given)
        if dropped:
            log.warning(
                "%s announces observation options %s that vla-eval's %s does not take; dropped, as vla-eval drops them",
                url, dropped, peer.benchmark,
            )  # fmt: skip
        try:
            peer.check(params)
        except PeerMismatch as e:
            raise UsageError(f"--policy {policy.url}: {name}: {e}") from e
        bench_action, bench_obs = peer.action_spec(), peer.observation_spec(params)
        problems = spec_conflicts(server_action, bench_action, server_obs, bench_obs)
        warnings = [
            w
            for w in spec_mismatches(server_action, bench_action, server_obs, bench_obs)
            if w not in problems
        ]
        for warning in warnings:  # naming, not a convention: vla-eval warns and runs, so do we
            log.warning("%s: spec mismatch (vla-eval warns of it too): %s", url, warning)
        if problems:
            raise UsageError(
                f"--policy {policy.url}: the server's specs do not fit suite {name} ({'; '.join(problems)}): server "
                f"{info.get('model_server', '?')} declares action {_specs(server_action)}, observation "
                f"{_specs(server_obs)}; {peer.benchmark} declares action {_specs(bench_action)}, observation "
                f"{_specs(bench_obs)}"
            )
        record["suites"][name] = {
            "peer": {
                "kind": peer.kind,
                "benchmark": peer.benchmark,
                "defaults": peer.defaults,
                "settable": list(peer.settable),
                "run_decides": peer.run_decides,
            },
            "params": params,
            "dropped_params": dropped,
            "specs_checked": bool(server_action or server_obs),
            "spec_warnings": warnings,
        }
    record["benchmark"] = first.benchmark
    return replace(policy, vla_eval=record)


def _specs(specs: dict) -> str:
    if not specs:
        return "{} (none declared)"
    return (
        "{"
        + ", ".join(
            f"{k}: {v.get('format')}" + (f"/{v.get('dims')}D" if v.get("dims") else "")
            for k, v in specs.items()
        )
        + "}"
    )
