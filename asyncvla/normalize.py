"""State / action normalisation statistics: computed once from the training data, saved with the checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

STD_FLOOR = 1e-4  # a constant dimension (e.g. an unused joint) must not blow up to inf


@dataclass
class NormStats:
    state_mean: list[float]
    state_std: list[float]
    action_mean: list[float]
    action_std: list[float]

    @classmethod
    def from_arrays(cls, states: np.ndarray, actions: np.ndarray) -> NormStats:
        return cls(
            state_mean=states.mean(0).tolist(),
            state_std=np.maximum(states.std(0), STD_FLOOR).tolist(),
            action_mean=actions.mean(0).tolist(),
            action_std=np.maximum(actions.std(0), STD_FLOOR).tolist(),
        )

    @classmethod
    def identity(cls, state_dim: int, action_dim: int) -> NormStats:
        return cls([0.0] * state_dim, [1.0] * state_dim, [0.0] * action_dim, [1.0] * action_dim)

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        return ((state - np.asarray(self.state_mean)) / np.asarray(self.state_std)).astype(np.float32)

    def normalize_action(self, action: np.ndarray) -> np.ndarray:
        return ((action - np.asarray(self.action_mean)) / np.asarray(self.action_std)).astype(np.float32)

    def unnormalize_action(self, action: np.ndarray) -> np.ndarray:
        return (action * np.asarray(self.action_std) + np.asarray(self.action_mean)).astype(np.float32)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path, state_dim: int, action_dim: int) -> NormStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            stats = cls(**{k: [float(x) for x in data[k]] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: unreadable normalisation statistics ({e}); expected JSON with "
                f"{list(cls.__dataclass_fields__)} lists"
            ) from e
        for key, dim in (
            ("state_mean", state_dim),
            ("state_std", state_dim),
            ("action_mean", action_dim),
            ("action_std", action_dim),
        ):
            if len(getattr(stats, key)) != dim:
                raise ValueError(
                    f"{path}: {key} has {len(getattr(stats, key))} values, expected {dim} (from config.json)"
                )
        return stats
