"""The ManiSkill3 Bridge backend.

`mani-skill` 3.0.1 installs here, but its Bridge assets are a Hugging Face download that this
machine cannot (and the project must not) fetch, so no ManiSkill3 env is built in these tests:
registration and configuration are checked on the real package, the asset refusal on the real
asset path, and the observation / action conversion on observations constructed in ManiSkill3's
layout (`obs["sensor_data"][camera]["rgb"]`, `obs["extra"]["tcp_pose"]`, `obs["agent"]["qpos"]`,
batch-first torch tensors) with a stand-in env object that records what it is given.
"""

import numpy as np
import pytest

from envs.maniskill3 import adapter
from envs.maniskill3.adapter import ENV_IDS, ManiSkill3Bridge, MissingManiSkillAssets, observation_from_ms3
from evalsuite.cli import main

torch = pytest.importorskip("torch")


def test_the_four_bridge_env_ids_are_registered_with_simpler_envs_budgets():
    pytest.importorskip("mani_skill")
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401
    from mani_skill.utils.registration import REGISTERED_ENVS

    budgets = {task: gym.registry[env_id].max_episode_steps for task, env_id in ENV_IDS.items()}
    assert budgets == {
        "spoon_on_towel": 60,
        "carrot_on_plate": 60,
        "stack_cube": 60,
        "eggplant_in_basket": 120,
    }
    settings = {task: REGISTERED_ENVS[env_id].cls.scene_setting for task, env_id in ENV_IDS.items()}
    # eggplant runs in the sink setup (widowx_sink_camera_setup in SimplerEnv), the rest on the flat table
    assert settings == {
        "spoon_on_towel": "flat_table",
        "carrot_on_plate": "flat_table",
        "stack_cube": "flat_table",
        "eggplant_in_basket": "sink",
    }
    assert all(REGISTERED_ENVS[e].asset_download_ids == ["bridge_v2_real2sim"] for e in ENV_IDS.values())


def _ms3_obs(tcp_x: float, gripper: float) -> dict:
    rgb = torch.zeros((1, 480, 640, 3), dtype=torch.uint8)
    rgb[0, 10, 20] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    return {
        "sensor_data": {"3rd_view_camera": {"rgb": rgb, "segmentation": torch.zeros((1, 480, 640, 1))}},
        "extra": {"tcp_pose": torch.tensor([[tcp_x, 0.1, 0.2, 1.0, 0.0, 0.0, 0.0]])},
        "agent": {"qpos": torch.tensor([[0.0] * 6 + [gripper, gripper]]), "qvel": torch.zeros((1, 8))},
    }


def test_observation_conversion_takes_batch_element_zero():
    obs = observation_from_ms3(_ms3_obs(0.3, 0.037), "put carrot on plate", render=True)
    image = obs.images["3rd_view_camera"]
    assert image.shape == (480, 640, 3) and image.dtype == np.uint8 and image[10, 20].tolist() == [1, 2, 3]
    assert obs.state.dtype == np.float32
    assert obs.state.tolist() == pytest.approx([0.3, 0.1, 0.2, 1.0, 0.0, 0.0, 0.0, 0.037, 0.037])
    assert observation_from_ms3(_ms3_obs(0.3, 0.0), "x", render=False).images == {}


class _StandInEnv:
    """Records what the adapter sends; answers in ManiSkill3's batch-first torch layout."""

    def __init__(self):
        self.actions, self.resets, self.unwrapped = [], [], self

    def get_language_instruction(self):
        return ["put carrot on plate"]

    def reset(self, seed=None, options=None):
        self.resets.append((seed, options))
        return _ms3_obs(0.0, 0.0), {}

    def step(self, action):
        self.actions.append(action)
        success = torch.tensor([len(self.actions) == 2])
        info = {"success": success, "elapsed_steps": torch.tensor([len(self.actions)])}
        return _ms3_obs(0.1, 0.0), torch.zeros(1), success, torch.tensor([False]), info

    def close(self):
        pass


def _bridge(monkeypatch, **kwargs):
    pytest.importorskip("mani_skill")
    stand_in = _StandInEnv()
    env = ManiSkill3Bridge(check_assets=False, **kwargs)
    monkeypatch.setattr(
        env.gym, "make", lambda env_id, **kw: stand_in.__setattr__("made", (env_id, kw)) or stand_in
    )
    return env, stand_in


def test_episode_k_is_seeded_and_identified_by_k_and_actions_use_the_widowx_convention(monkeypatch):
    env, stand_in = _bridge(monkeypatch)
    obs = env.reset("carrot_on_plate", 5, seed=0)
    env_id, kwargs = stand_in.made
    assert env_id == "PutCarrotOnPlateInScene-v1"
    assert kwargs["obs_mode"] == "rgb+segmentation" and kwargs["num_envs"] == 1
    assert kwargs["sim_backend"] == ("gpu" if torch.cuda.is_available() else "cpu")
    seed, options = stand_in.resets[-1]
    assert seed == 5 and options["episode_id"].tolist() == [5]
    assert obs.instruction == "put carrot on plate"

    _, done, success, info = env.step(np.array([0.1, 0, 0, 0, 0, 0, 0.9]))
    sent = stand_in.actions[-1]
    assert sent.shape == (1, 7) and sent.dtype == torch.float32
    assert sent[0, 6].item() == 1.0  # open01 0.9 -> +1 open (absolute WidowX gripper)
    assert (done, success, info["elapsed_steps"]) == (False, False, 1)
    _, done, success, _ = env.step(np.zeros(7))
    assert success and not done  # the published rule: no early end at success
    assert stand_in.actions[-1][0, 6].item() == -1.0


def test_first_success_ending_is_an_option(monkeypatch):
    env, _ = _bridge(monkeypatch, end_on_first_success=True)
    env.reset("stack_cube", 0, seed=0)
    env.step(np.zeros(7))
    _, done, success, _ = env.step(np.zeros(7))
    assert done and success


def test_google_robot_groups_are_refused():
    with pytest.raises(ValueError, match="Bridge \\(WidowX\\) tasks only"):
        ManiSkill3Bridge(group="google_vm")


def test_missing_assets_are_refused_before_any_download(monkeypatch, tmp_path, capsys):
    pytest.importorskip("mani_skill")
    monkeypatch.setattr(adapter, "asset_folder", lambda: tmp_path / "tasks" / "bridge_v2_real2sim_dataset")
    env = ManiSkill3Bridge()
    monkeypatch.setattr(env.gym, "make", lambda *a, **k: pytest.fail("gym.make must not run without assets"))
    with pytest.raises(MissingManiSkillAssets, match="download_asset bridge_v2_real2sim"):
        env.reset("spoon_on_towel", 0, 0)

    code = main(
        ["simpler-widowx", "--policy", "random", "--workers", "0", "--video", "none"]
        + ["--set", "backend=maniskill3", "--out", str(tmp_path / "run"), "-q"]
    )
    assert code == 2 and "bridge_v2_real2sim" in capsys.readouterr().err
