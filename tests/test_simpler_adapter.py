"""The SimplerEnv adapter against a fake of simpler_env + mani_skill2_real2sim driven by fixtures
recorded from the real simulator.

`tests/fixtures/simpler_real.json` was recorded from the real SimplerEnv 4ab7178 /
ManiSkill2_real2sim ef7a4d4 / SAPIEN 2.2.2 by `scripts/record_simpler_fixture.py` (its `recorded`
block says when and with what). The fake (tests/fakes/simpler) takes from it every env id, budget,
observation key and shape, info key, joint name and pose the adapter can read; only its motion is a
kinematic stand-in, so nothing here is a SimplerEnv success rate.
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
from envs.simpler.state import pose_in_frame
from envs.simpler.sweep import configs_by_name, load_sweeps
from evalsuite.cli import main
from evalsuite.records import EpisodeSpec
from evalsuite.run.episode import run_episode
from evalsuite.suites import registry

gymnasium = pytest.importorskip("gymnasium")
FAKES = Path(__file__).resolve().parent / "fakes" / "simpler"
REAL = json.loads((Path(__file__).resolve().parent / "fixtures" / "simpler_real.json").read_text())


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


def test_every_env_id_of_the_published_sweeps_was_recorded_from_the_real_simulator():
    env_ids = {c.env_name for family in ("rt1", "octo", "misc_alt_urdf") for c in load_sweeps(family)}
    assert set(REAL["envs"]) == env_ids
    assert REAL["recorded"]["versions"]["sapien"] == "2.2.2"


@pytest.mark.parametrize("env_id", sorted(REAL["envs"]))
def test_base_frame_tcp_pose_equals_sapiens_own(env_id):
    """`pose_in_frame` against sapien's `robot.pose.inv() * tcp.pose`, at the reset and after each step."""
    for sample in REAL["envs"][env_id]["poses"]:
        base = np.asarray(sample["obs_base_pose"])
        p, q = pose_in_frame(np.asarray(sample["tcp_p"]), np.asarray(sample["tcp_q"]), base[:3], base[3:])
        want_q = np.asarray(sample["tcp_in_base_q"])
        assert p == pytest.approx(sample["tcp_in_base_p"], abs=1e-5)
        assert q == pytest.approx(want_q if want_q[0] >= 0 else -want_q, abs=1e-5)


@pytest.mark.parametrize("env_id", sorted(REAL["envs"]))
def test_state_on_every_recorded_env(fake_simpler, env_id):
    """Every task family, both robots: the adapter builds the state from what the real env returns
    (the drawer envs' `obs["extra"]` is empty), the pose relative to the robot base as sapien computes
    it, the fingers found by name (on the Google robot the last two joints are the head)."""
    from envs.simpler import make_env

    real = REAL["envs"][env_id]
    rows = [c for g in ("widowx", "google_vm", "google_va") for c in configs_by_name(g).values()]
    config = next(c for c in rows if c.row_id == real["sweep_row"])
    env = make_env(group=config.group)
    obs = env.reset(config.task_name, 0, seed=0)
    reset = real["poses"][0]
    fingers = [real["active_joints"].index(n) for n in real["gripper_joint_names"]]
    assert obs.state.shape == (9,) and obs.state.dtype == np.float32
    assert obs.state[:3] == pytest.approx(reset["tcp_in_base_p"], abs=1e-5)
    q = np.asarray(reset["tcp_in_base_q"])
    assert obs.state[3:7] == pytest.approx(q if q[0] >= 0 else -q, abs=1e-5)
    assert obs.state[7:] == pytest.approx([reset["qpos"][i] for i in fingers])
    assert obs.images[next(iter(obs.images))].shape == tuple(real["image_for_policy"]["shape"])
    assert obs.instruction == real["instruction"]
    _, _, _, info = env.step(np.array([0, 0, 0, 0, 0, 0, 0.0]))
    assert set(real["steps"][0]["info"]) - {"episode_stats"} <= set(info)  # the env's own info keys


def test_an_adapter_mismatch_stops_the_run_at_once_instead_of_recording_errors(
    fake_simpler, tmp_path, capsys, monkeypatch
):
    """A simulator whose observation lacks a key the state is read from (here: a package version
    without `agent.base_pose`) fails identically on every episode: one message, exit 2, no retries."""
    fake, _ = fake_simpler
    real = json.loads(json.dumps(fake.FIXTURE["OpenTopDrawerCustomInScene-v0"]))
    del real["obs"]["agent"]["base_pose"]
    monkeypatch.setitem(fake.FIXTURE, "OpenTopDrawerCustomInScene-v0", real)
    task = "open_drawer.top.base"
    out = tmp_path / "run"
    args = ["simpler-google-va", "--policy", "random", "--workers", "0", "--tasks", task, "--out", str(out)]
    assert main([*args, "--episodes-per-task", "2", "--video", "none", "-q"]) == 2
    err = capsys.readouterr().err
    assert "base_pose" in err and "observation" in err
    assert len(fake.BUILT) == 1  # stopped after the first episode's reset: nothing retried
    records = out / "episodes.jsonl"
    assert not records.exists() or records.read_text() == ""  # no error record either


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


def test_missing_assets_of_the_whole_plan_are_listed_at_once_and_nothing_is_written(
    fake_simpler, tmp_path, capsys
):
    _, assets = fake_simpler
    (assets / "hab2_bench_assets" / "stages" / "bridge_table_1_v1.glb").unlink()
    (assets / "custom" / "models" / "sink" / "collision.obj").unlink()  # the eggplant task's sink
    (assets / "custom" / "models" / "eggplant" / "textured.obj").unlink()
    out = tmp_path / "run"
    code = main(
        ["simpler-widowx", "--policy", "random", "--workers", "0", "--out", str(out), "--video", "none"]
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    assert "3 files" in lines[0] and "docs/simpler.md#install" in err
    by_task = {line.split(" (")[0].strip(): line for line in lines[1:-1]}
    assert set(by_task) == {"spoon_on_towel", "carrot_on_plate", "stack_cube", "eggplant_in_basket"}
    assert "bridge_table_1_v1.glb" in by_task["carrot_on_plate"]
    assert "custom/models/sink/collision.obj" in by_task["eggplant_in_basket"]
    assert "custom/models/eggplant/textured.{obj,dae,glb}" in by_task["eggplant_in_basket"]
    assert not out.exists()  # refused before the run directory was made


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
