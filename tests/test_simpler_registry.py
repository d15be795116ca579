"""The SimplerEnv suite registry against the published sweep (protocol/simpler/sweeps.csv)."""

import csv
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from envs.simpler.sweep import configs_by_name, load_sweeps
from evalsuite.cli import main
from evalsuite.suites import registry

SHARED_CSV = Path("/work/shared/protocol/simpler/sweeps.csv")


def _episodes(suite, **where):
    return sum(t.episodes for t in suite.tasks if all(t.meta[k] == v for k, v in where.items()))


def test_suite_totals_match_the_published_sweep():
    suites = registry()
    assert _episodes(suites["simpler-widowx"]) == 96
    assert _episodes(suites["simpler-widowx-3seed"]) == 288
    assert _episodes(suites["simpler-google-vm"]) == 864
    va = suites["simpler-google-va"]
    assert _episodes(va) == 1992
    assert _episodes(va, in_official_aggregate=True) == 1722
    assert {s.name for s in suites.values() if s.family == "simpler-google"} == {
        "simpler-google-vm",
        "simpler-google-va",
    }


@pytest.mark.parametrize(
    "suite, task, run, averaged",
    [
        ("simpler-widowx", "spoon_on_towel", 24, 24),
        ("simpler-widowx", "eggplant_in_basket", 24, 24),
        ("simpler-google-vm", "pick_coke_can", 300, 300),
        ("simpler-google-vm", "move_near", 240, 240),
        ("simpler-google-vm", "open_drawer", 108, 108),
        ("simpler-google-vm", "close_drawer", 108, 108),
        ("simpler-google-vm", "put_in_drawer", 108, 108),
        ("simpler-google-va", "pick_coke_can", 825, 675),
        ("simpler-google-va", "move_near", 600, 480),
        ("simpler-google-va", "open_drawer", 189, 189),
        ("simpler-google-va", "put_in_drawer", 189, 189),
    ],
)
def test_episodes_per_task_run_and_averaged(suite, task, run, averaged):
    spec = registry()[suite]
    assert _episodes(spec, simpler_task=task) == run
    assert _episodes(spec, simpler_task=task, in_official_aggregate=True) == averaged


def test_coke_can_orientations_and_drawer_levels_split_evenly():
    va = registry()["simpler-google-va"]
    per_orientation = Counter()
    for t in va.tasks:
        if t.meta["simpler_task"] == "pick_coke_can":
            per_orientation[t.meta["subtask"]] += t.episodes
    assert per_orientation == {"horizontal": 275, "vertical": 275, "standing": 275}
    vm = registry()["simpler-google-vm"]
    drawers = Counter(
        t.meta["subtask"]
        for t in vm.tasks
        for _ in range(t.episodes)
        if t.meta["simpler_task"] == "open_drawer"
    )
    assert drawers == {"top": 36, "middle": 36, "bottom": 36}


def test_packaged_csv_is_the_shared_protocol_file():
    if not SHARED_CSV.exists():
        pytest.skip("shared protocol directory not present on this machine")
    packaged = Path(__file__).resolve().parents[1] / "envs" / "simpler" / "sweeps.csv"
    assert packaged.read_bytes() == SHARED_CSV.read_bytes()


