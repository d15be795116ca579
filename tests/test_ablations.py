"""`asyncvla-eval ablations` (Table 4): same episodes for all four rows, paper row order, seed summary.

The run test uses the shipped demo checkpoint on the real tabletop env (one episode, 8 steps,
inline workers), so it takes seconds.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from evalsuite.ablations import (
    VARIANTS,
    ablation_table,
    mcnemar_exact,
    run_ablations,
    seed_summary,
    variant_configs,
)
from evalsuite.eval_args import config_from_args, eval_parser
from evalsuite.evaluate import plan_for
from evalsuite.tables import wilson_interval

PAPER_ORDER = ["w/o unified training", "w/o AFM inference", "w/o confidence rater", "AsyncVLA"]


def _base(tmp_path, ckpt, extra=(), check_ckpt=True):
    argv = ["tabletop", "--ckpt", str(ckpt), "--out", str(tmp_path / "abl"), "--workers", "0"]
    argv += ["--video", "none", "-q", *extra]
    return config_from_args(eval_parser().parse_args(argv), argv, check_ckpt=check_ckpt)


def test_four_variants_plan_the_same_episodes(tmp_path):
    unified, sfm = tmp_path / "unified", tmp_path / "sfm"
    unified.mkdir()
    sfm.mkdir()
    extra = ["--tasks", "red_in_bowl,push_green_left", "--episodes-per-task", "3"]
    base = _base(tmp_path, unified, extra, check_ckpt=False)  # planning only: empty checkpoint dirs
    configs = variant_configs(base, str(sfm))
    assert [label for label, _ in configs] == PAPER_ORDER
    plans = [plan_for(c) for _, c in configs]
    episodes = [[(s.suite, s.task, s.episode_index, s.seed) for s in p] for p in plans]
    assert all(e == episodes[0] for e in episodes)
    assert len(episodes[0]) == 6
    assert [p[0].mode for p in plans] == ["asyncvla", "sfm", "random-mask", "asyncvla"]
    assert [c.policy.checkpoint for _, c in configs] == [str(sfm), str(unified), str(unified), str(unified)]
    assert len({c.out for _, c in configs}) == 4  # one run directory per row


def test_ablation_run_has_four_rows_in_paper_order(tmp_path):
    from asyncvla import demo_checkpoint

    ckpt = demo_checkpoint()
    extra = ["--tasks", "push_green_left", "--episodes-per-task", "1", "--max-steps", "8"]
    base = _base(tmp_path, ckpt, [*extra, "--set", "image_size=56"])
    table, markdown = run_ablations(base, str(ckpt), show_progress=False, data_note="300 demos")
    assert list(table["variant"]) == PAPER_ORDER
    assert list(table["episodes"]) == [1, 1, 1, 1]
    assert list(table["errors"]) == [0, 0, 0, 0]
    assert markdown.index("w/o unified training") < markdown.index("w/o AFM inference")
    assert markdown.index("w/o confidence rater") < markdown.index("| AsyncVLA")
    assert "training data: 300 demos" in markdown
    assert (tmp_path / "abl" / "tables" / "ablations.csv").is_file()


@pytest.mark.parametrize(
    "only_a, only_b, p",
    [
        (1, 9, 2 * (1 + 10) / 1024),  # two-sided binomial tail: 2 P(X <= 1), X ~ Bin(10, 1/2)
        (0, 5, 2 / 32),
        (3, 3, 1.0),
        (0, 0, 1.0),
        (2, 12, 2 * (1 + 14 + 91) / 2**14),
    ],
)
def test_mcnemar_exact_against_the_binomial_tail(only_a, only_b, p):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(p)


def test_rows_are_compared_with_asyncvla_episode_by_episode():
    full = _records([True, True, False, False, True, True])
    worse = _records([False, True, False, False, False, False])  # loses 3 episodes, wins none
    table = ablation_table([("w/o AFM inference", worse), ("AsyncVLA", full)]).set_index("variant")
    assert table.loc["w/o AFM inference", "wins / losses vs AsyncVLA"] == "0 / 3"
    assert table.loc["w/o AFM inference", "McNemar p"] == pytest.approx(0.25)
    assert pd.isna(table.loc["AsyncVLA", "McNemar p"])


def _records(successes: list[bool], task: str = "t") -> pd.DataFrame:
    n = len(successes)
    return pd.DataFrame(
        {"suite": "s", "task": [task] * n, "episode_index": range(n), "seed": 0, "success": successes}
    )


def test_seed_summary_mean_spread_and_pooled_interval():
    rates = {0: [0.5, 0.25, 0.0, 0.75], 1: [0.25, 0.25, 0.5, 1.0]}
    tables = {}
    for seed, per_row in rates.items():
        results = [(label, _records([i < 4 * r for i in range(4)])) for label, r in zip(PAPER_ORDER, per_row)]
        tables[seed] = ablation_table(results)
    summary = seed_summary(tables)
    assert list(summary["variant"]) == PAPER_ORDER
    full = summary.iloc[3]
    assert full["seed 0"] == pytest.approx(0.75) and full["seed 1"] == pytest.approx(1.0)
    assert full["mean over seeds"] == pytest.approx(0.875)
    assert full["sd over seeds"] == pytest.approx(math.sqrt(2 * 0.125**2))
    assert full["pooled episodes"] == 8 and full["pooled successes"] == 7
    lo, hi = wilson_interval(7, 8)
    assert full["pooled CI"] == f"{100 * lo:.1f}-{100 * hi:.1f}"


def test_seed_summary_refuses_rows_out_of_order():
    rows = [(label, _records([True])) for label in reversed([v[0] for v in VARIANTS])]
    with pytest.raises(ValueError, match="expected"):
        seed_summary({0: ablation_table(rows)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny checkpoints trained for a step each: one unified (with its rater), one SFM-only."""
    import numpy as np

    from asyncvla.training.datasets import Episode, write_asyncvla_episodes
    from asyncvla.training.train import TrainConfig, run

    root = tmp_path_factory.mktemp("trained")
    T = 10
    images = {c: np.full((T, 56, 56, 3), 90, np.uint8) for c in ("agentview", "wrist")}
    episode = Episode(images, np.zeros((T, 8), np.float32), np.full((T, 7), 0.1, np.float32), "reach")
    data = str(write_asyncvla_episodes(root / "data", [episode], fps=10, source="test"))
    made = {}
    for objective in ("unified", "sfm"):
        out = str(root / objective)
        run(TrainConfig(dataset=data, out=out, batch_size=4, steps=1, objective=objective))
        run(TrainConfig(dataset=data, out=out, batch_size=4, steps=1, stage="rater"))
        made[objective] = out
    policy_only = str(root / "policy_only")
    run(TrainConfig(dataset=data, out=policy_only, batch_size=4, steps=1))
    made["policy_only"] = policy_only
    return made


def test_ablations_refuse_swapped_checkpoints(trained):
    from evalsuite.ablations import check_objectives
    from evalsuite.errors import UsageError

    check_objectives(trained["unified"], trained["sfm"])
    with pytest.raises(UsageError, match="--ckpt .* was trained with objective 'sfm'"):
        check_objectives(trained["sfm"], trained["unified"])


def test_asyncvla_mode_is_refused_for_a_checkpoint_without_a_trained_rater(
    trained, toy_suites, tmp_path, capsys
):
    from evalsuite.cli import main

    args = ["toy", "--ckpt", trained["policy_only"], "--workers", "0", "--out", str(tmp_path / "run"), "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "its rater was never trained" in err and "--stage rater" in err
    assert not (tmp_path / "run").exists()
