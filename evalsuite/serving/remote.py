"""A policy that runs in another process or on another machine, over openpi's websocket protocol.

`--policy ws://HOST:PORT` makes every env worker a client of a policy server (ours, `asyncvla-eval
serve`, or any openpi-compatible one): on connect the server sends its metadata, then each
observation goes out as a map of wire keys (`WireLayout`) and an action map comes back. The client
reconnects after a dropped connection and resends the request (a request is keyed by episode and
step, so an answer never depends on which connection carried it), gives up on a request after
`timeout_s` (the episode is then retried and, if the server stays silent, recorded as an error),
and stops the run with one message when the server's metadata or answers do not fit the suite.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.base import Observation
from evalsuite.errors import FatalPolicyError
from evalsuite.serving.wire import WireError, packb, unpackb

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 64 << 20  # the largest frame a client or a server accepts (websockets' max_size)


class RemotePolicyError(RuntimeError):
    """The server did not answer in time, closed the connection for good, or answered an error: the
    episode is retried on a fresh simulator and, after the retries, recorded as an error."""


@dataclass(frozen=True)
class WireLayout:
    """Where each part of an `Observation` travels in the wire map, and where the actions come back.

    The defaults are openpi's LIBERO example client's keys: the wrist camera under
    `observation/wrist_image`, the other camera under `observation/image` (several others:
    `observation/<camera>_image`), the state under `observation/state`, the instruction under
    `prompt`, the actions under `actions`. `images` overrides the key of a camera by name. `key` is
    the request key (episode and step, docs/CONTRACTS.md) the harness adds so that a remote
    AsyncVLA draws the same noise as an in-process one; None leaves it out.
    """

    images: dict[str, str] = field(default_factory=dict)
    state: str = "observation/state"
    prompt: str = "prompt"
    actions: str = "actions"
    key: str | None = "asyncvla/key"

    @classmethod
    def parse(cls, text: str | None) -> WireLayout:
        """From `--remote-layout`: a JSON object with any of the fields, e.g.
        '{"images": {"agentview": "observation/exterior_image_1_left"}, "state": "observation/joint_position"}'."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--remote-layout is not JSON ({e})") from e
        unknown = set(data) - set(cls.__dataclass_fields__) if isinstance(data, dict) else None
        if not isinstance(data, dict) or unknown:
            raise ValueError(
                f"--remote-layout must be a JSON object with keys among {sorted(cls.__dataclass_fields__)}"
                + (f"; unknown: {sorted(unknown)}" if unknown else "")
            )
        return cls(**data)

    def image_keys(self, cameras: list[str]) -> dict[str, str]:
        """camera -> wire key, for the cameras of one observation (or of a policy)."""
        others = [c for c in cameras if "wrist" not in c]
        keys = {}
        for camera in cameras:
            if camera in self.images:
                keys[camera] = self.images[camera]
            elif "wrist" in camera:
                keys[camera] = "observation/wrist_image"
            elif len(others) == 1:
                keys[camera] = "observation/image"
            else:
                keys[camera] = f"observation/{camera}_image"
        return keys

    def to_wire(self, obs: Observation, key: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            wire: np.ascontiguousarray(obs.images[camera])
            for camera, wire in self.image_keys(list(obs.images)).items()
        }
        message[self.state] = np.asarray(obs.state, dtype=np.float32)
        message[self.prompt] = obs.instruction
        if self.key:
            message[self.key] = key
        return message

    def from_wire(self, message: Any, cameras: list[str] | None) -> tuple[Observation, str | None]:
        """The observation a policy with these cameras sees, and the request key if one was sent.
        `cameras=None` (a policy that names none): every HxWx3 uint8 image of the message, under its
        camera name where `images` maps one to its key, else under the wire key itself."""
        if not isinstance(message, dict):
            raise WireError(f"an observation is a map, got {type(message).__name__}")
        if cameras is None:
            camera_of = {wire: camera for camera, wire in self.images.items()}
            wires = {
                camera_of.get(k, k): k for k, v in message.items() if _is_image(v) and isinstance(k, str)
            }
        else:
            wires = self.image_keys(cameras)
        images = {}
        for camera, wire in wires.items():
            image = message.get(wire)
            if not _is_image(image):
                raise WireError(
                    f"camera {camera!r} expects an HxWx3 uint8 array under {wire!r}; the message has "
                    f"keys {sorted(map(str, message))}"
                )
            images[camera] = image
        state = message.get(self.state)
        prompt = message.get(self.prompt)
        if state is None or not isinstance(prompt, str):
            raise WireError(
                f"an observation needs a state under {self.state!r} and a text prompt under {self.prompt!r}; "
                f"the message has keys {sorted(map(str, message))}"
            )
        try:
            sent = np.asarray(state, np.float64)  # the client's numbers, before float32 can overflow them
        except (TypeError, ValueError) as e:
            raise WireError(f"the state under {self.state!r} is not numbers ({e})") from e
        bad = np.flatnonzero(~(np.abs(sent) <= np.finfo(np.float32).max))  # NaN, Inf, beyond float32
        if bad.size:
            raise WireError(
                f"the state under {self.state!r} has {sent.flat[bad[0]]:g} at index {bad[0]}; a state is "
                "finite float32 numbers"
            )
        state = sent.astype(np.float32)
        key = message.get(self.key) if self.key else None
        return Observation(images, state, prompt), key if isinstance(key, str) else None


