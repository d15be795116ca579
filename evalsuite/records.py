"""Episode identity and outcome: what the plan hands out and what the run store keeps."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class EpisodeSpec:
    """One planned episode. Its id is stable: the same command always plans the same ids."""

    suite: str
    task: str
    episode_index: int  # episode k uses the task's fixed initial state k
    seed: int
    variant: str  # e.g. the SimplerEnv variant; "" where a suite has none
    mode: str  # policy and inference mode, e.g. "asyncvla", "sfm", "scripted"

    @property
    def id(self) -> str:
        return f"{self.draw_key}/{self.mode}"

    @property
    def draw_key(self) -> str:
        """The episode without its mode: what policies seed their draws from (with the step), so
        the rows of an ablation (modes of one model) see the same noise on the same episode and
        their per-episode outcomes can be compared pairwise."""
        variant = self.variant or "-"
        return f"{self.suite}/{self.task}/{variant}/ep{self.episode_index:03d}/seed{self.seed}"


@dataclass
class EpisodeRecord:
    """One finished episode, as written to episodes.jsonl.

    `success` is None when the episode crashed `attempts` times: an error is neither a success
    nor a failure and never enters a success rate.
    """

    episode_id: str
    suite: str
    task: str
    episode_index: int
    seed: int
    variant: str
    mode: str
    success: bool | None
    steps: int
    wall_time_s: float
    error: str | None = None
    video: str | None = None
    attempts: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_spec(cls, spec: EpisodeSpec, **fields: Any) -> EpisodeRecord:
        return cls(
            episode_id=spec.id,
            suite=spec.suite,
            task=spec.task,
            episode_index=spec.episode_index,
            seed=spec.seed,
            variant=spec.variant,
            mode=spec.mode,
            **fields,
        )

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json_dict(cls, data: Any) -> EpisodeRecord:
        """A record read back from episodes.jsonl, its fields checked by type (ValueError says which):
        a `success` of "false" must not count as a success, nor `suite: 5` make a table row."""
        if not isinstance(data, dict):
            raise ValueError(f"a record is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        for name, types in _FIELD_TYPES.items():
            if name not in data:
                if cls.__dataclass_fields__[name].default is MISSING and name != "info":
                    raise ValueError(f"field {name!r} is missing")
                continue
            value = data[name]
            # bool is an int in Python: a count or an index must not be True
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise ValueError(f"field {name!r} is {value!r}, expected {allowed}")
        return cls(**data)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "episode_id": (str,),
    "suite": (str,),
    "task": (str,),
    "episode_index": (int,),
    "seed": (int,),
    "variant": (str,),
    "mode": (str,),
    "success": (bool, type(None)),
    "steps": (int,),
    "wall_time_s": (int, float),
    "error": (str, type(None)),
    "video": (str, type(None)),
    "attempts": (int,),
    "info": (dict,),
}
