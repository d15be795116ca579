"""LIBERO in the paper's Table 1 layout: four suite success rates and their average, next to the
paper's rows (every model of Table 1), with the delta to the paper's AsyncVLA row.

A suite's rate pools its episodes (500 = 10 tasks x 50); with equal episodes per task that is
also the mean of task rates. "average" is the unweighted mean of the four suite rates, as in the
paper, and only exists when all four were run; its interval is the Wilson interval of the
pooled episodes (equal to the mean when the suites have equal episode counts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalsuite.suites.spec import SuiteSpec
from evalsuite.tables import reference_table, wilson_interval

PAPER_COLUMNS = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
PAPER_MODEL = "AsyncVLA"


def _finished(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["success"].notna()]


def suite_rows(records: pd.DataFrame, paper: pd.Series) -> list[dict]:
    """One row per paper suite that was run, plus the average; rates as fractions."""
    done = _finished(records)
    rows, rates = [], []
    for suite in PAPER_COLUMNS:
        group = done[done["suite"] == suite]
        if group.empty:
            continue
        n, k = len(group), int(group["success"].astype(bool).sum())
        lo, hi = wilson_interval(k, n)
        errors = int(records[(records["suite"] == suite)]["success"].isna().sum())
        rates.append(k / n)
        rows.append(_row(suite, n, k, errors, k / n, lo, hi, paper[suite]))
    if len(rates) == len(PAPER_COLUMNS):
        pooled = done[done["suite"].isin(PAPER_COLUMNS)]
        n, k = len(pooled), int(pooled["success"].astype(bool).sum())
        lo, hi = wilson_interval(k, n)
        errors = int(records[records["suite"].isin(PAPER_COLUMNS)]["success"].isna().sum())
        rows.append(_row("average", n, k, errors, float(np.mean(rates)), lo, hi, paper["average"]))
    return rows


def _row(suite: str, n: int, k: int, errors: int, rate: float, lo: float, hi: float, paper: float) -> dict:
    return {
        "suite": suite,
        "episodes": n,
        "successes": k,
        "errors": errors,
        "success_rate": rate,
        "ci_low": lo,
        "ci_high": hi,
        "paper AsyncVLA %": float(paper),
        "delta pts": round(100 * rate - float(paper), 1),
    }


def run_label(records: pd.DataFrame) -> str:
    modes = sorted(set(records["mode"].dropna())) if "mode" in records else []
    return "this run" + (f" ({', '.join(modes)})" if modes else "")


def table1(records: pd.DataFrame, suites: list[SuiteSpec]) -> dict[str, pd.DataFrame]:
    """`libero_suites` (ours with intervals and deltas) and `libero_table1` (the paper's table + ours)."""
    reference = reference_table("libero")
    paper = reference.set_index("model").loc[PAPER_MODEL]
    rows = suite_rows(records, paper) if not records.empty else []
    suites_table = pd.DataFrame(
        rows,
        columns=[
            "suite",
            "episodes",
            "successes",
            "errors",
            "success_rate",
            "ci_low",
            "ci_high",
            "paper AsyncVLA %",
            "delta pts",
        ],
    )
    ours = {r["suite"]: round(100 * r["success_rate"], 1) for r in rows}
    ci = {r["suite"]: f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}" for r in rows}
    wide = reference.copy()
    wide.insert(0, "source", "paper")
    ours_row = {"source": "harness", "model": run_label(records)}
    ours_row |= {c: ours.get(c, np.nan) for c in (*PAPER_COLUMNS, "average")}
    ci_row = {"source": "harness", "model": "95% Wilson CI"} | {
        c: ci.get(c, "") for c in (*PAPER_COLUMNS, "average")
    }
    delta_row = {"source": "harness", "model": f"delta vs paper {PAPER_MODEL} (pts)"}
    delta_row |= {
        c: round(ours[c] - float(paper[c]), 1) if c in ours else np.nan for c in ours_row if c in paper
    }
    wide = pd.concat([wide, pd.DataFrame([ours_row, ci_row, delta_row])], ignore_index=True)
    return {"libero_suites": suites_table, "libero_table1": wide}
