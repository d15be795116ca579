"""Significance verdicts on constructed results with known answers, new failures, `compare` exit codes."""

import pytest
from scipy.stats import fisher_exact

from evalsuite.cli import main
from evalsuite.records import EpisodeRecord
from evalsuite.regression.compare import BETTER, SAME, WORSE, CompareError, compare_records, fisher_p
from evalsuite.store import RunStore


def records(suite: str, task: str, outcomes: list, video_every: int = 0) -> list[EpisodeRecord]:
    """One record per outcome (True / False / None = error), episode index = position."""
    out = []
    for i, success in enumerate(outcomes):
        video = f"videos/{task}_{i}.mp4" if video_every and i % video_every == 0 else None
        out.append(
            EpisodeRecord(
                episode_id=f"{suite}/{task}/-/ep{i:03d}/seed0/asyncvla",
                suite=suite,
                task=task,
                episode_index=i,
                seed=0,
                variant="",
                mode="asyncvla",
                success=success,
                steps=10,
                wall_time_s=0.1,
                error=None if success is not None else "boom",
                video=video,
            )
        )
    return out


def rate(k: int, n: int) -> list[bool]:
    return [True] * k + [False] * (n - k)


def test_fisher_p_matches_the_tea_tasting_table():
    # Fisher's lady tasting tea: 3 of 4 right in each group; the two-sided p is 34/70.
    assert fisher_p(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert fisher_p(5, 5, 0, 0) == 1.0  # nothing to judge by


def test_large_drop_is_worse():
    c = compare_records(records("s", "t", rate(18, 20)), records("s", "t", rate(4, 20)))
    row = c.tasks.iloc[0]
    assert (row.k_a, row.n_a, row.k_b, row.n_b) == (18, 20, 4, 20)
    assert row["diff"] == pytest.approx(-0.7)
    assert row.p_value == pytest.approx(fisher_exact([[18, 2], [4, 16]]).pvalue)
    assert row.p_value < 1e-4 and row.verdict == WORSE
    assert c.suites.iloc[0].verdict == WORSE and c.worse and not c.better


def test_large_gain_is_better():
    c = compare_records(records("s", "t", rate(2, 20)), records("s", "t", rate(17, 20)))
    assert c.tasks.iloc[0].verdict == BETTER and c.better and not c.worse


def test_equal_rates_are_no_significant_change():
    c = compare_records(records("s", "t", rate(10, 20)), records("s", "t", rate(10, 20)))
    row = c.tasks.iloc[0]
    assert row.p_value == pytest.approx(1.0) and row["diff"] == 0.0
    assert row.verdict == SAME and not c.worse


def test_small_difference_on_few_episodes_is_not_significant():
    c = compare_records(records("s", "t", rate(4, 5)), records("s", "t", rate(3, 5)))
    row = c.tasks.iloc[0]
    assert row["diff"] == pytest.approx(-0.2)
    assert row.p_value == pytest.approx(1.0)  # 4/5 vs 3/5: every table is as likely
    assert row.verdict == SAME and not c.worse


def test_holm_correction_across_tasks_removes_a_borderline_drop():
    # 10/20 -> 3/20 alone is significant (p ~ 0.041); among 5 tasks, Holm multiplies the smallest p by 5.
    p = fisher_exact([[10, 10], [3, 17]]).pvalue
    assert 0.01 < p < 0.05
    alone = compare_records(records("s", "t0", rate(10, 20)), records("s", "t0", rate(3, 20)))
    assert alone.tasks.iloc[0].verdict == WORSE
    base = records("s", "t0", rate(10, 20))
    cand = records("s", "t0", rate(3, 20))
    for t in range(1, 5):
        base += records("s", f"t{t}", rate(12, 20))
        cand += records("s", f"t{t}", rate(12, 20))
    many = compare_records(base, cand).tasks.set_index("task")
    assert many.loc["t0", "p_value"] == pytest.approx(p)
    assert many.loc["t0", "p_adjusted"] == pytest.approx(min(1.0, 5 * p))
    assert many.loc["t0", "verdict"] == SAME


def test_errors_never_enter_the_rates():
    c = compare_records(records("s", "t", [True, True, None, None]), records("s", "t", [True, True, True]))
    row = c.tasks.iloc[0]
    assert (row.n_a, row.k_a, row.n_b, row.k_b) == (2, 2, 3, 3)


def test_new_failures_are_paired_by_episode_with_their_videos():
    base = records("s", "t", [True, True, False, True], video_every=1)
    cand = records("s", "t", [True, False, True, False], video_every=1)
    c = compare_records(base, cand)
    assert list(c.new_failures["episode_id"]) == ["s/t/-/ep001/seed0/asyncvla", "s/t/-/ep003/seed0/asyncvla"]
    assert list(c.new_failures["video"]) == ["videos/t_1.mp4", "videos/t_3.mp4"]
    assert list(c.new_failures["baseline_video"]) == ["videos/t_1.mp4", "videos/t_3.mp4"]


def test_runs_without_a_shared_suite_are_refused():
    with pytest.raises(CompareError, match="no suite with finished episodes in common"):
        compare_records(records("a", "t", rate(1, 2)), records("b", "t", rate(1, 2)))


def _run_dir(path, recs):
    store = RunStore(path)
    store.open({"suites": ["s"], "checkpoint": None, "protocol": {"s": {"seed": 0}}})
    for r in recs:
        store.append(r)
    return str(path)


def test_compare_exit_codes_worse_better_and_bad_input(tmp_path, capsys):
    good = _run_dir(tmp_path / "good", records("s", "t", rate(19, 20)))
    bad = _run_dir(tmp_path / "bad", records("s", "t", rate(3, 20)))
    assert main(["compare", good, bad, "--report-dir", str(tmp_path / "report")]) == 1
    out = capsys.readouterr().out
    assert "| worse" in out and "95.0 (19/20)" in out and "15.0 (3/20)" in out
    assert (tmp_path / "report" / "report.html").exists()
    assert main(["compare", bad, good]) == 0
    assert "| better" in capsys.readouterr().out
    assert main(["compare", good, str(tmp_path / "nowhere")]) == 2
    assert "run.json is missing" in capsys.readouterr().err
    assert main(["compare", good, bad, "--alpha", "2"]) == 2
    assert "alpha must be between 0 and 1" in capsys.readouterr().err


def test_a_task_in_only_one_run_is_not_judged_and_warned_about():
    base = records("s", "t", rate(5, 10))
    cand = records("s", "t", rate(5, 10)) + records("s", "new_task", rate(0, 10))
    c = compare_records(base, cand)
    tasks = c.tasks.set_index("task")
    assert tasks.loc["new_task", "verdict"] == "no data" and tasks.loc["t", "verdict"] == SAME
    assert any("s/new_task has episodes in only one run" in w for w in c.warnings)
    assert not c.worse
