"""SimplerEnv aggregation (Tables 2, 3, 4) on hand-made records, and MMRV / Pearson on SimplerEnv's values."""

import pandas as pd
import pytest

from evalsuite.layouts.simpler import (
    google_layout,
    mean_maximum_rank_violation,
    pearson_correlation,
    sim_real_table,
    task_rate,
    widowx_layout,
)


def _records(spec):
    """spec: list of (group, simpler_task, subtask, variant, in_aggregate, [successes...], mode)."""
    rows = []
    for group, task, subtask, variant, agg, outcomes, mode in spec:
        agg_variant = variant.split("|")[0] if group == "google_vm" else variant
        for i, s in enumerate(outcomes):
            rows.append(
                {
                    "suite": f"simpler-{group}",
                    "task": f"{task}.{subtask}.{variant}",
                    "episode_index": i,
                    "success": s,
                    "mode": mode,
                    "group": group,
                    "simpler_task": task,
                    "subtask": subtask,
                    "variant": variant,
                    "aggregate_variant": agg_variant,
                    "in_official_aggregate": agg,
                }
            )
    return pd.DataFrame(rows)


def test_task_rate_is_the_mean_of_subtask_means_of_variant_means():
    # orientation A: variants 1/2 and 0/1 -> 0.25; orientation B: one variant 3/3 -> 1.0
    recs = _records(
        [
            ("google_va", "pick_coke_can", "A", "v1", True, [True, False], "asyncvla"),
            ("google_va", "pick_coke_can", "A", "v2", True, [False], "asyncvla"),
            ("google_va", "pick_coke_can", "B", "v1", True, [True, True, True], "asyncvla"),
        ]
    )
    recs["success"] = recs["success"].astype(float)
    assert task_rate(recs) == pytest.approx((0.25 + 1.0) / 2)  # pooled would be 4/6


def _google_records():
    vm = "google_vm"
    va = "google_va"
    spec = [
        # VM coke: horizontal over 2 URDFs (1.0, 0.0) -> 0.5; vertical 1.0; standing 0.0 -> mean 0.5
        (vm, "pick_coke_can", "horizontal", "urdf=a", True, [True, True], "asyncvla"),
        (vm, "pick_coke_can", "horizontal", "urdf=b", True, [False, False], "asyncvla"),
        (vm, "pick_coke_can", "vertical", "urdf=a", True, [True], "asyncvla"),
        (vm, "pick_coke_can", "standing", "urdf=a", True, [False], "asyncvla"),
        (vm, "move_near", "", "urdf=a", True, [True, False, False, False], "asyncvla"),  # 0.25
        # VM drawers: two overlays of one URDF pool into one variant: open top (1+0)/2, open middle 1 -> 0.75
        (vm, "open_drawer", "top", "urdf=a|overlay=a0", True, [True], "asyncvla"),
        (vm, "open_drawer", "top", "urdf=a|overlay=b0", True, [False], "asyncvla"),
        (vm, "open_drawer", "middle", "urdf=a|overlay=a0", True, [True], "asyncvla"),
        (
            vm,
            "close_drawer",
            "top",
            "urdf=a|overlay=a0",
            True,
            [False, False, False, True],
            "asyncvla",
        ),  # 0.25
        (
            vm,
            "put_in_drawer",
            "apple_top_drawer",
            "urdf=a|overlay=a0",
            True,
            [True, False],
            "asyncvla",
        ),  # 0.5
        # VA: camera variants run but never averaged
        (va, "pick_coke_can", "horizontal", "base", True, [True, False], "asyncvla"),  # 0.5
        (va, "pick_coke_can", "horizontal", "camera_1", False, [True, True], "asyncvla"),
        (va, "move_near", "", "base", True, [False, False], "asyncvla"),
        (va, "move_near", "", "camera_2", False, [True, True], "asyncvla"),
        (va, "open_drawer", "top", "base", True, [True], "asyncvla"),
        (va, "close_drawer", "top", "base", True, [True], "asyncvla"),
        (va, "put_in_drawer", "apple_top_drawer", "base", True, [False, None], "asyncvla"),  # error excluded
    ]
    return _records(spec)


def test_table3_aggregates_as_simpler_env_does():
    tables = google_layout(_google_records(), [])
    t3 = tables["table3_google"].set_index(["setting", "task"])["success_rate"]
    assert t3[("M", "pick_coke_can")] == pytest.approx(0.5)
    assert t3[("M", "move_near")] == pytest.approx(0.25)
    assert t3[("M", "drawer")] == pytest.approx((0.75 + 0.25) / 2)
    assert t3[("M", "put_in_drawer")] == pytest.approx(0.5)
    assert t3[("M", "average")] == pytest.approx((0.5 + 0.25 + 0.5 + 0.5) / 4)
    assert t3[("A", "pick_coke_can")] == pytest.approx(0.5)  # camera_1's 2/2 left out
    assert t3[("A", "move_near")] == pytest.approx(0.0)  # camera_2's 2/2 left out
    assert t3[("A", "drawer")] == pytest.approx(1.0)
    assert t3[("A", "put_in_drawer")] == pytest.approx(0.0)
    full = tables["table3_google"].set_index(["setting", "task"])
    assert full.loc[("A", "put_in_drawer"), "episodes"] == 1  # the error never enters n
    assert full.loc[("M", "pick_coke_can"), "paper AsyncVLA %"] == pytest.approx(96.2)  # in percent
    assert full.loc[("M", "pick_coke_can"), "delta pts"] == pytest.approx(50.0 - 96.2)
    cams = tables["google_va_camera_variants"].set_index("task")["success_rate"]
    assert cams.to_dict() == {"pick_coke_can/camera_1": 1.0, "move_near/camera_2": 1.0}


