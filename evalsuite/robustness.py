"""Robustness as paired outcomes: each perturbed episode against the same episode of the original task.

LIBERO-PRO's `{suite}_{kind}` suites keep the base suite's task names, and episode k of a task
starts from init state k of its own file, so episode k of a perturbed task and episode k of the
original task form a pair (same seed, same policy mode). Per base suite and perturbation:

- success on the original and on the perturbed episodes of the pairs, each with its 95 % Wilson
  interval (evalsuite.tables.wilson_interval);
- the drop in points, original minus perturbed;
- McNemar's exact test on the discordant pairs (`lost`: original succeeded, perturbed failed;
  `gained`: the reverse), statsmodels' `mcnemar(exact=True)`: a binomial test of lost against
  gained, valid at any count. Paired, it sees a drop that two independent rates with overlapping
  intervals would not.

An episode recorded as an error (it crashed on every attempt), or one whose partner was not run,
is left out of the pairs and counted as `unpaired`.
"""

from __future__ import annotations

import pandas as pd

from evalsuite.tables import wilson_interval

KEYS = ["base_suite", "task", "episode_index", "seed", "mode"]
COLUMNS = [
    "suite",
    "perturbation",
    "pairs",
    "original %",
    "original 95% CI",
    "perturbed %",
    "perturbed 95% CI",
    "drop pts",
    "lost",
    "gained",
    "McNemar p",
    "unpaired",
]


def pair_episodes(records: pd.DataFrame) -> pd.DataFrame:
    """One row per perturbed episode: KEYS (task = the base task), `perturbation`, `original` and
    `perturbed` (True / False, None where that side is an error or was not run)."""
    columns = [*KEYS, "perturbation", "original", "perturbed"]
    if records.empty or "base_task" not in records.columns:
        return pd.DataFrame(columns=columns)
    # perturbed episodes whose base suite is in the run (a run of perturbed suites alone pairs nothing)
    perturbed = records[records["base_task"].notna() & records["base_suite"].isin(set(records["suite"]))]
    perturbed = perturbed[
        ["base_suite", "perturbation", "base_task", "episode_index", "seed", "mode", "success"]
    ]
    perturbed = perturbed.rename(columns={"base_task": "task", "success": "perturbed"})
    original = records[records["suite"].isin(set(perturbed["base_suite"]))]
    original = original[["suite", "task", "episode_index", "seed", "mode", "success"]]
    original = original.rename(columns={"suite": "base_suite", "success": "original"})
    pairs = perturbed.merge(original, on=KEYS, how="left", validate="many_to_one")
    for side in ("original", "perturbed"):
        pairs[side] = [None if pd.isna(v) else bool(v) for v in pairs[side]]
    return pairs[columns]


def mcnemar_p(lost: int, gained: int) -> float:
    """McNemar's exact p-value from the discordant pair counts (1.0 when there are none)."""
    from statsmodels.stats.contingency_tables import mcnemar  # imported when a table needs it

    return float(mcnemar([[0, lost], [gained, 0]], exact=True).pvalue)


def paired_row(pairs: pd.DataFrame) -> dict:
    """The statistics of one group of pairs (see the module docstring)."""
    complete = pairs[pairs["original"].notna() & pairs["perturbed"].notna()]
    original = complete["original"].astype(bool)
    perturbed = complete["perturbed"].astype(bool)
    n = len(complete)
    lost, gained = int((original & ~perturbed).sum()), int((~original & perturbed).sum())
    k_orig, k_pert = int(original.sum()), int(perturbed.sum())
    row = {"pairs": n}
    for side, k in (("original", k_orig), ("perturbed", k_pert)):
        lo, hi = wilson_interval(k, n)
        row[f"{side} %"] = round(100 * k / n, 1) if n else float("nan")
        row[f"{side} 95% CI"] = f"{100 * lo:.1f}-{100 * hi:.1f}"
    row["drop pts"] = round(100 * (k_orig - k_pert) / n, 1) if n else float("nan")
    row["lost"], row["gained"] = lost, gained
    row["McNemar p"] = mcnemar_p(lost, gained)
    row["unpaired"] = len(pairs) - n
    return row


def robustness_table(records: pd.DataFrame, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Per base suite and perturbation (and, where several base suites have a perturbation, all of
    them pooled), the paired statistics; `labels` names perturbations (e.g. swap -> "swap
    (position)")."""
    pairs = pair_episodes(records)
    labels = labels or {}
    rows = []
    for (base, kind), group in pairs.groupby(["base_suite", "perturbation"], sort=False):
        rows.append({"suite": base, "perturbation": labels.get(kind, kind), **paired_row(group)})
    for kind, group in pairs.groupby("perturbation", sort=False):
        if group["base_suite"].nunique() > 1:
            rows.append(
                {"suite": "all (pooled)", "perturbation": labels.get(kind, kind), **paired_row(group)}
            )
    return pd.DataFrame(rows, columns=COLUMNS)
