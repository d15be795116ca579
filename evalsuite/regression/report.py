"""The nightly report: one self-contained HTML file (plots embedded as base64 PNG) and a Markdown summary.

Sections: the latest checkpoint's per-task table, each comparison with verdicts and p-values,
trend plots of the success rate per suite over checkpoints with 95 % Wilson intervals, and links
to the videos of new failures (relative links, so the report can be opened in place or served
with the run directories).
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: cron and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from evalsuite.regression.compare import BETTER, CORRECTION, WORSE, Comparison  # noqa: E402
from evalsuite.tables import wilson_interval  # noqa: E402


@dataclass
class NightlyReport:
    title: str
    latest_label: str  # the checkpoint the latest table is of
    latest: pd.DataFrame  # per-task table (evalsuite.tables.per_task_table) of the latest run
    comparisons: list[Comparison] = field(default_factory=list)
    trend: pd.DataFrame | None = None  # History.trend(): run_id, checkpoint, suite, episodes, successes
    notes: list[str] = field(default_factory=list)

    @property
    def worse(self) -> bool:
        return any(c.worse for c in self.comparisons)


# -- plots ------------------------------------------------------------------------------------
def trend_png(trend: pd.DataFrame) -> bytes:
    """Success rate per suite over checkpoints (evaluation order), with Wilson intervals."""
    suites = list(dict.fromkeys(trend["suite"]))
    fig, axes = plt.subplots(len(suites), 1, figsize=(8, 2.8 * len(suites)), squeeze=False, dpi=100)
    for ax, suite in zip(axes[:, 0], suites):
        rows = trend[trend["suite"] == suite]
        k, n = rows["successes"].to_numpy(), rows["episodes"].to_numpy()
        rate = [100 * s / e if e else float("nan") for s, e in zip(k, n)]
        bounds = [wilson_interval(int(s), int(e)) for s, e in zip(k, n)]
        # max(0, .): the Wilson bound equals the rate at 0 % and 100 %, up to rounding
        low = [max(0.0, r - 100 * lo) for r, (lo, _) in zip(rate, bounds)]
        high = [max(0.0, 100 * hi - r) for r, (_, hi) in zip(rate, bounds)]
        x = range(len(rows))
        ax.errorbar(x, rate, yerr=[low, high], marker="o", capsize=4, linewidth=1.5)
        ax.set_xticks(
            list(x), [f"{c}\n{s[:8]}" for c, s in zip(rows["checkpoint"], rows["sha256"])], fontsize=8
        )
        ax.set_ylim(-3, 103)
        ax.set_ylabel("success rate (%)")
        ax.set_title(f"{suite}: success rate per checkpoint (95% Wilson interval)", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# -- tables as text ---------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "—" if pd.isna(x) else f"{100 * x:.1f}"


def latest_display(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "suite": table["suite"],
            "task": table["task"],
            "episodes": table["episodes"],
            "errors": table["errors"],
            "success %": [_pct(r) for r in table["success_rate"]],
            "95% CI": [f"{_pct(lo)}–{_pct(hi)}" for lo, hi in zip(table["ci_low"], table["ci_high"])],
        }
    )


def comparison_display(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = rows[keys].copy()
    out["baseline %"] = [f"{_pct(r)} ({k}/{n})" for r, k, n in zip(rows["rate_a"], rows["k_a"], rows["n_a"])]
    out["candidate %"] = [f"{_pct(r)} ({k}/{n})" for r, k, n in zip(rows["rate_b"], rows["k_b"], rows["n_b"])]
    out["Δ pts"] = ["—" if pd.isna(d) else f"{100 * d:+.1f}" for d in rows["diff"]]
    out["p (Fisher)"] = [f"{p:.3g}" for p in rows["p_value"]]
    out[f"p ({CORRECTION})"] = [f"{p:.3g}" for p in rows["p_adjusted"]]
    out["verdict"] = rows["verdict"]
    return out


def _video_link(video: object, report_dir: Path, run_dir: Path | None) -> str | None:
    """A link relative to the report; None where no video was recorded (pandas gives NaN for None)."""
    if not isinstance(video, str) or not video or run_dir is None:
        return None
    return os.path.relpath(Path(run_dir).resolve() / video, report_dir)


# -- Markdown -----------------------------------------------------------------------------------
def to_markdown(report: NightlyReport, report_dir: Path) -> str:
    parts = [f"# {report.title}", ""]
    parts += [f"> {note}" for note in report.notes]
    overall = "**something got significantly worse**" if report.worse else "nothing got significantly worse"
    parts += ["", f"Verdict: {overall}.", "", f"## Latest: {report.latest_label}", ""]
    parts.append(latest_display(report.latest).to_markdown(index=False))
    for c in report.comparisons:
        parts += ["", f"## {c.candidate} vs baseline {c.baseline}", ""]
        parts.append(
            f"Two-sided Fisher exact test per task and per suite, {CORRECTION.capitalize()} correction "
            f"across tasks (and across suites), alpha = {c.alpha}."
        )
        parts += ["", "### Per suite", "", comparison_display(c.suites, ["suite"]).to_markdown(index=False)]
        parts += [
            "",
            "### Per task",
            "",
            comparison_display(c.tasks, ["suite", "task"]).to_markdown(index=False),
        ]
        parts += ["", f"### New failures ({len(c.new_failures)})", ""]
        parts += [f"- warning: {w}" for w in c.warnings]
        for row in c.new_failures.itertuples():
            link = _video_link(row.video, report_dir, c.candidate_dir)
            before = _video_link(row.baseline_video, report_dir, c.baseline_dir)
            now = f"[video]({link})" if link else "no video recorded"
            was = f", [baseline video]({before})" if before else ""
            parts.append(f"- `{row.episode_id}`: {now}{was}")
    if report.trend is not None and not report.trend.empty:
        parts += ["", "## Trend (success % per suite over checkpoints)", ""]
        trend = report.trend.assign(
            rate=[
                _pct(s / e if e else float("nan"))
                for s, e in zip(report.trend["successes"], report.trend["episodes"])
            ]
        )
        pivot = trend.pivot_table(
            index=["run_id", "checkpoint"], columns="suite", values="rate", aggfunc="first"
        )
        parts.append(pivot.reset_index().to_markdown(index=False))
    return "\n".join(parts) + "\n"


# -- HTML -------------------------------------------------------------------------------------
CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, td:nth-child(2) { text-align: left; }
.worse { background: #fbd5d5; font-weight: bold; } .better { background: #d5f5dc; }
.banner { padding: 0.6em 1em; border-radius: 4px; } .banner.worse { border: 1px solid #c00; }
.banner.ok { background: #e8f4ff; border: 1px solid #69c; }
"""


