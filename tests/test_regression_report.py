"""The nightly report: a self-contained HTML file, a Markdown summary, and the page as Chromium renders it."""

import base64
import io
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import fisher_exact
from test_regression_compare import rate, records

from evalsuite.regression.compare import compare_records
from evalsuite.regression.report import NightlyReport, trend_png, write_report
from evalsuite.tables import per_task_table, records_frame

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def report_files(tmp_path):
    base = records("s", "pick", rate(9, 10), video_every=1) + records("s", "place", rate(5, 10))
    cand = records("s", "pick", rate(1, 10), video_every=1) + records("s", "place", rate(5, 10))
    comparison = compare_records(base, cand, "step1000 (aaaa)", "step2000 (bbbb)")
    comparison.baseline_dir, comparison.candidate_dir = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    trend = pd.DataFrame(
        {
            "run_id": [1, 2],
            "checkpoint": ["step1000", "step2000"],
            "sha256": ["aaaa" * 16, "bbbb" * 16],
            "finished": ["", ""],
            "suite": ["s", "s"],
            "episodes": [20, 20],
            "successes": [14, 6],
            "errors": [0, 0],
        }
    )
    report = NightlyReport(
        title="Nightly test",
        latest_label="step2000 (bbbb)",
        latest=per_task_table(records_frame(cand, [])),
        comparisons=[comparison],
        trend=trend,
    )
    return write_report(report, tmp_path / "report")


def test_html_report_is_one_self_contained_file(report_files):
    html_path, _ = report_files
    page = html_path.read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    png = base64.b64decode(sources[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in page and "<script" not in page
    for table_id in ("latest", "suites-0", "tasks-0"):
        assert f'id="{table_id}"' in page
    assert '<td class="worse">worse</td>' in page and "significantly worse" in page
    assert "<a href='../runs/b/videos/pick_1.mp4'>video</a>" in page


def test_markdown_summary_has_verdicts_p_values_and_new_failures(report_files):
    _, md_path = report_files
    md = md_path.read_text()
    (pick,) = [line for line in md.splitlines() if line.startswith("| s       | pick   | 90.0 (9/10)")]
    cells = [c.strip() for c in pick.strip("|").split("|")]
    # 9/10 -> 1/10: Fisher exact p; Holm over the 2 tasks doubles the smaller p
    p = fisher_exact([[9, 1], [1, 9]]).pvalue
    assert cells[3:] == ["10.0 (1/10)", "-80", f"{p:.3g}", f"{2 * p:.3g}", "worse"]
    assert "| no significant change" in md
    assert "### New failures (8)" in md
    assert "[video](../runs/b/videos/pick_1.mp4), [baseline video](../runs/a/videos/pick_1.mp4)" in md


def test_trend_plot_draws_one_panel_per_suite():
    trend = pd.DataFrame(
        {
            "checkpoint": ["a", "a", "b", "b"],
            "sha256": ["x" * 64] * 4,
            "suite": ["s1", "s2", "s1", "s2"],
            "episodes": [10, 10, 10, 10],
            "successes": [0, 10, 5, 10],
        }
    )
    one = Image.open(io.BytesIO(trend_png(trend[trend.suite == "s1"])))
    two = Image.open(io.BytesIO(trend_png(trend)))
    assert one.width == two.width and two.height == 2 * one.height


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_report_opens_in_headless_chromium(report_files, tmp_path):
    html_path, _ = report_files
    url = html_path.resolve().as_uri()
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1100,1800",
                url,
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    assert '<table class="dataframe" id="latest">' in dom and 'id="tasks-0"' in dom
    assert '<img class="trend"' in dom
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (1800, 1100, 3)
    # matplotlib's first line colour (#1f77b4) is the trend plot; the red-tinted cell is the verdict "worse"
    plot = (np.abs(pixels - [31, 119, 180]).sum(-1) < 40).sum()
    worse = (np.abs(pixels - [251, 213, 213]).sum(-1) < 10).sum()
    assert plot > 500, "the trend plot did not render"
    assert worse > 500, "the 'worse' verdict cell did not render"
