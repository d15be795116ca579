"""Success-rate tables: per task, per suite, in the paper's layouts; Markdown, CSV and LaTeX.

Rates are fractions in [0, 1] in the DataFrames and percent in rendered tables. Errors (episodes
that crashed on every attempt) are counted apart and never enter n.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from evalsuite.records import EpisodeRecord
from evalsuite.suites.spec import SuiteSpec, import_object


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval (95 % by default); (0, 1) when there is no episode to judge by."""
    if n == 0:
        return 0.0, 1.0
    # scipy's and not statsmodels' (the same interval: tests/test_tables.py): the lighter import,
    # paid at the end of every run (scripts/bench_startup.py); imported here, when first needed.
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return float(interval.low), float(interval.high)


def records_frame(records: list[EpisodeRecord], suites: list[SuiteSpec]) -> pd.DataFrame:
    """One row per episode, with the task's meta (task family, variant, ...) as columns."""
    meta = {(s.name, t.name): t.meta for s in suites for t in s.tasks}
    rows = []
    for r in records:
        row = r.to_json_dict()
        info = row.pop("info", None) or {}
        row.update({key: info[key] for key in EXECUTION_INFO + CHUNK_INFO if key in info})
        for key, value in meta.get((r.suite, r.task), {}).items():
            row.setdefault(key, value)
        rows.append(row)
    columns = list(EpisodeRecord.__dataclass_fields__)
    columns.remove("info")
    return pd.DataFrame(rows, columns=None if rows else columns)


# what asynchronous execution measures per episode (evalsuite/run/asynchronous.py)
EXECUTION_INFO = ("latency_steps", "pause_steps", "stale_ratio", "jerk")
# what an AsyncVLA policy says of each chunk (evalsuite/run/episode.py): tokens AFM regenerated
CHUNK_INFO = ("regenerated_per_call", "chunk_tokens")
# modes whose chunks are partly regenerated: the rater's (asyncvla) or random masks
MASKING_MODES = ("asyncvla", "random-mask", "rater-resample")


def regenerated_tables(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """How much of each chunk AFM regenerated: per task and over all chunks, the mean fraction
    (the rater's firing rate), its spread over chunks, the share of chunks where nothing was
    regenerated (AFM skipped: the chunk is SFM's), quantiles; and the distribution of the count
    per chunk (0..L tokens). Each policy call is one chunk; shares in percent."""
    have = (
        records[records["regenerated_per_call"].notna()] if "regenerated_per_call" in records else records[:0]
    )
    if have.empty:
        return {}
    L = int(have["chunk_tokens"].max())
    rows, dist = [], []
    groups = [*have.groupby(["suite", "task"], sort=False), (("all", "all tasks"), have)]
    for (suite, task), g in groups:
        counts = np.concatenate([np.asarray(c, dtype=float) for c in g["regenerated_per_call"]])
        frac = counts / L
        rows.append(
            {
                "suite": suite,
                "task": task,
                "chunks": len(counts),
                # percent: the tables print one decimal
                "regenerated % (mean)": 100 * frac.mean() if len(frac) else float("nan"),
                "sd over chunks %": 100 * frac.std() if len(frac) else float("nan"),
                "chunks with none %": 100 * (counts == 0).mean() if len(counts) else float("nan"),
                "median tokens": float(np.median(counts)) if len(counts) else float("nan"),
                "p90 tokens": float(np.quantile(counts, 0.9)) if len(counts) else float("nan"),
                "max tokens": counts.max() if len(counts) else float("nan"),
            }
        )
        hist = np.bincount(counts.astype(int), minlength=L + 1)[: L + 1]
        dist.append(
            {"suite": suite, "task": task}
            | {f"{k} of {L} %": 100 * h / max(1, len(counts)) for k, h in enumerate(hist)}
        )
    return {"regenerated": pd.DataFrame(rows), "regenerated_distribution": pd.DataFrame(dist)}


def execution_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per suite and task, how the episodes were executed under a latency: mean steps during calls
    and paused, the share of stale steps, the steps to success (completion time, successes only)
    and the jerk of the executed arm deltas."""
    rows = []
    for (suite, task), g in records.groupby(["suite", "task"], sort=False):
        done = g[g["success"] == True]  # noqa: E712 (None marks an error)
        rows.append(
            {
                "suite": suite,
                "task": task,
                "episodes": len(g),
                "latency_steps": g["latency_steps"].mean(),
                "pause_steps": g["pause_steps"].mean(),
                "stale %": 100 * g["stale_ratio"].mean(),
                "steps to success": done["steps"].mean() if len(done) else float("nan"),
                "jerk": g["jerk"].mean(),
            }
        )
    return pd.DataFrame(rows)


def rate_row(success: pd.Series) -> dict:
    """Counts, rate and interval of one group of episodes (success: True / False / None)."""
    finished = success.dropna().astype(bool)
    n, k = len(finished), int(finished.sum())
    lo, hi = wilson_interval(k, n)
    return {
        "episodes": n,
        "successes": k,
        "errors": int(success.isna().sum()),
        "success_rate": k / n if n else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
    }


def group_rates(records: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    if records.empty:
        return pd.DataFrame(
            columns=[*by, "episodes", "successes", "errors", "success_rate", "ci_low", "ci_high"]
        )
    rows = [
        {**dict(zip(by, key if isinstance(key, tuple) else (key,))), **rate_row(g["success"])}
        for key, g in records.groupby(by, sort=False, dropna=False)
    ]
    return pd.DataFrame(rows)


def per_task_table(records: pd.DataFrame) -> pd.DataFrame:
    return group_rates(records, ["suite", "task"])


def per_suite_table(records: pd.DataFrame) -> pd.DataFrame:
    """Pooled over the suite's episodes, plus the unweighted mean of task rates (the papers' 'Avg.')."""
    suites = group_rates(records, ["suite"])
    if suites.empty:
        return suites
    tasks = per_task_table(records)
    suites["mean_of_tasks"] = suites["suite"].map(tasks.groupby("suite")["success_rate"].mean())
    return suites


def per_task_layout(records: pd.DataFrame, suites: list[SuiteSpec]) -> dict[str, pd.DataFrame]:
    """The default layout: every task with its interval, then every suite."""
    return {"per_task": per_task_table(records), "per_suite": per_suite_table(records)}


def build_tables(records: pd.DataFrame, suites: list[SuiteSpec]) -> dict[str, pd.DataFrame]:
    tables = per_task_layout(records, suites)
    if "stale_ratio" in records.columns and records["stale_ratio"].notna().any():
        tables["execution"] = execution_table(records[records["stale_ratio"].notna()])
    if "mode" in records.columns and records["mode"].isin(MASKING_MODES).any():
        tables.update(regenerated_tables(records[records["mode"].isin(MASKING_MODES)]))
    for layout in dict.fromkeys(s.layout for s in suites):  # each layout once, in suite order
        if layout in ("per_task", ""):
            continue
        tables.update(import_object(layout)(records, suites))
    return tables


def reference_table(name: str) -> pd.DataFrame:
    """A table of the paper's published numbers (percent), e.g. reference_table("libero")."""
    text = resources.files("evalsuite.reference").joinpath(f"{name}.csv").read_text()
    return pd.read_csv(io.StringIO(text))


