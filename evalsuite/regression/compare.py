"""Did a checkpoint get better, worse, or is the difference noise? Two runs compared task by task.

Per task and per suite: the two success rates, their difference, a two-sided Fisher exact test
on the 2x2 table (successes / failures x baseline / candidate), and Holm's correction across the
tasks (and, separately, across the suites) of the comparison.

Why Fisher: nightly runs have 10-50 episodes per task, where the normal approximation behind the
two-proportion z test is poor (it is anti-conservative near 0 % and 100 %); Fisher is exact at
any n. Why Holm and not Benjamini-Hochberg: the verdict "worse" pages someone. Holm bounds the
probability of *any* false "worse" in a night by alpha (family-wise error rate); BH bounds only the
expected fraction of false discoveries, which lets a 40-task suite raise a false alarm most nights.

Episodes are paired by (suite, task, variant, episode index, seed): the plan gives the same
initial state to the same key in both runs, so "succeeded at the baseline, fails now" is a new
failure of the same situation, and its video (when recorded) shows what changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests

from evalsuite.errors import EvalError
from evalsuite.records import EpisodeRecord
from evalsuite.store import RunStore, setting_differences
from evalsuite.tables import wilson_interval

log = logging.getLogger(__name__)

BETTER, WORSE, SAME = "better", "worse", "no significant change"
NO_DATA = "no data"
ALPHA = 0.05
CORRECTION = "holm"


class CompareError(EvalError, ValueError):
    """The two runs cannot be compared (no suite in common, not a run directory, ...)."""


@dataclass
class Comparison:
    baseline: str  # labels of the two runs (run directory or checkpoint name)
    candidate: str
    tasks: pd.DataFrame  # one row per (suite, task): counts, rates, diff, p, p_adjusted, verdict
    suites: pd.DataFrame  # one row per suite, episodes pooled over its tasks
    new_failures: pd.DataFrame  # suite, task, episode_id, video (path or None), baseline_video
    alpha: float = ALPHA
    warnings: list[str] = field(default_factory=list)
    baseline_dir: Path | None = None  # run directories, where videos of new failures are
    candidate_dir: Path | None = None

    @property
    def worse(self) -> bool:
        """Anything significantly worse (a task or a whole suite): the nightly job's exit code 1."""
        return bool((self.tasks["verdict"] == WORSE).any() or (self.suites["verdict"] == WORSE).any())

    @property
    def better(self) -> bool:
        return bool((self.tasks["verdict"] == BETTER).any() or (self.suites["verdict"] == BETTER).any())


