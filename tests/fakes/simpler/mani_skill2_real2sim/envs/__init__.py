"""Fake ManiSkill2_real2sim custom-scene envs, driven by what the real simulator returned.

Everything the adapter can read is taken from `tests/fixtures/simpler_real.json`, recorded from the
real SimplerEnv by `scripts/record_simpler_fixture.py` (see that file's `recorded` block for the
versions and commits): which env ids exist and their budgets, the action space, the observation's
keys, shapes and dtypes (an empty `extra` on the drawer envs, `base_pose` under `agent`), the
reset-info and step-info keys, the robot's active joints in qpos order, its finger joints and TCP
link, the robot base pose and the TCP orientation, the first instruction. An env id the fixture
does not have is not registered, and a key the real env does not return is not in the fake's
observation, so the adapter cannot pass a test by reading something the real package lacks.

What is not from the fixture is the motion: the tool point starts at its recorded pose and moves
kinematically, 5 cm per unit of xyz action; the goal lies at the object's init xy (or a small
offset per episode id) from the tool point's start; the task succeeds while the tool point is
within 3 cm (xy) of the goal with the gripper closed. The robot base stays at its recorded pose.
Success semantics that the tests exercise follow the env classes (ManiSkill2_real2sim ef7a4d4):
coke can's any-step component (`grasp_single_in_scene.py:450`), the put-in-drawer forced subtask
advance at step 100 (`place_in_closed_drawer_in_scene.py:242-246`) and its second instruction. Nothing measured on this fake is a SimplerEnv result.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np

FIXTURE_PATH = Path(__file__).resolve().parents[4] / "fixtures" / "simpler_real.json"
FIXTURE = json.loads(FIXTURE_PATH.read_text())["envs"]

BUILT: list[tuple[str, dict]] = []  # (env id, constructor kwargs) of every env built in this process
RESETS: list[dict] = []  # reset options, in order
STEPS: list[np.ndarray] = []  # actions the env received


def recorded_value(value):
    """Undo `record_simpler_fixture.small_value`: numpy scalars and small arrays come back as such."""
    if isinstance(value, dict) and "numpy" in value:
        if "value" not in value:
            dtype = value["numpy"].removeprefix("ndarray[").rstrip("]")
            return np.zeros(value["shape"], dtype=dtype)
        if value["numpy"].startswith("ndarray"):
            return np.asarray(value["value"], dtype=value["numpy"].removeprefix("ndarray[").rstrip("]"))
        return getattr(np, value["numpy"])(value["value"])
    if isinstance(value, dict) and "repr" in value:
        return value["repr"]
    if isinstance(value, dict):
        return {k: recorded_value(v) for k, v in value.items()}
    return value


def zeros_like_recorded(structure):
    if "shape" in structure and "dtype" in structure:
        return np.zeros(structure["shape"], dtype=structure["dtype"])
    return OrderedDict((k, zeros_like_recorded(v)) for k, v in structure.items())


class Pose:
    def __init__(self, p, q):
        self.p, self.q = np.asarray(p, dtype=np.float32), np.asarray(q, dtype=np.float32)


class FakeCustomSceneEnv(gym.Env):
    def __init__(
        self, env_id: str, obs_mode=None, robot="google_robot_static", rgb_overlay_path=None, **kwargs
    ):
        if obs_mode != "rgbd":
            raise ValueError(f"fake supports obs_mode='rgbd' only, got {obs_mode!r}")
        if rgb_overlay_path is not None and not os.path.exists(rgb_overlay_path):
            raise FileNotFoundError(f"rgb_overlay_path {rgb_overlay_path} is not found.")
        BUILT.append(
            (env_id, {"obs_mode": obs_mode, "robot": robot, "rgb_overlay_path": rgb_overlay_path, **kwargs})
        )
        self.real = FIXTURE[env_id]
        self.env_id, self.robot_uid, self.kwargs = env_id, robot, kwargs
        self.fingers = [self.real["active_joints"].index(n) for n in self.real["gripper_joint_names"]]
        joints = [SimpleNamespace(name=n) for n in self.real["active_joints"]]
        first = self.real["poses"][0]
        self.agent = SimpleNamespace(
            config=SimpleNamespace(
                gripper_joint_names=list(self.real["gripper_joint_names"]),
                ee_link_name=self.real["ee_link_name"],
            ),
            robot=SimpleNamespace(
                get_active_joints=lambda: joints, pose=Pose(first["robot_pose_p"], first["robot_pose_q"])
            ),
        )
        obs, _ = self.reset(seed=2022, options={"reconfigure": True})
        self.observation_space = _space(obs)  # convert_observation_to_space, sapien_env.py:189
        space = self.real["action_space"]
        self.action_space = gym.spaces.Box(
            np.array(space["low"], np.float32), np.array(space["high"], np.float32)
        )

    @property
    def tcp(self):
        return SimpleNamespace(name=self.real["tcp_link_name"], pose=Pose(self.tcp_p, self.tcp_q))

    # -- episode ---------------------------------------------------------------------------
    def reset(self, seed=None, options=None):
        options = dict(options or {})
        if "robot_init_options" in options:
            RESETS.append(options)
        obj = options.get("obj_init_options", {})
        # the tool point starts where the real one was after the recorded reset (world frame)
        self.tcp_p = np.asarray(self.real["poses"][0]["tcp_p"], dtype=float)
        self.tcp_q = np.asarray(self.real["poses"][0]["tcp_q"])
        start = self.tcp_p[:2]
        if "init_xy" in obj:
            self.goal = np.asarray(obj["init_xy"], dtype=float) + start
        else:
            k = int(obj.get("episode_id", 0))
            self.goal = start + np.array([0.02 * (k % 5), 0.02 * (k % 3)])
        self.closed = 0.0
        self.cur_subtask_id = 0
        self._elapsed_steps = 0
        self.episode_stats = OrderedDict((k, 0) for k in self._recorded_stats())
        self.episode_stats.setdefault("n_near", 0)
        info = recorded_value(self.real["reset_info"])
        if "episode_id" in info:
            info["episode_id"] = obj.get("episode_id", info["episode_id"])
        return self._obs(), info

    def step(self, action):
        action = np.asarray(action, dtype=float)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action shape {action.shape} != {self.action_space.shape}")
        STEPS.append(action)
        if self.env_id.startswith("PlaceIntoClosed") and self._elapsed_steps >= 100:
            self.advance_to_next_subtask()
        self.tcp_p = self.tcp_p + 0.05 * np.clip(action[:3], -1, 1)
        if "widowx" in self.robot_uid:  # absolute: +1 open
            self.closed = 0.0 if action[6] > 0 else 1.0
        else:  # relative: +1 close
            self.closed = float(np.clip(self.closed + action[6], 0, 1))
        self._elapsed_steps += 1
        near = bool(np.linalg.norm(self.tcp_p[:2] - self.goal) < 0.03 and self.closed > 0.5)
        self.episode_stats["n_near"] += int(near)
        if self.env_id.startswith("GraspSingle"):
            success = near or self.episode_stats["n_near"] >= 5
        elif self.env_id.startswith("PlaceIntoClosed"):
            self.episode_stats["has_contact"] = self.episode_stats.get("has_contact", 0) + int(near)
            success = self.cur_subtask_id == 1 and self.episode_stats["has_contact"] >= 1 and near
        else:
            success = near
        info = recorded_value(self.real["steps"][0]["info"])  # every key the real step returned
        info.update(
            elapsed_steps=self._elapsed_steps,
            success=np.bool_(success),
            episode_stats=OrderedDict(self.episode_stats),
        )
        return self._obs(), 0.0, bool(info["success"]), False, info

    def _recorded_stats(self):
        return list(self.real["steps"][0]["info"].get("episode_stats", {}))

    # -- SimplerEnv extras -----------------------------------------------------------------------
    def get_language_instruction(self, **kwargs):
        if self.env_id.startswith("PlaceIntoClosed") and self.cur_subtask_id == 1:
            return "place apple into top drawer"  # place_in_closed_drawer_in_scene.py, second subtask
        return self.real["instruction"]

    def is_final_subtask(self):
        return not self.env_id.startswith("PlaceIntoClosed") or self.cur_subtask_id == 1

    def advance_to_next_subtask(self):
        self.cur_subtask_id = 1

    def _obs(self):
        obs = zeros_like_recorded(self.real["obs"])
        qpos = np.asarray(self.real["poses"][0]["qpos"], dtype=obs["agent"]["qpos"].dtype)
        qpos[self.fingers] += self.closed  # the recorded (open) finger joints, shifted when closed
        obs["agent"]["qpos"] = qpos
        if "base_pose" in obs["agent"]:
            obs["agent"]["base_pose"] = np.asarray(
                self.real["poses"][0]["obs_base_pose"], dtype=obs["agent"]["base_pose"].dtype
            )
        if "tcp_pose" in obs["extra"]:
            obs["extra"]["tcp_pose"] = np.concatenate([self.tcp_p, self.tcp_q]).astype(np.float32)
        for camera in obs["image"].values():  # a picture that changes with the state, for videos
            camera["rgb"][..., 0] = int(255 * np.clip(self.tcp_p[0], 0, 1))
            camera["rgb"][..., 1] = int(255 * self.closed)
        return obs


def _space(obs):
    if isinstance(obs, dict):
        return gym.spaces.Dict({k: _space(v) for k, v in obs.items()})
    if np.issubdtype(obs.dtype, np.integer):
        info = np.iinfo(obs.dtype)
        return gym.spaces.Box(info.min, info.max, obs.shape, obs.dtype)
    return gym.spaces.Box(-np.inf, np.inf, obs.shape, obs.dtype)


def _register():
    for env_id, real in FIXTURE.items():
        gym.registry.pop(env_id, None)  # a re-import (tests reload the fake) registers its own class
        gym.register(
            env_id,
            entry_point=FakeCustomSceneEnv,
            max_episode_steps=real["max_episode_steps"],
            kwargs={"env_id": env_id},
            disable_env_checker=True,  # as the real one (utils/registration.py:158): empty `extra`
        )


_register()
