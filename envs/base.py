"""The contracts every simulator adapter implements (see DESIGN.md, "Contracts").

An adapter turns one simulator into `Env`: it resets to a fixed, numbered initial state of a
task, steps with a 7-D action and returns `Observation`s oriented exactly as the policy was
trained on. It never decides when an episode ends for the table: the harness does that from
the suite's protocol (LIBERO stops at the first success, SimplerEnv reads success at the last
step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class Observation:
    """What a policy sees at one control step.

    `images` maps camera name -> HxWx3 uint8, already rotated / cropped as the policy expects.
    It is empty on steps the harness asked not to render (rendering dominates the cost of a
    CPU step, and a chunked policy only looks at one step in L).
    `privileged` carries simulator ground truth (object poses, ...) for scripted experts; a
    learned policy must never read it.
    `committed` is set by the harness, never by an env: under asynchronous execution with the
    `afm-inpaint` join, the actions (n, action_dim) the robot executes while the chunk asked for
    with this observation is computed, which that chunk must begin with.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    privileged: dict[str, Any] = field(default_factory=dict)
    committed: np.ndarray | None = None


class Env(Protocol):
    """One simulator instance. Not thread-safe; the runner gives each worker its own.

    An env that builds its simulator per task (LIBERO) may count the builds in an int attribute
    `builds`; the harness then marks each episode whose reset built one (`info["env_built"]`).
    """

    def reset(self, task: str, episode_index: int, seed: int) -> Observation:
        """Start episode `episode_index` of `task` from its fixed initial state."""

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool, bool, dict]:
        """Apply one action; return (observation, done, success, info).

        `done` is the simulator's own terminal signal (not the step budget: the harness counts
        steps). `success` is the task predicate at this step. With `render=False` the returned
        observation has no images.
        """

    def render_frame(self) -> np.ndarray:
        """The cameras side by side (HxWx3 uint8) for videos, at the current state."""

    def close(self) -> None: ...


class SetupError(RuntimeError):
    """An episode cannot be run as the protocol specifies (missing simulator, missing asset file).

    The harness stops the run with this message instead of recording a failure: a failure
    caused by a missing table mesh is not a measurement of the policy.
    """


class SimulatorMissing(SetupError):
    """A simulator package or system library is not installed; the message names the fix."""


class AdapterMismatch(SetupError):
    """The simulator does not provide what the adapter reads (an observation key, a link, a shape):
    every episode would fail the same way, so the run stops with this message instead of retrying
    and recording errors. Usually a simulator version other than the one the adapter was checked
    against."""


class InvalidAction(ValueError):
    """An action of the wrong shape, or with NaN / Inf, reached an env."""


def check_action(action: np.ndarray, action_dim: int) -> np.ndarray:
    """Refuse actions a simulator would silently accept and corrupt its state with."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (action_dim,):
        raise InvalidAction(
            f"action has shape {action.shape}, expected ({action_dim},): check the policy's "
            f"action_dim against the suite (a {action_dim}-D delta end-effector + gripper action)"
        )
    if not np.all(np.isfinite(action)):
        raise InvalidAction(
            f"action contains NaN or Inf: {action.tolist()}; the policy diverged or its "
            "normalisation statistics are broken"
        )
    return action
