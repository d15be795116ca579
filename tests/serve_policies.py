"""Users' policy classes served by `asyncvla-eval serve --policy serve_policies:Class` in
tests/test_serve.py and tests/test_remote.py (with tests/ on the path)."""

from __future__ import annotations

import threading

import numpy as np


class ImageMeans:
    """Names no cameras, so it gets every image of a request: each chunk's action i holds, in x, the
    mean of the i-th image in the order of the camera names, which it remembers in `seen`."""

    action_dim = 7
    chunk_length = 4

    def __init__(self):
        self.seen: list[list[str]] = []

    def act(self, observations, keys):
        actions = np.zeros((len(observations), self.chunk_length, self.action_dim), np.float32)
        for b, obs in enumerate(observations):
            names = sorted(obs.images)
            self.seen.append(names)
            for i, name in enumerate(names[: self.chunk_length]):
                actions[b, i, 0] = obs.images[name].mean()
        return actions

    def reset(self, episode_key: str) -> None:
        pass


class HangsOnRequest:
    """Answers 0.3 in x, except for an observation whose instruction is "hang": then `act` never
    returns (a deadlocked model, a GPU that stopped answering)."""

    action_dim = 7
    chunk_length = 4

    def act(self, observations, keys):
        if any(obs.instruction == "hang" for obs in observations):
            threading.Event().wait()
        actions = np.zeros((len(observations), self.chunk_length, self.action_dim), np.float32)
        actions[..., 0] = 0.3
        return actions

    def reset(self, episode_key: str) -> None:
        pass


class Gate:
    """Answers 0.3 in x; an observation whose instruction is "block" holds its call until `gate` is
    set (a slow or stuck model, released by the test). Counts the calls inside `act` at once
    (`most_inside`) and records every key it is given (`keys`)."""

    action_dim = 7
    chunk_length = 4

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()  # set once a blocking call is inside
        self.keys: list[str] = []
        self.inside = 0
        self.most_inside = 0
        self._lock = threading.Lock()

    def act(self, observations, keys):
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.keys.extend(keys)
        try:
            if any(obs.instruction == "block" for obs in observations):
                self.entered.set()
                self.gate.wait(60)
            actions = np.zeros((len(observations), self.chunk_length, self.action_dim), np.float32)
            actions[..., 0] = 0.3
            return actions
        finally:
            with self._lock:
                self.inside -= 1

    def reset(self, episode_key: str) -> None:
        pass
