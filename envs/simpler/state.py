"""The proprioceptive state a SimplerEnv policy sees, read the way ManiSkill2_real2sim exposes it.

Layout (9 numbers, float32, the same on both robots and every task family):

    [0:3] tool-centre-point position in the robot base frame (m)
    [3:7] tool-centre-point orientation in the robot base frame, quaternion w, x, y, z
    [7:9] the two finger joints, in the order of the robot config's `gripper_joint_names`
          (WidowX `left_finger, right_finger`, metres, 0.037 = open; Google robot
          `joint_finger_right, joint_finger_left`, radians, 0 = open, about 1.07 = closed)

Where each number comes from (ManiSkill2_real2sim ef7a4d4, checked against the real simulator:
`tests/fixtures/simpler_real.json`):

- The tool centre point is `env.unwrapped.tcp`, the link named by the robot config's
  `ee_link_name` (`custom_scenes/base_env.py:255`). Only the grasp and move-near envs copy its
  pose into `obs["extra"]["tcp_pose"]`; the drawer envs leave `obs["extra"]` empty, so the pose
  is read from the link itself on every task.
- The robot base is `obs["agent"]["base_pose"]` (`base_env.py:344-347`, world frame, p + wxyz).
  Bridge and Fractal give the end effector relative to the robot base, and the Google robot is
  placed at a different world pose in every task, so the world-frame pose would change with the
  scene and not with the arm.
- The finger joints are looked up by name among `agent.robot.get_active_joints()`, whose order is
  the order of `obs["agent"]["qpos"]`: on the Google robot the last two entries are the head's pan
  and tilt, not the gripper.

Bridge's 7-D state (xyz, roll-pitch-yaw, gripper) and Fractal's 8-D one (xyz, xyzw quaternion,
gripper closedness) are both functions of these 9 numbers (docs/simpler.md#state).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from envs.base import AdapterMismatch

STATE_DIM = 9


class StateReadError(AdapterMismatch):
    """The simulator does not expose what the state is built from (a missing key or link, a wrong
    shape)."""


def pose_in_frame(
    p: np.ndarray, q_wxyz: np.ndarray, frame_p: np.ndarray, frame_q_wxyz: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The pose (p, q) expressed in the frame (frame_p, frame_q): sapien's `frame.inv() * pose`."""
    frame_rot = Rotation.from_quat(np.roll(frame_q_wxyz, -1))  # scipy wants x, y, z, w
    rel_p = frame_rot.inv().apply(np.asarray(p, dtype=np.float64) - frame_p)
    rel_q = (frame_rot.inv() * Rotation.from_quat(np.roll(q_wxyz, -1))).as_quat()
    rel_q = np.roll(rel_q, 1)  # back to w, x, y, z
    return rel_p, rel_q if rel_q[0] >= 0 else -rel_q  # one sign for the same rotation


def finger_indices(unwrapped: Any) -> tuple[int, int]:
    """Positions of the two finger joints in `obs["agent"]["qpos"]`, found by name."""
    try:
        wanted = list(unwrapped.agent.config.gripper_joint_names)
        active = [joint.name for joint in unwrapped.agent.robot.get_active_joints()]
    except AttributeError as e:
        raise StateReadError(f"cannot read the robot's joint names ({e})") from e
    missing = [name for name in wanted if name not in active]
    if len(wanted) != 2 or missing:
        raise StateReadError(
            f"expected two finger joints among the active joints {active}, got {wanted} (missing {missing})"
        )
    return active.index(wanted[0]), active.index(wanted[1])


def robot_state(unwrapped: Any, obs: dict, fingers: tuple[int, int]) -> np.ndarray:
    """The 9-D state of the module docstring, from the env and its latest observation."""
    try:
        base = np.asarray(obs["agent"]["base_pose"], dtype=np.float64)
        qpos = np.asarray(obs["agent"]["qpos"], dtype=np.float64)
        tcp = unwrapped.tcp.pose
        tcp_p, tcp_q = np.asarray(tcp.p, dtype=np.float64), np.asarray(tcp.q, dtype=np.float64)
    except (KeyError, AttributeError, TypeError) as e:
        keys = {k: sorted(v) if isinstance(v, dict) else type(v).__name__ for k, v in obs.items()}
        raise StateReadError(
            f"the observation or env lacks what the state is read from ({type(e).__name__}: {e}); "
            f"observation keys: {keys}"
        ) from e
    if base.shape != (7,) or tcp_p.shape != (3,) or tcp_q.shape != (4,) or qpos.ndim != 1:
        raise StateReadError(
            f"unexpected shapes: base_pose {base.shape} (want 7), tcp p {tcp_p.shape} / q {tcp_q.shape} "
            f"(want 3 / 4), qpos {qpos.shape} (want 1-D)"
        )
    if max(fingers) >= len(qpos):
        raise StateReadError(f"finger joints {fingers} outside qpos of length {len(qpos)}")
    p, q = pose_in_frame(tcp_p, tcp_q, base[:3], base[3:])
    return np.concatenate([p, q, qpos[list(fingers)]]).astype(np.float32)
