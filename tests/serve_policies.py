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