def _table_html(frame: pd.DataFrame, table_id: str) -> str:
    body = frame.to_html(index=False, escape=True, table_id=table_id, border=0)
    for verdict in (WORSE, BETTER):  # colour the verdict cells
        body = body.replace(f"<td>{verdict}</td>", f'<td class="{verdict}">{verdict}</td>')
    return body


def to_html(report: NightlyReport, report_dir: Path) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
    ]
    parts += [f"<p><em>{e(note)}</em></p>" for note in report.notes]
    if report.worse:
        parts.append("<p class='banner worse'>Something got <b>significantly worse</b> (exit code 1).</p>")
    else:
        parts.append("<p class='banner ok'>Nothing got significantly worse (exit code 0).</p>")
    parts += [
        f"<h2>Latest: {e(report.latest_label)}</h2>",
        _table_html(latest_display(report.latest), "latest"),
    ]
    for i, c in enumerate(report.comparisons):
        parts.append(f"<h2>{e(c.candidate)} vs baseline {e(c.baseline)}</h2>")
        parts.append(
            f"<p>Two-sided Fisher exact test per task and per suite; {CORRECTION.capitalize()} correction "
            f"across tasks (and across suites); alpha = {c.alpha}.</p>"
        )
        parts += ["<h3>Per suite</h3>", _table_html(comparison_display(c.suites, ["suite"]), f"suites-{i}")]
        parts += [
            "<h3>Per task</h3>",
            _table_html(comparison_display(c.tasks, ["suite", "task"]), f"tasks-{i}"),
        ]
        parts += [
            f"<ul class='warnings'>{''.join(f'<li>{e(w)}</li>' for w in c.warnings)}</ul>"
            if c.warnings
            else ""
        ]
        parts.append(f"<h3>New failures ({len(c.new_failures)})</h3><ul class='new-failures'>")
        for row in c.new_failures.itertuples():
            link = _video_link(row.video, report_dir, c.candidate_dir)
            before = _video_link(row.baseline_video, report_dir, c.baseline_dir)
            now = f"<a href='{e(link)}'>video</a>" if link else "no video recorded"
            was = f", <a href='{e(before)}'>baseline video</a>" if before else ""
            parts.append(f"<li><code>{e(row.episode_id)}</code>: {now}{was}</li>")
        parts.append("</ul>")
    if report.trend is not None and not report.trend.empty:
        png = base64.b64encode(trend_png(report.trend)).decode()
        parts += [
            "<h2>Trend</h2>",
            f"<img class='trend' alt='success rate per suite over checkpoints' src='data:image/png;base64,{png}'>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: NightlyReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(to_html(report, out_dir.resolve()))
    md_path.write_text(to_markdown(report, out_dir.resolve()))
    return html_path, md_path