def _is_image(value: Any) -> bool:
    return (
        isinstance(value, np.ndarray)
        and value.ndim == 3
        and value.shape[2] == 3
        and value.shape[0] > 0
        and value.shape[1] > 0
        and value.dtype == np.uint8
    )


def check_metadata(url: str, metadata: Any, action_dim: int) -> None:
    """The server's metadata against the suite: a mismatch would fail every episode the same way."""
    if not isinstance(metadata, dict):
        raise FatalPolicyError(f"{url}: the server's first message is not a metadata map")
    served = metadata.get("action_dim")
    if served is not None and int(served) != action_dim:
        raise FatalPolicyError(
            f"{url} serves {served}-D actions but the suite takes {action_dim}-D ones; serve a policy "
            "trained for this suite"
        )
    size = metadata.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise FatalPolicyError(f"{url} announces image_size {size!r}; expected a positive integer (pixels)")


def served_image_size(metadata: dict) -> int | None:
    """The square image size (pixels) the policy behind a server was trained at, as the metadata it
    sent (`probe`'s answer, checked by `check_metadata`) says (None: it does not say). The suite
    renders at it where its protocol allows, as for an in-process checkpoint, so that a remote run
    sees the images an in-process run sees."""
    return metadata.get("image_size")


class RemotePolicy:
    """The `Policy` contract over a websocket connection (one per env worker)."""

    def __init__(
        self,
        url: str,
        action_dim: int,
        layout: WireLayout | None = None,
        timeout_s: float = 120.0,
        reconnects: int = 5,
        chunk_length: int = 1,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.url = url
        self.action_dim = action_dim
        self.chunk_length = chunk_length  # updated from the server's metadata when it says
        self.layout = layout or WireLayout()
        self.timeout_s = timeout_s
        self.reconnects = reconnects
        self.max_message_bytes = max_message_bytes
        self.ws = None
        self.metadata: dict = {}
        self._cameras_checked = False

    def connect(self) -> dict:
        from websockets.sync.client import connect

        self._stack = ExitStack()  # websockets wants its connections entered as context managers
        try:
            self.ws = self._stack.enter_context(
                connect(
                    self.url,
                    compression=None,
                    max_size=self.max_message_bytes,
                    open_timeout=min(10.0, self.timeout_s),
                )
            )
            metadata = unpackb(self.ws.recv(timeout=self.timeout_s))
        except WireError as e:
            self.close()
            raise FatalPolicyError(
                f"{self.url}: the server's metadata is not openpi-style msgpack ({e})"
            ) from e
        check_metadata(self.url, metadata, self.action_dim)
        self.metadata = metadata
        self.chunk_length = int(metadata.get("chunk_length", self.chunk_length))
        return metadata

    def close(self) -> None:
        if self.ws is not None:
            try:
                self._stack.close()
            except Exception as e:  # closing a broken connection may fail too
                log.debug("closing %s: %s", self.url, e)
            self.ws = None

    def reset(self, episode_key: str) -> None:
        """Nothing to reset: every request carries its episode and step."""

    def act(self, observations: list[Observation], keys: list[str]) -> np.ndarray:
        return np.stack([self._request(obs, key) for obs, key in zip(observations, keys)])

    def _request(self, obs: Observation, key: str) -> np.ndarray:
        message = self.layout.to_wire(obs, key)
        if not self._cameras_checked:
            self._check_cameras(message)
        payload = packb(message)
        from websockets.exceptions import ConnectionClosed

        for attempt in range(self.reconnects + 1):
            try:
                if self.ws is None:
                    self.connect()
                self.ws.send(payload)
                reply = self.ws.recv(timeout=self.timeout_s)
                break
            except TimeoutError as e:
                self.close()
                raise RemotePolicyError(f"{self.url} did not answer within {self.timeout_s:g} s") from e
            except (ConnectionClosed, OSError) as e:
                self.close()
                if isinstance(e, ConnectionClosed) and e.sent is not None and e.sent.code == 1009:
                    raise RemotePolicyError(
                        f"{self.url} answered with a frame larger than {self.max_message_bytes / 2**20:g} MiB (the client's limit)"
                    ) from e
                if attempt == self.reconnects:
                    raise RemotePolicyError(
                        f"lost the connection to {self.url} and could not reconnect "
                        f"({self.reconnects} tries): {type(e).__name__}: {e}"
                    ) from e
                log.warning("connection to %s dropped (%s); reconnecting", self.url, e)
                time.sleep(min(0.5 * 2**attempt, 5.0))
        if isinstance(reply, str):  # openpi: a text frame is the server's error message
            raise RemotePolicyError(f"{self.url} answered with an error: {reply.strip()[-500:]}")
        return self._actions(unpackb(reply))

    def _actions(self, answer: Any) -> np.ndarray:
        actions = answer.get(self.layout.actions) if isinstance(answer, dict) else None
        if actions is None:
            keys = sorted(map(str, answer)) if isinstance(answer, dict) else type(answer).__name__
            raise FatalPolicyError(
                f"{self.url} answered without {self.layout.actions!r} (got {keys}); set the key with "
                '--remote-layout \'{"actions": "..."}\''
            )
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim == 1:  # a single action: a chunk of one
            actions = actions[None]
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise FatalPolicyError(
                f"{self.url} answered actions of shape {actions.shape}; the suite needs [L, {self.action_dim}]"
            )
        return actions

    def _check_cameras(self, message: dict) -> None:
        """A server that lists the image keys it reads must find them all in our messages."""
        self._cameras_checked = True
        if self.ws is None:
            self.connect()
        wanted = self.metadata.get("image_keys")
        if isinstance(wanted, (list, tuple)):
            missing = [k for k in wanted if k not in message]
            if missing:
                raise FatalPolicyError(
                    f"{self.url} reads images under {list(wanted)} but this suite sends "
                    f"{sorted(k for k in message if k.startswith('observation/'))}; map the cameras with "
                    '--remote-layout \'{"images": {"CAMERA": "KEY"}}\''
                )


def probe(url: str, action_dim: int, timeout_s: float = 10.0) -> dict:
    """Connect once from the driver, read the metadata, check it against the suite, disconnect."""
    client = RemotePolicy(url, action_dim, timeout_s=timeout_s)
    try:
        return client.connect()
    except (OSError, TimeoutError) as e:
        raise FatalPolicyError(f"no policy server answers at {url} ({type(e).__name__}: {e})") from e
    finally:
        client.close()