def test_table2_for_widowx():
    spec = []
    for mode, wins in (("asyncvla", 3),):
        for task in ("spoon_on_towel", "carrot_on_plate", "stack_cube", "eggplant_in_basket"):
            spec.append(("widowx", task, "", "base", True, [True] * wins + [False] * (4 - wins), mode))
    spec[0] = ("widowx", "spoon_on_towel", "", "base", True, [True, True, True, True], "asyncvla")
    tables = widowx_layout(_records(spec), [])
    t2 = tables["table2_widowx"].set_index("task")
    assert t2.loc["put_spoon_on_towel", "success_rate"] == 1.0
    assert t2.loc["average", "success_rate"] == pytest.approx((1.0 + 0.75 * 3) / 4)
    assert t2.loc["put_spoon_on_towel", "paper AsyncVLA %"] == pytest.approx(70.8)
    lo, hi = t2.loc["put_carrot_on_plate", ["ci_low", "ci_high"]]
    assert lo < 0.75 < hi and t2.loc["put_carrot_on_plate", "paper_in_ci"]


# SimplerEnv simpler_env/utils/metrics.py REAL_PERF / SIMPLER_PERF (4ab7178), policies in file order
REAL = {
    "pick_coke_can": [0.907, 0.853, 0.920, 0.760, 0.133, 0.293],
    "move_near": [0.733, 0.633, 0.583, 0.450, 0.017, 0.350],
    "open_drawer": [0.333, 0.815, 0.704, 0.519, 0.000, 0.148],
    "close_drawer": [0.630, 0.926, 0.889, 0.741, 0.000, 0.519],
    "apple_in_drawer": [0.074, 0.185, 0.185, 0.407, 0.000, 0.000],
    "spoon": [0.000, 0.333, 0.417],
    "carrot": [0.000, 0.250, 0.083],
    "cube": [0.000, 0.000, 0.125],
    "eggplant": [0.000, 0.250, 0.400],
}
SIM = {
    "pick_coke_can": [0.787, 0.857, 0.710, 0.567, 0.027, 0.170],
    "move_near": [0.779, 0.442, 0.354, 0.317, 0.050, 0.042],
    "open_drawer": [0.157, 0.601, 0.463, 0.296, 0.000, 0.009],
    "close_drawer": [0.343, 0.861, 0.667, 0.891, 0.278, 0.444],
    "apple_in_drawer": [0.037, 0.065, 0.130, 0.213, 0.000, 0.000],
    "spoon": [0.000, 0.125, 0.472],
    "carrot": [0.042, 0.083, 0.097],
    "cube": [0.000, 0.000, 0.042],
    "eggplant": [0.000, 0.431, 0.569],
}
# protocol/simpler/README.md sec. 6: values of tools/calc_metrics.py (argument order sim, real)
EXPECTED = {
    "pick_coke_can": (0.0313, 0.9754),
    "move_near": (0.1110, 0.8561),
    "open_drawer": (0.0000, 0.9832),
    "close_drawer": (0.1233, 0.7712),
    "apple_in_drawer": (0.0000, 0.9692),
    "spoon": (0.0000, 0.8269),
    "carrot": (0.1113, 0.5714),
    "cube": (0.0000, 1.0000),
    "eggplant": (0.0000, 0.9894),
}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_mmrv_and_pearson_match_simpler_env(task):
    mmrv, rho = EXPECTED[task]
    assert mean_maximum_rank_violation(SIM[task], REAL[task]) == pytest.approx(mmrv, abs=5e-5)
    assert pearson_correlation(SIM[task], REAL[task]) == pytest.approx(rho, abs=5e-5)


def test_mmrv_is_not_symmetric_and_the_swapped_order_gives_the_readme_typo_value():
    assert mean_maximum_rank_violation(REAL["move_near"], SIM["move_near"]) == pytest.approx(0.0027, abs=5e-5)
    assert mean_maximum_rank_violation(REAL["carrot"], SIM["carrot"]) == pytest.approx(0.0093, abs=5e-5)


def test_sim_real_table_reads_a_real_csv(tmp_path):
    policies = ["rt-2-x", "rt-1-converged", "rt-1-15pct", "rt-1-x", "rt-1-begin", "octo-base"]
    real = pd.DataFrame({"policy": policies, "task": "move_near", "success_rate": REAL["move_near"]})
    real.to_csv(tmp_path / "real.csv", index=False)
    sim = pd.DataFrame({"policy": policies, "task": "move_near", "success_rate": SIM["move_near"]})
    table = sim_real_table(sim, str(tmp_path / "real.csv")).set_index("task")
    assert table.loc["move_near", "mmrv"] == pytest.approx(0.1110, abs=5e-5)
    assert table.loc["move_near", "policies"] == 6
    (tmp_path / "bad.csv").write_text("policy,success\nx,1\n")
    with pytest.raises(ValueError, match="needs columns policy, task, success_rate"):
        sim_real_table(sim, str(tmp_path / "bad.csv"))
