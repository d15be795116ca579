"""SimplerEnv tables in the paper's layouts (Tables 2 and 3) and the sim-vs-real metrics.

Table 4 (ablations) is `asyncvla-eval ablations simpler-widowx ...` (evalsuite/ablations.py): it runs
the Table 2 tasks once per variant; each variant's run directory also gets its own Table 2.

Aggregation follows SimplerEnv's `tools/calc_metrics_evaluation_videos.py` (see
`protocol/simpler/README.md` sec. 5): every reported number is an unweighted mean of per-variant
means. A task's value is the mean over its subtasks (coke-can orientations, drawers) of the mean
over its variants (URDF directories for visual matching, variant lines for variant aggregation);
"drawer" is the mean of open and close; camera variants are run but reported apart; the paper's
"Average" is the unweighted mean of the four tasks. Intervals are Wilson intervals on the pooled
episodes a number averages (equal to the mean when every variant has its full episode count).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalsuite.suites.spec import SuiteSpec
from evalsuite.tables import reference_table, wilson_interval

WIDOWX_TASKS = {  # harness task -> paper column (reference/simpler_widowx.csv)
    "spoon_on_towel": "put_spoon_on_towel",
    "carrot_on_plate": "put_carrot_on_plate",
    "stack_cube": "stack_cubes",
    "eggplant_in_basket": "put_eggplant_in_basket",
}
GOOGLE_TASKS = {"pick_coke_can": ["pick_coke_can"], "move_near": ["move_near"]}
GOOGLE_TASKS |= {"drawer": ["open_drawer", "close_drawer"], "put_in_drawer": ["put_in_drawer"]}
PAPER_MODEL = "AsyncVLA"


def _finished(records: pd.DataFrame) -> pd.DataFrame:
    """Episodes with an outcome (errors never enter a rate), success as 0/1."""
    out = records[records["success"].notna()].copy()
    out["success"] = out["success"].astype(bool).astype(float)
    return out


def task_rate(records: pd.DataFrame) -> float:
    """Mean over subtasks of the mean over variants (SimplerEnv's unweighted means of means)."""
    if records.empty:
        return float("nan")
    per_variant = records.groupby(["subtask", "aggregate_variant"], dropna=False)["success"].mean()
    return float(per_variant.groupby(level="subtask", dropna=False).mean().mean())


def paper_task_rate(records: pd.DataFrame, parts: list[str]) -> float:
    """A paper column's number: the mean of its parts (drawer = mean(open, close))."""
    rates = [task_rate(records[records["simpler_task"] == p]) for p in parts]
    rates = [r for r in rates if not np.isnan(r)]
    return float(np.mean(rates)) if rates else float("nan")


def _row(label: str, records: pd.DataFrame, rate: float, paper: float | None) -> dict:
    n, k = len(records), int(records["success"].sum()) if len(records) else 0
    lo, hi = wilson_interval(k, n)
    paper_pct = np.nan if paper is None or pd.isna(paper) else float(paper)  # published in percent
    return {  # rates are fractions (rendered in percent); the paper column is percent, as LIBERO's
        "task": label,
        "episodes": n,
        "successes": k,
        "success_rate": rate,
        "ci_low": lo,
        "ci_high": hi,
        f"paper {PAPER_MODEL} %": paper_pct,
        "delta pts": round(100 * rate - paper_pct, 1),
        "paper_in_ci": bool(lo <= paper_pct / 100 <= hi) if not np.isnan(paper_pct) else None,
    }


def widowx_table(records: pd.DataFrame, paper_row: pd.Series | None) -> pd.DataFrame:
    """Table 2: the four Bridge tasks and their unweighted average."""
    done = _finished(records)
    rows = []
    for task, column in WIDOWX_TASKS.items():
        sel = done[done["simpler_task"] == task]
        if len(sel):
            paper = None if paper_row is None else paper_row.get(column)
            rows.append(_row(column, sel, task_rate(sel), paper))
    if rows:
        avg = float(np.mean([r["success_rate"] for r in rows]))
        paper = None if paper_row is None else paper_row.get("average")
        rows.append(_row("average", done, avg, paper))
    return pd.DataFrame(rows)


def widowx_layout(records: pd.DataFrame, suites: list[SuiteSpec]) -> dict[str, pd.DataFrame]:
    records = records[records["group"] == "widowx"]
    paper = reference_table("simpler_widowx").set_index("model")
    tables = {}
    for mode, sel in records.groupby("mode", sort=False):
        suffix = "" if mode == "asyncvla" or records["mode"].nunique() == 1 else f"_{mode}"
        tables[f"table2_widowx{suffix}"] = widowx_table(sel, paper.loc[PAPER_MODEL])
    return tables


def google_table(records: pd.DataFrame, paper_row: pd.Series | None) -> pd.DataFrame:
    """Table 3: M (visual matching) and A (variant aggregation) per task and their averages."""
    done = _finished(records)
    done = done[done["in_official_aggregate"].astype(bool)]
    rows = []
    for setting, group in (("M", "google_vm"), ("A", "google_va")):
        sel_group = done[done["group"] == group]
        if sel_group.empty:
            continue
        rates = []
        for column, parts in GOOGLE_TASKS.items():
            sel = sel_group[sel_group["simpler_task"].isin(parts)]
            if sel.empty:
                continue
            paper = None if paper_row is None else paper_row.get(f"{column}_{setting}")
            rows.append({"setting": setting, **_row(column, sel, paper_task_rate(sel, parts), paper)})
            rates.append(rows[-1]["success_rate"])
        if len(rates) == len(GOOGLE_TASKS):  # the paper's average needs all four tasks
            paper = None if paper_row is None else paper_row.get(f"average_{setting}")
            rows.append({"setting": setting, **_row("average", sel_group, float(np.mean(rates)), paper)})
    return pd.DataFrame(rows)


def camera_variants_table(records: pd.DataFrame) -> pd.DataFrame:
    """Camera-orientation variants: run by SimplerEnv's scripts, reported apart, never averaged."""
    done = _finished(records)
    cams = done[(done["group"] == "google_va") & done["variant"].astype(str).str.startswith("camera")]
    rows = [
        _row(f"{task}/{variant}", sel, task_rate(sel), None)
        for (task, variant), sel in cams.groupby(["simpler_task", "variant"], sort=False)
    ]
    return pd.DataFrame(rows).drop(
        columns=[f"paper {PAPER_MODEL} %", "delta pts", "paper_in_ci"], errors="ignore"
    )


def google_layout(records: pd.DataFrame, suites: list[SuiteSpec]) -> dict[str, pd.DataFrame]:
    records = records[records["group"].isin(["google_vm", "google_va"])]
    paper = reference_table("simpler_google").set_index("model")
    tables = {"table3_google": google_table(records, paper.loc[PAPER_MODEL])}
    cams = camera_variants_table(records)
    if not cams.empty:
        tables["google_va_camera_variants"] = cams
    return tables


# -- sim vs real (SimplerEnv simpler_env/utils/metrics.py:134-163), argument order (sim, real) --
def pearson_correlation(perf_sim: list[float], perf_real: list[float]) -> float:
    """SimplerEnv's Pearson r: 1 when the centred vectors are equal, a 1e-8 guard otherwise."""
    sim, real = np.asarray(perf_sim, float), np.asarray(perf_real, float)
    if sim.shape != real.shape:
        raise ValueError(f"sim and real need one value per policy each; got {sim.shape} and {real.shape}")
    sim, real = sim - sim.mean(), real - real.mean()
    if np.all(sim == real):
        return 1.0
    return float(np.sum(sim * real) / (np.sqrt(np.sum(sim**2) * np.sum(real**2)) + 1e-8))


def mean_maximum_rank_violation(perf_sim: list[float], perf_real: list[float]) -> float:
    """MMRV: mean over policies of the largest real-success gap among pairs whose order sim gets wrong."""
    sim, real = np.asarray(perf_sim, float), np.asarray(perf_real, float)
    if sim.shape != real.shape:
        raise ValueError(f"sim and real need one value per policy each; got {sim.shape} and {real.shape}")
    wrong = (sim[:, None] > sim[None, :]) != (real[:, None] > real[None, :])
    gaps = np.abs(real[:, None] - real[None, :]) * wrong
    return float(gaps.max(axis=1).mean()) if len(sim) else float("nan")


def sim_real_table(sim: pd.DataFrame, real_csv: str) -> pd.DataFrame:
    """MMRV and Pearson r per task for several policies.

    `sim` and the CSV both have columns policy, task, success_rate (fractions); only policies present
    in both enter, and a task needs at least two of them.
    """
    real = pd.read_csv(real_csv)
    missing = {"policy", "task", "success_rate"} - set(real.columns)
    if missing:
        raise ValueError(f"{real_csv}: needs columns policy, task, success_rate; missing {sorted(missing)}")
    both = sim.merge(real, on=["policy", "task"], suffixes=("_sim", "_real"))
    rows = []
    for task, sel in both.groupby("task", sort=False):
        if len(sel) < 2:
            continue
        s, r = sel["success_rate_sim"].tolist(), sel["success_rate_real"].tolist()
        rows.append(
            {
                "task": task,
                "policies": len(sel),
                "mmrv": mean_maximum_rank_violation(s, r),
                "pearson_r": pearson_correlation(s, r),
            }
        )
    return pd.DataFrame(rows)
