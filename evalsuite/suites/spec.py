"""Suites described as data: what to run, how an episode ends, how the table aggregates."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from evalsuite.errors import UnknownName


@dataclass(frozen=True)
class TaskSpec:
    name: str  # unique within the suite; the `task` passed to Env.reset
    instruction: str
    max_steps: int  # policy steps (settle / no-op steps not counted)
    episodes: int  # default episodes per task (episode k uses fixed initial state k)
    meta: dict[str, Any] = field(default_factory=dict)  # table grouping: task family, subtask, variant, ...


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    tasks: tuple[TaskSpec, ...]
    env_factory: str  # "module:function" returning an Env; imported lazily inside the worker
    env_kwargs: dict[str, Any]
    end_on_success: (
        bool  # True: stop at the first success (LIBERO); False: run the budget, read success at the end
    )
    action_dim: int
    protocol: dict[str, Any]  # every value a result depends on; written to run.json and the table header
    layout: str = "per_task"  # table layout name (evalsuite.tables / evalsuite.layouts)
    expert_factory: str | None = None  # "module:Class" of the scripted expert, if the suite has one
    paper_table: str | None = None  # reference CSV in results/reference/ (paper numbers)
    family: str = ""  # suites run together by one command (e.g. the four LIBERO suites)
    # True: a checkpoint's images are rendered at its own image_size (env_kwargs["image_size"])
    # instead of being resampled from the default size, which a tiny model trained on native
    # renders does not survive. False where the protocol fixes the render size (LIBERO: 256 px).
    render_at_model_size: bool = False
    # "module:function" called before a run writes anything, with the planned task names and the
    # env kwargs (`preflight(tasks=[...], **env_kwargs)`); it raises a SetupError naming everything
    # that is missing, so a run that cannot succeed is refused at once instead of at episode 1.
    preflight: str | None = None
    # name -> {"replan_steps", "seed", "env_kwargs"}: reference clients' choices, picked with
    # `--set client=NAME` (LIBERO: openpi, oft) and recorded in run.json under that name.
    client_presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the simulator's control rate: a latency-aware run (`--latency`) turns a policy's thinking time
    # into steps the environment takes meanwhile. None: the suite has no such mode.
    control_hz: float | None = None
    # latency-aware evaluation (evalsuite/run/episode.py): None (the policy answers instantly),
    # "measured" (each call's own wall time) or a fixed figure in milliseconds
    latency: str | float | None = None
    # with a latency, how a late chunk is joined (evalsuite/run/asynchronous.py JOINS)
    async_join: str | None = None

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.tasks[:10])
        raise UnknownName(f"unknown task {name!r} in suite {self.name!r}; known tasks: {known}")


def import_object(path: str) -> Any:
    """Resolve "package.module:attr" (kept as strings in specs so Ray ships names, not objects)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