def test_sample_configurations_build_exactly_what_the_scripts_pass():
    vm = configs_by_name("google_vm")
    coke = vm["pick_coke_can.horizontal.urdf=None"]
    kw = coke.gym_make_kwargs("/assets/real_inpainting/google_coke_can_real_eval_1.png")
    assert coke.env_name == "GraspSingleOpenedCokeCanInScene-v0"
    assert kw["scene_name"] == "google_pick_coke_can_1_v4"
    assert kw["rgb_overlay_cameras"] == ["overhead_camera"]
    assert (kw["lr_switch"], kw["urdf_version"]) == (
        True,
        "None",
    )  # the string "None", as DictAction parses it
    assert (kw["control_freq"], kw["sim_freq"], kw["max_episode_steps"]) == (3, 513, 80)
    assert coke.obj_init_xs == pytest.approx([-0.35, -0.2925, -0.235, -0.1775, -0.12])
    assert coke.obj_init_ys == pytest.approx([-0.02, 0.09, 0.2, 0.31, 0.42])
    assert coke.rgb_overlay_path.endswith("google_coke_can_real_eval_1.png")

    drawer = vm["open_drawer.top.urdf=recolor_cabinet_visual_matching_1+overlay=a0"]
    assert drawer.scene_name == "dummy_drawer"
    assert drawer.robot_init_xs == (0.644,) and drawer.robot_init_ys == (-0.179,)
    # 180 deg yaw composed with rz = -0.03 (wxyz): Pose(q=euler2quat(0, 0, -0.03)) * Pose(q=[0, 0, 0, 1])
    assert drawer.robot_init_quats_wxyz[0] == pytest.approx([np.sin(0.015), 0, 0, np.cos(0.015)], abs=1e-6)
    assert list(drawer.env_build_kwargs)[0] == "shader_dir"  # ray tracing key first, as the evaluator puts it
    assert drawer.env_build_kwargs["station_name"] == "mk_station_recolor"
    assert drawer.max_episode_steps == 113

    va = configs_by_name("google_va")
    va_drawer = va["close_drawer.middle.lighting_darker"]
    assert va_drawer.scene_name == "frl_apartment_stage_simple" and va_drawer.rgb_overlay_path == ""
    assert va_drawer.env_build_kwargs == {"shader_dir": "rt", "light_mode": "darker"}
    assert va_drawer.robot_init_xs == pytest.approx([0.65, 0.75, 0.85]) and len(va_drawer.robot_init_ys) == 3
    near = va["move_near.no_distractor"]
    assert near.env_name == "MoveNearGoogleInScene-v0" and near.obj_episode_ids == tuple(range(60))
    assert near.env_build_kwargs == {"no_distractor": True}
    apple = va["put_in_drawer.apple_top_drawer.base"]
    assert (
        apple.env_build_kwargs == {"shader_dir": "rt", "model_ids": "apple"}
        and apple.max_episode_steps == 200
    )

    bridge = configs_by_name("widowx")
    egg = bridge["eggplant_in_basket"]
    assert (egg.env_name, egg.scene_name, egg.robot) == (
        "PutEggplantInBasketScene-v0",
        "bridge_table_1_v2",
        "widowx_sink_camera_setup",
    )
    assert (egg.control_freq, egg.sim_freq, egg.max_episode_steps) == (5, 500, 120)
    assert egg.gym_make_kwargs("x.png")["rgb_overlay_cameras"] == ["3rd_view_camera"]


def test_every_episode_index_decodes_in_the_evaluators_loop_order():
    """Re-derive each row's episodes with the nested loops of maniskill2_evaluator.py:180-215."""
    for config in load_sweeps("rt1"):
        robot = itertools.product(config.robot_init_xs, config.robot_init_ys, config.robot_init_quats_wxyz)
        if config.obj_variation_mode == "episode":
            objs = [{"episode_id": i} for i in config.obj_episode_ids]
        else:
            objs = [{"init_xy": [x, y]} for x in config.obj_init_xs for y in config.obj_init_ys]
        expected = [
            {"robot_init_options": {"init_xy": [x, y], "init_rot_quat": list(q)}, "obj_init_options": o}
            for (x, y, q), o in itertools.product(robot, objs)
        ]
        assert [config.reset_options(k) for k in range(config.episodes)] == expected


def test_registry_rows_agree_with_the_csv_columns():
    rows = {int(r["row_id"]): r for r in csv.DictReader(SHARED_CSV.open())} if SHARED_CSV.exists() else None
    if rows is None:
        pytest.skip("shared protocol directory not present on this machine")
    for config in load_sweeps("rt1"):
        row = rows[config.row_id]
        assert config.episodes == int(row["episodes"])
        assert config.env_build_kwargs == json.loads(row["effective_env_build_kwargs"])


def test_dry_run_prints_the_google_totals(capsys):
    assert main(["simpler-google", "--policy", "random", "--dry-run"]) == 0
    out = capsys.readouterr().out
    totals = {line.split()[0]: int(line.split()[-1]) for line in out.splitlines() if "(suite total)" in line}
    assert totals == {"simpler-google-vm": 864, "simpler-google-va": 1992}
    assert "TOTAL" in out and out.strip().splitlines()[-1].split()[-1] == "2856"
