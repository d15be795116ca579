import math

import pandas as pd
import pytest

from evalsuite.tables import per_suite_table, per_task_table, reference_table, wilson_interval, write_tables


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054):
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (5, 10), (47, 50), (1, 3), (480, 500)])
def test_wilson_interval_matches_the_formula(k, n):
    lo, hi = wilson_interval(k, n)
    exp_lo, exp_hi = _wilson_by_hand(k, n)
    assert lo == pytest.approx(exp_lo, abs=1e-12) and hi == pytest.approx(exp_hi, abs=1e-12)


def test_wilson_interval_is_the_one_statsmodels_gives():
    """The tables took their intervals from statsmodels before scipy (a lighter import): every
    k of every n up to 60 gives the same interval."""
    from statsmodels.stats.proportion import proportion_confint

    for n in range(1, 61):
        for k in range(n + 1):
            expected = proportion_confint(k, n, alpha=0.05, method="wilson")
            assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-12)


def test_wilson_interval_known_values():
    # 0/10: the textbook upper bound 0.2775; 10/10 mirrors it
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _frame(rows):
    return pd.DataFrame(rows, columns=["suite", "task", "success"])


def test_errors_are_counted_apart_and_never_enter_the_rate():
    records = _frame([("s", "a", True), ("s", "a", False), ("s", "a", None), ("s", "b", True)])
    table = per_task_table(records).set_index("task")
    assert table.loc["a", "episodes"] == 2 and table.loc["a", "errors"] == 1
    assert table.loc["a", "success_rate"] == 0.5
    assert table.loc["b", "success_rate"] == 1.0
    suite = per_suite_table(records).iloc[0]
    assert suite["episodes"] == 3 and suite["successes"] == 2
    assert suite["mean_of_tasks"] == pytest.approx(0.75)  # unweighted mean of 0.5 and 1.0


def test_tables_are_written_as_markdown_csv_and_latex(tmp_path):
    records = _frame([("s", "a", True), ("s", "a", False)])
    markdown = write_tables({"per_task": per_task_table(records)}, tmp_path, "> header")
    assert "50.0" in markdown and "> header" in markdown
    assert (tmp_path / "per_task.csv").read_text().startswith("suite,task,episodes")
    assert "\\begin{tabular}" in (tmp_path / "per_task.tex").read_text()


def test_reference_tables_hold_the_papers_numbers():
    libero = reference_table("libero").set_index("model")
    assert libero.loc["AsyncVLA", "libero_spatial"] == 98.4
    assert libero.loc["AsyncVLA", "average"] == 97.4