def fisher_p(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided Fisher exact p-value of 'the two success probabilities are equal'."""
    if n_a == 0 or n_b == 0:
        return 1.0
    return float(fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="two-sided").pvalue)


def _test_rows(counts: pd.DataFrame, keys: list[str], alpha: float) -> pd.DataFrame:
    """counts: keys + n_a, k_a, n_b, k_b; adds rates, intervals, p, Holm-adjusted p and verdicts."""
    out = counts.copy()
    out["rate_a"] = [k / n if n else float("nan") for k, n in zip(out["k_a"], out["n_a"])]
    out["rate_b"] = [k / n if n else float("nan") for k, n in zip(out["k_b"], out["n_b"])]
    out["diff"] = out["rate_b"] - out["rate_a"]
    for side in ("a", "b"):
        bounds = [wilson_interval(int(k), int(n)) for k, n in zip(out[f"k_{side}"], out[f"n_{side}"])]
        out[f"ci_low_{side}"] = [lo for lo, _ in bounds]
        out[f"ci_high_{side}"] = [hi for _, hi in bounds]
    out["p_value"] = [fisher_p(*map(int, row)) for row in out[["k_a", "n_a", "k_b", "n_b"]].itertuples(False)]
    judged = (out["n_a"] > 0) & (out["n_b"] > 0)
    out["p_adjusted"] = 1.0
    out["significant"] = False
    if judged.any():
        reject, adjusted, _, _ = multipletests(out.loc[judged, "p_value"], alpha=alpha, method=CORRECTION)
        out.loc[judged, "p_adjusted"] = adjusted
        out.loc[judged, "significant"] = reject
    out["verdict"] = [
        NO_DATA if not j else (WORSE if d < 0 else BETTER) if s else SAME
        for j, s, d in zip(judged, out["significant"], out["diff"])
    ]
    return out[[*keys, "n_a", "k_a", "rate_a", "n_b", "k_b", "rate_b", "diff", "p_value", "p_adjusted",
                "verdict", "ci_low_a", "ci_high_a", "ci_low_b", "ci_high_b"]]  # fmt: skip


def _finished(records: list[EpisodeRecord]) -> pd.DataFrame:
    rows = [
        {
            "suite": r.suite,
            "task": r.task,
            "pair": (r.suite, r.task, r.variant, r.episode_index, r.seed),
            "episode_id": r.episode_id,
            "success": bool(r.success),
            "video": r.video,
        }
        for r in records
        if r.success is not None  # errors never enter a rate (as in the tables)
    ]
    return pd.DataFrame(rows, columns=["suite", "task", "pair", "episode_id", "success", "video"])


def compare_records(
    baseline: list[EpisodeRecord],
    candidate: list[EpisodeRecord],
    baseline_label: str = "baseline",
    candidate_label: str = "candidate",
    alpha: float = ALPHA,
) -> Comparison:
    """Compare two sets of episode records on the suites they share."""
    if not 0 < alpha < 1:
        raise CompareError(f"alpha must be between 0 and 1, got {alpha}")
    a, b = _finished(baseline), _finished(candidate)
    shared = sorted(set(a["suite"]) & set(b["suite"]))
    if not shared:
        raise CompareError(
            f"{baseline_label} ({', '.join(sorted(set(a['suite']))) or 'no finished episode'}) and "
            f"{candidate_label} ({', '.join(sorted(set(b['suite']))) or 'no finished episode'}) "
            "have no suite with finished episodes in common; compare runs of the same suite"
        )
    warnings = []
    for suite in sorted((set(a["suite"]) | set(b["suite"])) - set(shared)):
        warnings.append(f"suite {suite} is in only one of the two runs and is not compared")
    a, b = a[a["suite"].isin(shared)], b[b["suite"].isin(shared)]

    def counts(keys: list[str]) -> pd.DataFrame:
        ca = a.groupby(keys, sort=False)["success"].agg(n_a="count", k_a="sum")
        cb = b.groupby(keys, sort=False)["success"].agg(n_b="count", k_b="sum")
        merged = ca.join(cb, how="outer").fillna(0).astype(int).reset_index()
        return merged[[*keys, "n_a", "k_a", "n_b", "k_b"]]

    tasks = _test_rows(counts(["suite", "task"]), ["suite", "task"], alpha)
    suites = _test_rows(counts(["suite"]), ["suite"], alpha)
    for row in tasks.itertuples():
        if row.n_a == 0 or row.n_b == 0:
            warnings.append(f"task {row.suite}/{row.task} has episodes in only one run and is not judged")

    paired = a.merge(b, on="pair", suffixes=("_a", "_b"))
    lost = paired[paired["success_a"] & ~paired["success_b"]]
    new_failures = pd.DataFrame(
        {
            "suite": lost["suite_b"],
            "task": lost["task_b"],
            "episode_id": lost["episode_id_b"],
            "video": lost["video_b"],
            "baseline_video": lost["video_a"],
        }
    ).reset_index(drop=True)
    return Comparison(baseline_label, candidate_label, tasks, suites, new_failures, alpha, warnings)


def load_run(run_dir: str | Path) -> tuple[dict, list[EpisodeRecord]]:
    """A run directory's manifest and records; RunDirError (exit code 2) when it is not one."""
    store = RunStore(run_dir)
    manifest = store.read_manifest()
    return manifest, list(store.load_records().values())


def compare_runs(baseline_dir: str | Path, candidate_dir: str | Path, alpha: float = ALPHA) -> Comparison:
    """Compare two run directories; warns when a shared suite was run under another protocol."""
    man_a, rec_a = load_run(baseline_dir)
    man_b, rec_b = load_run(candidate_dir)
    result = compare_records(
        rec_a, rec_b, run_label(baseline_dir, man_a), run_label(candidate_dir, man_b), alpha
    )
    result.baseline_dir, result.candidate_dir = Path(baseline_dir), Path(candidate_dir)
    for difference in setting_differences(man_a, man_b):
        result.warnings.append(
            f"the two runs measured under different settings ({difference}); the difference may not "
            "come from the checkpoint: re-run one of them with the other's settings"
        )
    for w in result.warnings:
        log.warning(w)
    return result


def run_label(run_dir: str | Path, manifest: dict) -> str:
    checkpoint = manifest.get("checkpoint")
    sha = manifest.get("checkpoint_sha256")
    if checkpoint and sha:
        return f"{Path(checkpoint).name} ({sha[:8]})"
    return Path(run_dir).name
