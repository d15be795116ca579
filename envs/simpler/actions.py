"""From a policy's 7-D action to the action each SimplerEnv robot's controller expects.

The env takes [xyz delta (3), axis-angle rotation delta (3), gripper (1)]. The grippers differ
(`notes/simplerenv-on-cpu.md`): WidowX's `gripper_pd_joint_pos` is absolute (+1 open, -1 close);
the Google robot's `gripper_pd_joint_target_delta_pos_interpolate_by_planner` is relative
(+1 close, -1 open, 0 keep). SimplerEnv's own policy wrappers do the conversion, and we follow
them (read, not copied):

* `open01` input (Octo / OXE convention: gripper in [0, 1], 1 = open, absolute) as in
  `simpler_env/policies/octo/octo_model.py:186-237`: WidowX binarises `2*(g > 0.5) - 1`; the Google
  robot turns the change of the absolute command into a relative one and, once a change larger
  than 0.5 happens, repeats it for 15 steps ("sticky gripper", as on the real robot).
* `closedness_pm1` input (RT-1 convention: +1 close, -1 open, relative) as in
  `simpler_env/policies/rt1/rt1_model.py:135-147, 209-221`: WidowX inverts and binarises; the
  Google robot passes it through after zeroing |g| < 0.01.

Rotation: `axis_angle` passes through (RT-1); `rpy` converts roll/pitch/yaw deltas to axis-angle
(Octo, `octo_model.py:180-184`, transforms3d `euler2axangle` = static xyz axes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

GRIPPER_INPUTS = ("open01", "closedness_pm1")
ROTATIONS = ("rpy", "axis_angle")
STICKY_REPEATS = {"widowx": 1, "google_robot": 15}  # octo_model.py:31-40


@dataclass
class GripperState:
    """Per-episode memory of the Google robot's sticky relative gripper."""

    previous: float | None = None
    sticky_on: bool = False
    repeat: int = 0
    sticky_action: float = 0.0


class ActionConverter:
    """Stateful per episode (the sticky gripper); call `reset()` at every episode start."""

    def __init__(self, robot_kind: str, gripper_input: str = "open01", rotation: str = "rpy"):
        if robot_kind not in STICKY_REPEATS:
            raise ValueError(f"unknown robot kind {robot_kind!r}; expected widowx or google_robot")
        if gripper_input not in GRIPPER_INPUTS:
            raise ValueError(
                f"gripper_input={gripper_input!r} is not one of {', '.join(GRIPPER_INPUTS)}; "
                "use open01 for Octo/OXE-style absolute gripper actions (1 = open)"
            )
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation={rotation!r} is not one of {', '.join(ROTATIONS)}")
        self.robot_kind = robot_kind
        self.gripper_input = gripper_input
        self.rotation = rotation
        self.state = GripperState()

    def reset(self) -> None:
        self.state = GripperState()

    def __call__(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        xyz, rot, grip = action[:3], action[3:6], float(action[6])
        if self.rotation == "rpy":
            rot = Rotation.from_euler("xyz", rot).as_rotvec()
        return np.concatenate([xyz, rot, [self._gripper(grip)]])

    def _gripper(self, g: float) -> float:
        if self.gripper_input == "closedness_pm1":
            if self.robot_kind == "widowx":
                return 1.0 if -g > 0 else -1.0  # invert (+1 close -> -1 close), then binarise
            return 0.0 if abs(g) < 1e-2 else g
        if self.robot_kind == "widowx":
            return 1.0 if g > 0.5 else -1.0
        return self._sticky_relative(g)

    def _sticky_relative(self, open_cmd: float) -> float:
        s = self.state
        relative = 0.0 if s.previous is None else s.previous - open_cmd  # open->close gives +1 = close
        s.previous = open_cmd
        if abs(relative) > 0.5 and not s.sticky_on:
            s.sticky_on, s.sticky_action = True, relative
        if s.sticky_on:
            s.repeat += 1
            relative = s.sticky_action
        if s.repeat == STICKY_REPEATS[self.robot_kind]:
            s.sticky_on, s.repeat, s.sticky_action = False, 0, 0.0
        return float(relative)