# -- rendering -------------------------------------------------------------------------------
PERCENT_COLUMNS = ("success_rate", "ci_low", "ci_high", "mean_of_tasks")


def to_display(table: pd.DataFrame) -> pd.DataFrame:
    """Fractions -> percent with one decimal, interval as 'lo-hi', for humans."""
    out = table.copy()
    if {"ci_low", "ci_high"} <= set(out.columns):
        out["95% CI"] = [
            f"{100 * lo:.1f}-{100 * hi:.1f}" for lo, hi in zip(out.pop("ci_low"), out.pop("ci_high"))
        ]
    for col in PERCENT_COLUMNS:
        if col in out.columns:
            out[col] = (100 * out[col].astype(float)).round(1)
    return out.rename(columns={"success_rate": "success %", "mean_of_tasks": "mean of tasks %"})


def render_tables(tables: dict[str, pd.DataFrame], header: str, out_dir: Path | None = None) -> str:
    """The Markdown of all tables under the protocol header (what the CLI prints); with `out_dir`,
    each table is also written there as .md/.csv/.tex."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    parts = [header]
    for name, table in tables.items():
        shown = to_display(table)
        # one decimal, except p-values (columns named "... p"): three significant digits
        p_values = [str(c).endswith(" p") for c in shown.columns]
        markdown = shown.to_markdown(index=False, floatfmt=[".3g" if p else ".1f" for p in p_values])
        if out_dir is not None:
            table.to_csv(out_dir / f"{name}.csv", index=False)
            (out_dir / f"{name}.md").write_text(f"{header}\n\n{markdown}\n")
            formatters = {c: "{:.3g}".format for c, p in zip(shown.columns, p_values) if p}
            (out_dir / f"{name}.tex").write_text(
                shown.to_latex(index=False, na_rep="--", float_format="%.1f", formatters=formatters)
            )
        parts.append(f"### {name}\n\n{markdown}")
    return "\n\n".join(parts) + "\n"


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path, header: str) -> str:
    """Write each table as .md/.csv/.tex; return the Markdown of all of them."""
    return render_tables(tables, header, out_dir)


def protocol_header(manifest: dict) -> str:
    """The values a result depends on, printed above every table."""
    lines = [
        f"run: {_policy_label(manifest.get('policy', {}))} "
        f"seed={manifest.get('seed')} replan_steps={manifest.get('replan_steps')}",
    ]
    if manifest.get("checkpoint_sha256"):
        lines.append(f"checkpoint: {manifest.get('checkpoint')} sha256={manifest['checkpoint_sha256'][:16]}")
    for suite, values in manifest.get("protocol", {}).items():
        lines.append(f"protocol {suite}: " + json.dumps(values, sort_keys=True, default=str))
    return "\n".join(f"> {line}" for line in lines)


def _policy_label(policy: dict) -> str:
    if policy.get("kind") == "asyncvla":
        return f"asyncvla mode={policy.get('mode')} threshold={policy.get('threshold')}"
    return str(policy.get("kind", "?"))
