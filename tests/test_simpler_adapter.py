"""The SimplerEnv adapter against a faithful fake of simpler_env + mani_skill2_real2sim.

The fake (tests/fakes/simpler, see its README) keeps the real package's module paths, function
names, env ids and budgets, constructor kwargs, reset options, observation layout and info keys
(as /work/shared/notes/simplerenv-on-cpu.md records them); its dynamics are kinematic, not SAPIEN,
so nothing here is a SimplerEnv success rate.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.base import InvalidAction, SimulatorMissing
from envs.simpler.actions import ActionConverter
from envs.simpler.assets import required_files
from envs.simpler.sweep import configs_by_name
from evalsuite.cli import main
from evalsuite.episode import run_episode
from evalsuite.records import EpisodeSpec
from evalsuite.suites import registry

gymnasium = pytest.importorskip("gymnasium")
FAKES = Path(__file__).resolve().parent / "fakes" / "simpler"


def _write_assets(root: Path) -> None:
    for group in ("widowx", "google_vm", "google_va"):
        for config in configs_by_name(group).values():
            for f in required_files(config, root):
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text("<robot name='cabinet'/>" if f.suffix == ".urdf" else "stand-in")
    for model in (root / "custom" / "models").iterdir():
        (model / "textured.obj").write_text("stand-in")


@pytest.fixture
def fake_simpler(monkeypatch, tmp_path):
    """Put the fake packages on the path (here and for Ray workers) with a complete asset tree."""
    assets = tmp_path / "ms2_data"
    _write_assets(assets)
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKES), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MS2_REAL2SIM_ASSET_DIR", str(assets))
    for name in [m for m in sys.modules if m.startswith(("mani_skill2_real2sim", "simpler_env"))]:
        monkeypatch.delitem(sys.modules, name)
    import mani_skill2_real2sim.envs as fake_envs

    fake_envs.BUILT.clear()
    fake_envs.RESETS.clear()
    return fake_envs, assets


def test_episode_env_is_built_with_the_rows_kwargs_and_reset_options(fake_simpler):
    fake, assets = fake_simpler
    from envs.simpler import make_env

    env = make_env(group="google_vm")
    name = "open_drawer.top.urdf=recolor_cabinet_visual_matching_1+overlay=a0"
    obs = env.reset(name, 0, seed=7)
    env_id, kwargs = fake.BUILT[-1]
    assert env_id == "OpenTopDrawerCustomInScene-v0"
    assert kwargs["rgb_overlay_path"] == str(assets / "real_inpainting" / "open_drawer_a0.png")
    assert kwargs["rgb_overlay_cameras"] == ["overhead_camera"]
    assert kwargs["shader_dir"] == "rt" and kwargs["urdf_version"] == "recolor_cabinet_visual_matching_1"
    assert (kwargs["sim_freq"], kwargs["control_freq"], kwargs["scene_name"]) == (513, 3, "dummy_drawer")
    assert kwargs["camera_cfgs"] == {"add_segmentation": True}
    robot = fake.RESETS[-1]["robot_init_options"]
    assert robot["init_xy"].tolist() == [0.644, -0.179]
    assert robot["init_rot_quat"] == pytest.approx([0.014999, 0.0, 0.0, 0.999888])
    assert obs.instruction == "open top drawer"
    assert obs.images["overhead_camera"].shape == (512, 640, 3)
    assert obs.images["overhead_camera"].dtype == np.uint8
    assert obs.state.shape == (9,) and obs.state.dtype == np.float32
    assert env.env.spec.max_episode_steps == 113  # gymnasium TimeLimit at the row's budget

    env.reset("move_near.urdf=None", 59, seed=0)
    assert fake.RESETS[-1]["obj_init_options"] == {"episode_id": 59}
    assert len(fake.BUILT) == 2  # a fresh env per episode, as the published evaluator does


def _spec(suite, task, k=0):
    return EpisodeSpec(suite.name, task, k, 0, "", "scripted")


def test_success_is_read_at_the_last_step_unless_first_success_ending_is_chosen(fake_simpler):
    """Reach the can, then move away: published rule = failure after the whole budget."""
    from envs.simpler import make_env

    suite = registry()["simpler-google-va"]
    task = "move_near.base"  # episode 0: goal at the robot's xy -> success while there, gripper closed
    plan = [np.array([0, 0, 0, 0, 0, 0, 1.0])] + [np.array([1.0, 0, 0, 0, 0, 0, 0])] * 200

    def act(observations, keys):
        step = int(keys[0].rsplit("@", 1)[1])
        return np.stack([plan[step]])[None].astype(np.float32)

    env = make_env(group="google_va", gripper_input="closedness_pm1", rotation="axis_angle")
    result = run_episode(env, suite, _spec(suite, task), act, replan_steps=1)
    assert result.record.steps == 80 and result.record.success is False
    assert result.record.info["stat_n_near"] == 1  # it did succeed at step 1

    env = make_env(
        group="google_va", gripper_input="closedness_pm1", rotation="axis_angle", end_on_first_success=True
    )
    result = run_episode(env, suite, _spec(suite, task), act, replan_steps=1)
    assert result.record.steps == 1 and result.record.success is True


def test_coke_can_keeps_its_any_step_success_component(fake_simpler):
    """Grasp the can for 5 steps, then leave it: coke can still succeeds at the last step."""
    from envs.simpler import make_env

    suite = registry()["simpler-google-va"]
    close = np.array([0, 0, 0, 0, 0, 0, 1.0])  # relative gripper: +1 = close
    toward, away = np.array([-1.0, 0, 0, 0, 0, 0, 0]), np.array([1.0, 0, 0, 0, 0, 0, 0])
    # episode 0: can at robot xy + (-0.35, -0.02); 7 steps of -5 cm bring the gripper within 2 cm
    plan = [close] + [toward] * 7 + [np.zeros(7)] * 4 + [away] * 100

    def act(observations, keys):
        return plan[int(keys[0].rsplit("@", 1)[1])][None, None].astype(np.float32)

    env = make_env(group="google_va", gripper_input="closedness_pm1", rotation="axis_angle")
    result = run_episode(env, suite, _spec(suite, "pick_coke_can.horizontal.base"), act, replan_steps=1)
    assert result.record.steps == 80
    assert result.record.info["stat_n_near"] == 5
    assert result.record.success is True


def test_put_in_drawer_advances_its_subtask_on_terminate_and_at_step_100(fake_simpler):
    from envs.simpler import make_env

    env = make_env(group="google_va", terminate_in_action=True)
    env.reset("put_in_drawer.apple_top_drawer.base", 0, 0)
    assert env.instruction == "open top drawer" and not env.is_final_subtask
    _, done, _, info = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0, 1.0]))
    assert not done and not info["policy_terminated"]  # advanced instead of ending
    assert env.instruction == "place apple into top drawer" and env.is_final_subtask
    _, done, _, info = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0, 1.0]))
    assert done and info["policy_terminated"]

    env = make_env(group="google_va")
    env.reset("put_in_drawer.apple_top_drawer.base", 0, 0)
    for _ in range(100):
        env.step(np.zeros(7), render=False)
    assert env.instruction == "open top drawer"
    env.step(np.zeros(7), render=False)  # the env forces the advance on its 101st step
    assert env.instruction == "place apple into top drawer"
    with pytest.raises(InvalidAction):
        env.step(np.zeros(8))


def test_missing_assets_stop_the_run_with_the_file_names_and_record_nothing(fake_simpler, tmp_path, capsys):
    _, assets = fake_simpler
    (assets / "hab2_bench_assets" / "stages" / "bridge_table_1_v1.glb").unlink()
    out = tmp_path / "run"
    code = main(
        ["simpler-widowx", "--policy", "random", "--workers", "0", "--out", str(out), "--video", "none"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "bridge_table_1_v1.glb" in err and "docs/simpler.md#install" in err
    assert not (out / "episodes.jsonl").exists() or (out / "episodes.jsonl").read_text() == ""


def test_missing_simulator_names_the_install_section(monkeypatch):
    monkeypatch.setitem(sys.modules, "mani_skill2_real2sim", None)
    from envs.simpler import make_env

    with pytest.raises(SimulatorMissing, match="docs/simpler.md#install"):
        make_env(group="widowx")


def test_gripper_conversions_follow_simpler_envs_policy_wrappers():
    widowx = ActionConverter("widowx", "open01", "axis_angle")
    assert widowx(np.array([0, 0, 0, 0, 0, 0, 0.7]))[6] == 1.0  # open
    assert widowx(np.array([0, 0, 0, 0, 0, 0, 0.2]))[6] == -1.0
    rt1_widowx = ActionConverter("widowx", "closedness_pm1", "axis_angle")
    assert rt1_widowx(np.array([0, 0, 0, 0, 0, 0, 0.9]))[6] == -1.0  # +1 close -> -1 (WidowX close)

    google = ActionConverter("google_robot", "open01", "axis_angle")
    grips = [google(np.array([0, 0, 0, 0, 0, 0, g]))[6] for g in [1.0, 1.0, 0.0] + [0.0] * 16]
    assert grips[:2] == [0.0, 0.0]  # no change yet
    assert grips[2:17] == [1.0] * 15  # open -> closed: +1 (close) held for 15 steps
    assert grips[17:] == [0.0, 0.0]
    google.reset()
    assert google(np.array([0, 0, 0, 0, 0, 0, 0.0]))[6] == 0.0  # first step after reset has no previous

    rpy = ActionConverter("widowx", "open01", "rpy")
    out = rpy(np.array([0.1, 0, 0, 0, 0, np.pi / 4, 1.0]))
    assert out[:3].tolist() == [0.1, 0, 0] and out[3:6] == pytest.approx([0, 0, np.pi / 4])


@pytest.mark.slow
def test_ray_runner_writes_table2_and_table3_from_the_fake(fake_simpler, tmp_path):
    out = tmp_path / "widowx"
    args = ["--policy", "random", "--workers", "2", "--video", "none", "--max-steps", "3", "-q"]
    assert main(["simpler-widowx", "--episodes-per-task", "2", "--out", str(out), *args]) == 0
    lines = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(r["success"] is not None and r["steps"] == 3 for r in lines)
    table2 = (out / "tables" / "table2_widowx.csv").read_text()
    assert "put_eggplant_in_basket" in table2 and "average" in table2
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["protocol"]["simpler-widowx"]["env_kwargs"]["end_on_first_success"] is False

    vm, va = registry()["simpler-google-vm"], registry()["simpler-google-va"]
    picks = []
    for suite in (vm, va):
        for wanted in ("pick_coke_can", "move_near", "open_drawer", "close_drawer", "put_in_drawer"):
            picks.append(next(t.name for t in suite.tasks if t.meta["simpler_task"] == wanted))
    out = tmp_path / "google"
    code = main(
        ["simpler-google", "--episodes-per-task", "1", "--tasks", ",".join(picks), "--out", str(out), *args]
    )
    assert code == 0
    table3 = (out / "tables" / "table3_google.csv").read_text().splitlines()
    header = table3[0].split(",")
    rows = {(r.split(",")[0], r.split(",")[1]) for r in table3[1:]}
    assert header[:2] == ["setting", "task"]
    assert {("M", "average"), ("A", "average"), ("M", "drawer"), ("A", "put_in_drawer")} <= rows
