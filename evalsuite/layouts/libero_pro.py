"""LIBERO-PRO's suites: each perturbed suite's success rate, and, when a run holds a base suite and
its perturbations (`--robustness`), the paired robustness table (evalsuite/robustness.py).

`libero_pro_suites`: per perturbed suite, its base suite, perturbation, episodes, successes, errors,
success rate with its 95 % Wilson interval. `libero_robustness`: per base suite and perturbation,
success on the original and on the perturbed episodes of the pairs (task and episode index), each
with its interval, the drop in points, the discordant pairs and McNemar's exact p; a pooled row per
perturbation that several base suites have.
"""

from __future__ import annotations

import pandas as pd

from envs.libero.pro import AXES
from evalsuite.robustness import robustness_table
from evalsuite.suites.spec import SuiteSpec
from evalsuite.tables import group_rates

SUITE_COLUMNS = ["suite", "base_suite", "perturbation", "episodes", "successes", "errors"]


def robustness(records: pd.DataFrame, suites: list[SuiteSpec]) -> dict[str, pd.DataFrame]:
    perturbed = {s.name: s for s in suites if "perturbation" in s.protocol}
    done = records[records["suite"].isin(perturbed)] if not records.empty else records
    rates = group_rates(done, ["suite"])
    if not rates.empty:
        rates.insert(1, "base_suite", [perturbed[s].protocol["base_suite"] for s in rates["suite"]])
        rates.insert(2, "perturbation", [perturbed[s].protocol["perturbation"] for s in rates["suite"]])
    else:
        rates = pd.DataFrame(columns=[*SUITE_COLUMNS, "success_rate", "ci_low", "ci_high"])
    tables = {"libero_pro_suites": rates}
    labels = {kind: f"{kind} ({axis})" for kind, axis in AXES.items()}
    table = robustness_table(records, labels)
    if not table.empty:
        tables["libero_robustness"] = table
    return tables
