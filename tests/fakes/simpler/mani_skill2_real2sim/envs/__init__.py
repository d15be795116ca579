"""Fake ManiSkill2_real2sim custom-scene envs, registered with gymnasium like the real ones.

Faithful to the API the adapter uses (MS ef7a4d4 `envs/sapien_env.py`, `envs/custom_scenes/*`):
constructor kwargs, `reset(seed=None, options=...)` with robot/object init options, the rgbd
observation layout (`agent.qpos`, `extra.tcp_pose`, `image.<camera>.rgb/depth/Segmentation`),
`terminated == info["success"]` as a numpy bool, `episode_stats`, the registered budgets,
`get_language_instruction`, `is_final_subtask` / `advance_to_next_subtask` and the forced advance of
put-in-drawer at step 100. Dynamics are kinematic: the tool point moves by 5 cm per unit of xyz
action; the task succeeds while it is within 3 cm (xy) of the goal with the gripper closed.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import gymnasium as gym
import numpy as np

BUILT: list[tuple[str, dict]] = []  # (env id, constructor kwargs) of every env built in this process
RESETS: list[dict] = []  # reset options, in order
STEPS: list[np.ndarray] = []  # actions the env received

BUDGETS = {
    "PutSpoonOnTableClothInScene-v0": 60,
    "PutCarrotOnPlateInScene-v0": 60,
    "StackGreenCubeOnYellowCubeBakedTexInScene-v0": 60,
    "PutEggplantInBasketScene-v0": 120,
    "GraspSingleOpenedCokeCanInScene-v0": 80,
    "GraspSingleOpenedCokeCanDistractorInScene-v0": 80,
    "GraspSingleOpenedCokeCanAltGoogleCameraInScene-v0": 80,
    "GraspSingleOpenedCokeCanAltGoogleCamera2InScene-v0": 80,
    "MoveNearGoogleBakedTexInScene-v0": 80,
    "MoveNearGoogleInScene-v0": 80,
    "MoveNearAltGoogleCameraInScene-v0": 80,
    "MoveNearAltGoogleCamera2InScene-v0": 80,
    "PlaceIntoClosedTopDrawerCustomInScene-v0": 200,
}
for _verb in ("Open", "Close"):
    for _level in ("Top", "Middle", "Bottom"):
        BUDGETS[f"{_verb}{_level}DrawerCustomInScene-v0"] = 113

INSTRUCTIONS = {
    "PutSpoonOnTableClothInScene-v0": "put the spoon on the towel",
    "PutCarrotOnPlateInScene-v0": "put carrot on plate",
    "StackGreenCubeOnYellowCubeBakedTexInScene-v0": "stack the green block on the yellow block",
    "PutEggplantInBasketScene-v0": "put eggplant into yellow basket",
}


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
        self.env_id, self.robot_uid, self.kwargs = env_id, robot, kwargs
        self.camera = "3rd_view_camera" if "widowx" in robot else "overhead_camera"
        self.shape = (480, 640, 3) if "widowx" in robot else (512, 640, 3)
        self._main_rng = np.random.RandomState(2022)  # sapien_env.py:185-188
        obs, _ = self.reset(seed=2022, options={"reconfigure": True})
        self.observation_space = _space(obs)  # convert_observation_to_space, sapien_env.py:189
        self.action_space = gym.spaces.Box(
            np.array([-1, -1, -1, -np.pi / 2, -np.pi / 2, -np.pi / 2, -1], np.float32),
            np.array([1, 1, 1, np.pi / 2, np.pi / 2, np.pi / 2, 1], np.float32),
        )

    # -- episode ---------------------------------------------------------------------------
    def reset(self, seed=None, options=None):
        options = dict(options or {})
        if "robot_init_options" in options:
            RESETS.append(options)
        robot = options.get("robot_init_options", {})
        obj = options.get("obj_init_options", {})
        xy = np.asarray(robot.get("init_xy", [0.35, 0.2]), dtype=float)
        self.tcp = np.array([xy[0], xy[1], 0.9])
        if "init_xy" in obj:
            self.goal = np.asarray(obj["init_xy"], dtype=float) + xy
        else:
            k = int(obj.get("episode_id", 0))
            self.goal = xy + np.array([0.02 * (k % 5), 0.02 * (k % 3)])
        self.closed = 0.0
        self.cur_subtask_id = 0
        self._elapsed_steps = 0
        self.episode_stats = OrderedDict(n_near=0, has_contact=0)
        info = {"episode_id": obj.get("episode_id"), "robot_init_xy": xy.tolist()}
        if self.env_id.startswith("GraspSingle"):
            info.update(model_id="opened_coke_can", orientation=self._orientation())
        if "Drawer" in self.env_id:
            info.update(station_name=self.kwargs.get("station_name", "mk_station"), light_mode="simple")
        return self._obs(), info

    def step(self, action):
        action = np.asarray(action, dtype=float)
        if action.shape != (7,):
            raise ValueError(f"action shape {action.shape} != (7,)")
        STEPS.append(action)
        if self.env_id.startswith("PlaceIntoClosed") and self._elapsed_steps >= 100:
            self.advance_to_next_subtask()  # place_in_closed_drawer_in_scene.py:242-246
        self.tcp = self.tcp + 0.05 * np.clip(action[:3], -1, 1)
        if "widowx" in self.robot_uid:  # absolute: +1 open
            self.closed = 0.0 if action[6] > 0 else 1.0
        else:  # relative: +1 close
            self.closed = float(np.clip(self.closed + action[6], 0, 1))
        self._elapsed_steps += 1
        near = bool(np.linalg.norm(self.tcp[:2] - self.goal) < 0.03 and self.closed > 0.5)
        self.episode_stats["n_near"] += int(near)
        if self.env_id.startswith("GraspSingle"):  # any-step component (grasp_single_in_scene.py:450)
            success = near or self.episode_stats["n_near"] >= 5
        elif self.env_id.startswith("PlaceIntoClosed"):
            self.episode_stats["has_contact"] += int(near)
            success = self.cur_subtask_id == 1 and self.episode_stats["has_contact"] >= 1 and near
        else:
            success = near
        info = {
            "elapsed_steps": self._elapsed_steps,
            "success": np.bool_(success),
            "episode_stats": OrderedDict(self.episode_stats),
        }
        if "Drawer" in self.env_id:
            info["qpos"] = float(self.closed)
        return self._obs(), 0.0, bool(info["success"]), False, info

    # -- SimplerEnv extras -----------------------------------------------------------------------
    def get_language_instruction(self, **kwargs):
        if self.env_id in INSTRUCTIONS:
            return INSTRUCTIONS[self.env_id]
        if self.env_id.startswith("GraspSingle"):
            return "pick coke can"
        if self.env_id.startswith("MoveNear"):
            return "move blue plastic bottle near pepsi can"
        if self.env_id.startswith("PlaceIntoClosed"):
            return "open top drawer" if self.cur_subtask_id == 0 else "place apple into top drawer"
        verb = "open" if self.env_id.startswith("Open") else "close"
        level = self.env_id.removeprefix("Open").removeprefix("Close").split("Drawer")[0].lower()
        return f"{verb} {level} drawer"

    def is_final_subtask(self):
        return not self.env_id.startswith("PlaceIntoClosed") or self.cur_subtask_id == 1

    def advance_to_next_subtask(self):
        self.cur_subtask_id = 1

    def _orientation(self):
        for key, name in (
            ("lr_switch", "horizontal"),
            ("upright", "standing"),
            ("laid_vertically", "vertical"),
        ):
            if self.kwargs.get(key):
                return name
        return "random"

    def _obs(self):
        rgb = np.zeros(self.shape, dtype=np.uint8)
        rgb[..., 0] = int(255 * np.clip(self.tcp[0], 0, 1))
        rgb[..., 1] = int(255 * self.closed)
        image = {"rgb": rgb, "depth": np.zeros(self.shape[:2] + (1,), np.float32)}
        image["Segmentation"] = np.zeros(self.shape[:2] + (4,), np.uint32)
        qpos = np.concatenate([np.zeros(6), [self.closed, self.closed]])
        return {
            "agent": {"qpos": qpos.astype(np.float32), "qvel": np.zeros(8, np.float32)},
            "extra": {"tcp_pose": np.concatenate([self.tcp, [1.0, 0, 0, 0]]).astype(np.float32)},
            "image": {self.camera: image},
        }


def _space(obs):
    if isinstance(obs, dict):
        return gym.spaces.Dict({k: _space(v) for k, v in obs.items()})
    if np.issubdtype(obs.dtype, np.integer):
        info = np.iinfo(obs.dtype)
        return gym.spaces.Box(info.min, info.max, obs.shape, obs.dtype)
    return gym.spaces.Box(-np.inf, np.inf, obs.shape, obs.dtype)


def _register():
    for env_id, budget in BUDGETS.items():
        if env_id not in gym.registry:
            gym.register(
                env_id, entry_point=FakeCustomSceneEnv, max_episode_steps=budget, kwargs={"env_id": env_id}
            )


_register()
