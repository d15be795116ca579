"""One page per run: `RUN_DIR/index.html`, written at the end of every run and by
`asyncvla-eval report RUN_DIR --html`.

A single HTML file with no outside resource (its style inline): the run's protocol header, its
tables, and each task's recorded videos with their outcome, played by the browser's own `<video>`
element from the run's `videos/` folder (linked relatively, so the page works opened in place, or
with the run directory copied or served anywhere).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from evalsuite.records import EpisodeRecord
from evalsuite.tables import to_display

PAGE = "index.html"
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td:first-child, td:nth-child(2) { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; white-space: pre-wrap; font-size: 0.85em; }
.videos { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figcaption { font-size: 0.85em; }
.success { color: #1a7f37; } .failure { color: #cf222e; } .error { color: #8a6d00; }
"""


def write_run_page(
    run_dir: Path, header: str, tables: dict[str, pd.DataFrame], records: list[EpisodeRecord]
) -> Path:
    """Write the run's page (module docstring) and return its path."""
    run_dir = Path(run_dir)
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(run_dir.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(run_dir.name)}</h1>",
        f"<pre>{e(header.replace('> ', ''))}</pre>",
    ]
    for name, table in tables.items():
        shown = to_display(table)
        p_values = {c: "{:.3g}".format for c in shown.columns if str(c).endswith(" p")}  # as in the .md
        parts += [
            f"<h2>{e(name)}</h2>",
            # a callable: pandas' to_html calls float_format on the floats of an object column
            # (libero_table1's, beside its interval strings), which a format string is not
            shown.to_html(index=False, na_rep="--", float_format="{:.1f}".format, formatters=p_values),
        ]
    parts.append("<h2>videos</h2>")
    by_task: dict[tuple[str, str], list[EpisodeRecord]] = {}
    for record in records:
        if record.video and (run_dir / record.video).is_file():
            by_task.setdefault((record.suite, record.task), []).append(record)
    if not by_task:
        parts.append("<p>No video was recorded (--video none, or no episode has run).</p>")
    for (suite, task), recorded in by_task.items():
        parts.append(f"<h3>{e(suite)} / {e(task)}</h3><div class='videos'>")
        for r in recorded:
            outcome = "error" if r.success is None else ("success" if r.success else "failure")
            parts.append(
                f"<figure><video controls preload='metadata' src='{e(r.video)}'></video>"
                f"<figcaption class='{outcome}'>episode {r.episode_index}: {outcome} after {r.steps} steps"
                "</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    path = run_dir / PAGE
    path.write_text("\n".join(parts))
    return path
