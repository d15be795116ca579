"""The four Bridge (WidowX) tasks on ManiSkill3 (`mani-skill` on PyPI) as an `Env`.

ManiSkill3 ports SimplerEnv's Bridge tasks as `...-v1` env ids with the same 24 initial states
per task (12 ordered object-position pairs x 2 orientations, `episode_id` decoded by the env) and
the same 5 Hz control, 500 Hz simulation and 60 / 120 step budgets. Episode k is run as
SimplerEnv's ManiSkill3 evaluator does (`simpler_env/real2sim_eval_maniskill3.py`, branch
`maniskill3`): `reset(seed=k, options={"episode_id": tensor([k])})` on one reused env, the policy
image from `obs["sensor_data"]["3rd_view_camera"]["rgb"]` (greenscreened with the real overlay by
the env), success read at the last step. The GPU simulation backend is used when CUDA is present
(`sim_backend="auto"`); one env per worker, since the harness contract steps one episode at a time.

Assets (`bridge_v2_real2sim`, a Hugging Face dataset) are never downloaded from here: a missing
asset folder is refused with the command that fetches it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from envs.base import Observation, SetupError, SimulatorMissing, check_action
from envs.simpler.actions import ActionConverter

ENV_IDS = {  # harness task (simpler-widowx) -> ManiSkill3 env id
    "spoon_on_towel": "PutSpoonOnTableClothInScene-v1",
    "carrot_on_plate": "PutCarrotOnPlateInScene-v1",
    "stack_cube": "StackGreenCubeOnYellowCubeBakedTexInScene-v1",
    "eggplant_in_basket": "PutEggplantInBasketScene-v1",
}
CAMERA = "3rd_view_camera"
ASSET_ID = "bridge_v2_real2sim"
INSTALL_HINT = "pip install -e .[maniskill3]; see docs/simpler.md#maniskill3"


class MissingManiSkillAssets(SetupError):
    """ManiSkill3's Bridge assets are not on disk (they are a separate download)."""


def import_maniskill3() -> tuple[Any, Any]:
    try:
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the env ids)
        import torch
    except ImportError as e:
        raise SimulatorMissing(
            f"ManiSkill3 is not importable ({e.name or e} is missing); {INSTALL_HINT}"
        ) from e
    return gym, torch


def asset_folder() -> Path:
    from mani_skill.utils.assets.data import DATA_SOURCES

    source = DATA_SOURCES[ASSET_ID]
    return Path(source.output_dir) / source.target_path


def check_assets() -> None:
    folder = asset_folder()
    if not folder.is_dir():
        raise MissingManiSkillAssets(
            f"ManiSkill3 Bridge assets missing: {folder} does not exist. Fetch them once with "
            f"`python -m mani_skill.utils.download_asset {ASSET_ID}` (or set MS_ASSET_DIR); "
            "see docs/simpler.md#maniskill3"
        )


def observation_from_ms3(obs: dict, instruction: str, render: bool) -> Observation:
    """Batch element 0 of a ManiSkill3 observation (torch tensors) as an `Observation`.

    State: tcp pose (xyz + wxyz quaternion) and the two gripper joints, the same 9 numbers as the
    SAPIEN-2 backend gives.
    """
    images = {}
    if render:
        rgb = obs["sensor_data"][CAMERA]["rgb"][0]
        images[CAMERA] = np.ascontiguousarray(_numpy(rgb).astype(np.uint8))
    tcp = _numpy(obs["extra"]["tcp_pose"][0])
    qpos = _numpy(obs["agent"]["qpos"][0])
    state = np.concatenate([tcp, qpos[-2:]]).astype(np.float32)
    return Observation(images=images, state=state, instruction=instruction)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class ManiSkill3Bridge:
    """One ManiSkill3 env per worker, rebuilt only when the task changes."""

    def __init__(
        self,
        group: str = "widowx",
        gripper_input: str = "open01",
        rotation: str = "rpy",
        end_on_first_success: bool = False,
        sim_backend: str = "auto",
        shader: str = "default",
        check_assets: bool = True,
        **unused: Any,
    ):
        if group != "widowx":
            raise ValueError(
                f"the ManiSkill3 backend has the Bridge (WidowX) tasks only, not {group!r}; "
                "run the Google robot suites with backend=sapien2"
            )
        ignored = {
            k: v for k, v in unused.items() if k not in ("seed_repeats", "asset_dir", "terminate_in_action")
        }
        if ignored:
            raise ValueError(f"unknown ManiSkill3 backend option(s): {', '.join(sorted(ignored))}")
        self.gym, self.torch = import_maniskill3()
        self.sim_backend = sim_backend
        if sim_backend == "auto":
            self.sim_backend = "gpu" if self.torch.cuda.is_available() else "cpu"
        self.shader = shader
        self.check = check_assets
        self.end_on_first_success = end_on_first_success
        self.converter = ActionConverter("widowx", gripper_input, rotation)
        self.env: Any = None
        self.task: str | None = None
        self.obs: dict | None = None
        self.instruction = ""

    def reset(self, task: str, episode_index: int, seed: int) -> Observation:
        if task not in ENV_IDS:
            raise KeyError(f"unknown Bridge task {task!r}; expected one of {', '.join(ENV_IDS)}")
        if task != self.task:
            if self.check:
                check_assets()
            self.close()
            self.env = self.gym.make(
                ENV_IDS[task],
                obs_mode="rgb+segmentation",
                num_envs=1,
                sim_backend=self.sim_backend,
                sensor_configs={"shader_pack": self.shader},
            )
            self.task = task
        episode = self.torch.tensor([episode_index])
        # the published ManiSkill3 loop seeds episode k with k; the episode id picks the initial state
        self.obs, _ = self.env.reset(seed=episode_index, options={"episode_id": episode})
        self.converter.reset()
        self.instruction = self.env.unwrapped.get_language_instruction()[0]
        return observation_from_ms3(self.obs, self.instruction, render=True)

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool, bool, dict]:
        if self.env is None:
            raise RuntimeError("step() before reset(): call reset(task, episode_index, seed) first")
        action = check_action(action, 7)
        command = self.torch.as_tensor(self.converter(action)[None], dtype=self.torch.float32)
        self.obs, _, _, truncated, info = self.env.step(command)
        success = bool(_numpy(info["success"]).reshape(-1)[0])
        done = self.end_on_first_success and success
        out = {k: _numpy(v).reshape(-1)[0].item() for k, v in info.items() if _numpy(v).size == 1}
        out["truncated"] = bool(_numpy(truncated).reshape(-1)[0])
        return observation_from_ms3(self.obs, self.instruction, render), done, success, out

    def render_frame(self) -> np.ndarray:
        return observation_from_ms3(self.obs, self.instruction, render=True).images[CAMERA]

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env, self.task = None, None


def make_env(**kwargs: Any) -> ManiSkill3Bridge:
    return ManiSkill3Bridge(**kwargs)
