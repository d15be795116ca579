"""SimplerEnv (ManiSkill2_real2sim, SAPIEN 2) as an `Env`, episode by episode as its scripts run them.

Each episode builds a fresh env with `gym.make(env_id, ...)` and the configuration's kwargs, and
resets it with the configuration's robot / object options (`protocol/simpler/README.md` sec. 1),
never `simpler_env.make`, whose built-in configs randomise URDF, overlay and poses. A fresh env is
also what makes residual env randomness identical to the published runs (main RNG seeded 2022 at
construction), so the harness `seed` does not reach the simulator.

Episode end: `done` is True only when the policy terminates on the final subtask (or, with
`end_on_first_success`, at the first success); otherwise the harness runs the whole budget and
reads `success` at the last step, as SimplerEnv's evaluator does (`maniskill2_evaluator.py:110-126`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from envs.base import AdapterMismatch, Observation, SimulatorMissing, check_action
from envs.simpler.actions import ActionConverter
from envs.simpler.assets import check_assets, check_plan_assets
from envs.simpler.state import finger_indices, robot_state
from envs.simpler.sweep import POLICY_CAMERA, SweepConfig, configs_by_name

log = logging.getLogger(__name__)
INSTALL_HINT = "see docs/simpler.md#install (SimplerEnv is installed from its git repositories, not PyPI)"
BACKENDS = ("sapien2", "maniskill3")
OCTO_INIT_RNGS = (0, 2, 4)  # octo_bridge.sh:18, 63


def import_simulator() -> tuple[Any, Any, Path]:
    """(gymnasium, get_image_from_maniskill2_obs_dict, ASSET_DIR), or SimulatorMissing naming what is absent."""
    try:
        import gymnasium as gym
        import mani_skill2_real2sim
        import mani_skill2_real2sim.envs  # noqa: F401  (registers the env ids with gymnasium)
        from simpler_env.utils.env.observation_utils import get_image_from_maniskill2_obs_dict
    except ImportError as e:
        raise SimulatorMissing(
            f"SimplerEnv is not importable ({e.name or e} is missing); {INSTALL_HINT}"
        ) from e
    return gym, get_image_from_maniskill2_obs_dict, Path(mani_skill2_real2sim.ASSET_DIR)


class SimplerEnv:
    """One worker's SimplerEnv: builds the episode's env in `reset`, closes it at the next one."""

    def __init__(
        self,
        group: str,
        gripper_input: str = "open01",
        rotation: str = "rpy",
        end_on_first_success: bool = False,
        seed_repeats: int = 1,
        check_assets: bool = True,
        asset_dir: str | None = None,
        terminate_in_action: bool = False,
    ):
        self.configs = configs_by_name(group)
        if seed_repeats not in (1, len(OCTO_INIT_RNGS)):
            raise ValueError(
                f"seed_repeats={seed_repeats}: use 1 (RT-1 scripts) or 3 (Octo's Bridge seeds 0,2,4)"
            )
        self.gym, self.get_image, default_assets = import_simulator()
        self.asset_dir = Path(asset_dir) if asset_dir else default_assets
        self.gripper_input, self.rotation = gripper_input, rotation
        self.end_on_first_success = end_on_first_success
        self.seed_repeats = seed_repeats
        self.check = check_assets
        self.action_dim = 8 if terminate_in_action else 7  # 8th entry > 0 = RT-1-style terminate
        self.env: Any = None
        self.config: SweepConfig | None = None
        self.converter: ActionConverter | None = None
        self.obs: dict | None = None
        self.instruction = ""
        self.is_final_subtask = True
        self.fingers = (0, 0)

    def reset(self, task: str, episode_index: int, seed: int) -> Observation:
        if task not in self.configs:
            sample = ", ".join(list(self.configs)[:5])
            raise KeyError(f"unknown SimplerEnv task {task!r}; known tasks include {sample}")
        config = self.configs[task]
        repeat, index = divmod(episode_index, config.episodes)
        if repeat >= self.seed_repeats:
            raise IndexError(f"episode {episode_index} >= {config.episodes * self.seed_repeats} for {task!r}")
        if self.check:
            check_assets(config, self.asset_dir)
        self.close()
        overlay = str(self.asset_dir / "real_inpainting" / Path(config.rgb_overlay_path).name)
        kwargs = config.gym_make_kwargs(overlay if config.rgb_overlay_path else None)
        self.env = self.gym.make(config.env_name, **kwargs)
        options = config.reset_options(index)
        options["robot_init_options"]["init_xy"] = np.array(options["robot_init_options"]["init_xy"])
        if "init_xy" in options["obj_init_options"]:
            options["obj_init_options"]["init_xy"] = np.array(options["obj_init_options"]["init_xy"])
        self.obs, self.reset_info = self.env.reset(options=options)
        self.config = config
        self.octo_init_rng = OCTO_INIT_RNGS[repeat] if self.seed_repeats > 1 else 0
        self.converter = ActionConverter(config.robot_kind, self.gripper_input, self.rotation)
        unwrapped = self.env.unwrapped
        self.fingers = finger_indices(unwrapped)
        self.is_final_subtask = bool(unwrapped.is_final_subtask())
        self.instruction = unwrapped.get_language_instruction()
        return self._observation(render=True)

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool, bool, dict]:
        if self.env is None:
            raise RuntimeError("step() before reset(): call reset(task, episode_index, seed) first")
        action = check_action(action, self.action_dim)
        unwrapped = self.env.unwrapped
        terminate = self.action_dim == 8 and action[7] > 0
        if terminate and not self.is_final_subtask:
            # maniskill2_evaluator.py:114-119: terminate on a non-final subtask advances it instead
            unwrapped.advance_to_next_subtask()
            terminate = False
        self.obs, _, terminated, truncated, info = self.env.step(self.converter(action[:7]))
        success = bool(info["success"])  # numpy bool; `terminated` is the same flag
        self.instruction = unwrapped.get_language_instruction()
        self.is_final_subtask = bool(unwrapped.is_final_subtask())
        done = bool(terminate or (self.end_on_first_success and success))
        out = {k: v for k, v in info.items() if k != "episode_stats"}
        out.update({f"stat_{k}": v for k, v in info.get("episode_stats", {}).items()})
        out.update(
            truncated=bool(truncated), policy_terminated=bool(terminate), octo_init_rng=self.octo_init_rng
        )
        return self._observation(render), done, success, out

    def render_frame(self) -> np.ndarray:
        return np.ascontiguousarray(self.get_image(self.env.unwrapped, self.obs))

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def _observation(self, render: bool) -> Observation:
        images = {}
        if render:
            camera = POLICY_CAMERA[self.config.robot_kind]
            try:
                images[camera] = np.ascontiguousarray(self.get_image(self.env.unwrapped, self.obs))
            except KeyError as e:
                cameras = sorted(self.obs.get("image", {}))
                raise AdapterMismatch(
                    f"{self.config.env_name}: no image {e} in the observation (cameras: {cameras})"
                ) from e
        state = robot_state(self.env.unwrapped, self.obs, self.fingers)  # layout: envs/simpler/state.py
        return Observation(images=images, state=state, instruction=self.instruction)


def preflight(
    tasks: list[str],
    group: str,
    backend: str = "sapien2",
    check_assets: bool = True,
    asset_dir: str | None = None,
    **_: Any,
) -> None:
    """Before a run writes anything: the simulator imports and every planned task's assets exist
    (`SuiteSpec.preflight`; called with the suite's env kwargs)."""
    if backend != "sapien2":
        return  # the ManiSkill3 backend checks its own downloads when it builds an env
    _, _, default_assets = import_simulator()
    if check_assets:
        configs = configs_by_name(group)
        check_plan_assets([configs[t] for t in tasks], Path(asset_dir) if asset_dir else default_assets)


def make_env(group: str, backend: str = "sapien2", **kwargs: Any):
    """Factory referenced by the suite registry (`envs.simpler:make_env`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "maniskill3":
        from envs.maniskill3 import make_env as make_ms3

        return make_ms3(group=group, **kwargs)
    return SimplerEnv(group, **kwargs)
