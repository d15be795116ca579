"""The paper's Table 4 at the demo checkpoint's regime (issue 42), the `table4` stage of
scripts/reproduce_tabletop.py.

Four rows on the same tabletop episodes (10 tasks x N layouts, env seed 0), every row drawing the
same noise on an episode (the draw key has no mode), so each row is compared with AsyncVLA
episode by episode (McNemar's exact test), beside Wilson intervals and the paper's own values
(SimplerEnv WidowX, ../shared/paper/tables/ablation_widowx.csv):

| row                    | checkpoint                                   | inference                 |
|------------------------|----------------------------------------------|---------------------------|
| w/o unified training   | SFM-trained, same data, steps and rater      | asyncvla                  |
| w/o AFM inference      | the demo (unified)                           | sfm                       |
| w/o confidence rater   | the demo                                     | random-mask at the rate   |
|                        |                                              | the rater regenerated in  |
|                        |                                              | the AsyncVLA row          |
| AsyncVLA               | the demo                                     | asyncvla                  |
| rater-resample (extra) | the demo                                     | rater-resample: the rater's|
|                        |                                              | tokens from a fresh SFM   |
|                        |                                              | draw, no AFM (issue 42)   |
| SFM-trained, SFM only  | the SFM-trained twin                         | sfm (plain flow matching) |

The random-mask row regenerates each token with the AsyncVLA row's measured fraction, so the
rows differ in which tokens are regenerated, not how many (the paper does not give its rate;
the evaluator's default, 0.5, regenerates about ten times as many tokens as this rater does).
Rows are evaluated inline (`--workers 0`: one process, one core; on this 2-core machine that
was faster than Ray's two workers beside a training). Each row is an ordinary resumable run
directory under WORK/table4/<row>.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "paper" / "tables" / "ablation_widowx.csv"
ROWS = (  # (label, run dir, which checkpoint, mode)
    ("w/o unified training", "wo_unified_training", "sfm", "asyncvla"),
    ("w/o AFM inference", "wo_afm_inference", "demo", "sfm"),
    ("w/o confidence rater", "wo_confidence_rater", "demo", "random-mask"),
    ("AsyncVLA", "asyncvla", "demo", "asyncvla"),
    # not a row of the paper's: issue 42's best offline correction, run closed loop beside the rows
    ("rater-resample (not in the paper)", "rater_resample", "demo", "rater-resample"),
    # plain flow matching: the SFM-trained twin without rater and AFM (the toy study's fifth row)
    ("SFM-trained, SFM only (not in the paper)", "sfm_trained_sfm_only", "sfm", "sfm"),
)


def row_argv(
    ckpt: str, mode: str, out: Path, episodes: int, image_size: int, mask_rate: float | None
) -> list:
    argv = ["tabletop", "--ckpt", str(ckpt), "--mode", mode, "--episodes-per-task", str(episodes)]
    argv += ["--set", f"image_size={image_size}", "--workers", "0", "--out", str(out)]
    argv += ["--video", "none", "--seed", "0", "-q", "--device", "cpu"]
    return argv + (["--mask-rate", f"{mask_rate:.4f}"] if mask_rate is not None else [])


def run_row(argv: list[str]) -> pd.DataFrame:
    from evalsuite.eval_args import config_from_args, eval_parser
    from evalsuite.evaluate import evaluate
    from evalsuite.tables import records_frame

    config = config_from_args(eval_parser().parse_args(argv), argv)
    summary = evaluate(config, show_progress=False)
    return records_frame(summary.records, config.suites)


def regenerated_share(frame: pd.DataFrame) -> float:
    """Mean share of a chunk's tokens regenerated, over every chunk of the row."""
    if "regenerated_per_call" not in frame or frame["regenerated_per_call"].isna().all():
        return float("nan")
    counts = np.concatenate([np.asarray(c, float) for c in frame["regenerated_per_call"].dropna()])
    return float(counts.mean() / frame["chunk_tokens"].dropna().iloc[0])


def paper_values() -> dict[str, float]:
    if not PAPER.is_file():
        return {}
    paper = pd.read_csv(PAPER)
    return dict(zip(paper["variant"], paper["average"], strict=True))


def build_table(
    frames: dict[str, pd.DataFrame], steps: dict[str, str], variants: tuple = ROWS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows (paper order) and a per-task table; frames are keyed by row label."""
    from evalsuite.ablations import mcnemar_exact, paired_discordance
    from evalsuite.tables import rate_row

    paper = paper_values()
    full = frames["AsyncVLA"]
    rows, tasks = [], []
    for label, _, _, mode in variants:
        if label not in frames:
            continue
        frame = frames[label]
        stats = rate_row(frame["success"])
        row = {
            "variant": label,
            "paper (WidowX, %)": paper.get(label.split(" (")[0], float("nan")),
            "ours (%)": 100 * stats["success_rate"],
            "95% CI (Wilson)": f"{100 * stats['ci_low']:.1f}-{100 * stats['ci_high']:.1f}",
            "successes / episodes": f"{stats['successes']} / {stats['episodes']}",
            "errors": stats["errors"],
        }
        if label != "AsyncVLA":
            wins, losses = paired_discordance(frame, full)
            row["wins / losses vs AsyncVLA"] = f"{wins} / {losses}"
            row["McNemar p"] = mcnemar_exact(wins, losses)
        else:
            row["wins / losses vs AsyncVLA"] = "--"
            row["McNemar p"] = float("nan")
        share = regenerated_share(frame) if mode != "sfm" else 0.0
        row["tokens regenerated per chunk (%)"] = 100 * share
        row["checkpoint"] = steps.get(label, "")
        rows.append(row)
        tasks.append(
            {"variant": label} | {t: 100 * g["success"].mean() for t, g in frame.groupby("task", sort=False)}
        )
    return pd.DataFrame(rows), pd.DataFrame(tasks)


def training_steps(ckpt: Path) -> str:
    record = json.loads((Path(ckpt) / "config.json").read_text()).get("training", {})
    stages = record.get("stages", {})
    policy = stages.get("policy", {}).get("steps")
    rater = stages.get("rater", {}).get("steps")
    return f"{record.get('objective')}, {policy} policy steps, rater {rater} steps"


def stage_table4(
    demo: Path,
    sfm: Path | None,
    work: Path,
    out: Path,
    episodes: int,
    image_size: int,
    command: str,
    note: str,
    rows: tuple[str, ...] | None = None,
    sfm_extra: tuple[Path, ...] = (),
) -> str:
    """Evaluate the rows (AsyncVLA first: the random-mask row needs its rate), write the tables
    with their provenance sidecars, copy each row's episode records beside them. `sfm_extra`:
    earlier snapshots of the SFM-trained model (each with its rater), one more row each, labelled
    with its policy steps (where the SFM twin could not be trained to the demo's steps in time)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from result_meta import write_meta

    from evalsuite.tables import write_tables

    table_rows = list(ROWS)
    extra_ckpts = {}
    for ckpt in sfm_extra:
        n = json.loads((Path(ckpt) / "config.json").read_text())["training"]["stages"]["policy"]["steps"]
        label = f"w/o unified training ({n} steps)"
        table_rows.insert(0, (label, f"wo_unified_training_step{n}", "sfm-extra", "asyncvla"))
        extra_ckpts[label] = Path(ckpt)
    wanted = rows or tuple(r[0] for r in table_rows)
    order = ["AsyncVLA"] + [r[0] for r in table_rows if r[0] != "AsyncVLA"]
    spec = {r[0]: r for r in table_rows}

    def checkpoint_of(label):
        which = spec[label][2]
        return extra_ckpts[label] if which == "sfm-extra" else sfm if which == "sfm" else demo

    frames: dict[str, pd.DataFrame] = {}
    commands: dict[str, str] = {}
    rate = None
    for label in order:
        if label not in wanted:
            continue
        _, dirname, which, mode = spec[label]
        if which == "sfm" and sfm is None:
            continue
        ckpt = checkpoint_of(label)
        mask_rate = rate if mode == "random-mask" else None
        argv = row_argv(str(ckpt), mode, work / "table4" / dirname, episodes, image_size, mask_rate)
        frames[label] = run_row(argv)
        commands[label] = "asyncvla-eval " + " ".join(argv)
        if label == "AsyncVLA":
            rate = regenerated_share(frames[label])
    steps = {label: training_steps(checkpoint_of(label)) for label in frames}
    table, per_task = build_table(frames, steps, tuple(table_rows))
    out.mkdir(parents=True, exist_ok=True)
    header = (
        "> Table 4 at the demo checkpoint's regime, tabletop suite: the same episodes and noise in every row "
        f"({episodes} layouts per task x 10 tasks, env seed 0); success in %; McNemar's exact test of each "
        "row against AsyncVLA on the same episodes; the paper's column is its SimplerEnv WidowX average "
        "(another benchmark, a 3B model fine-tuned from a VLM) for the ordering, not the level\n"
        f"> command: `{command}`; training data {note}; random-mask rate = the AsyncVLA row's "
        f"regenerated share ({'n/a' if rate is None else f'{rate:.4f}'})"
    )
    text = write_tables({"table4": table, "table4_per_task": per_task}, out, header)
    episodes_dir = out / "episodes"
    episodes_dir.mkdir(exist_ok=True)
    sfm_role = {"sfm-trained (w/o unified training)": sfm} if sfm is not None else {}
    sfm_role |= {f"sfm-trained snapshot ({label})": ckpt for label, ckpt in extra_ckpts.items()}
    extra = {"row_commands": commands, "episodes_per_task": episodes}
    for label in frames:
        src = work / "table4" / spec[label][1] / "episodes.jsonl"
        dst = episodes_dir / f"{spec[label][1]}.jsonl"
        shutil.copy2(src, dst)
        roles = {"checkpoint": checkpoint_of(label)} if spec[label][2] != "demo" else {}
        write_meta(dst, demo, commands[label], {"episodes_per_task": episodes}, roles, image_size)
    for name in ("table4", "table4_per_task"):
        for ext in ("md", "csv", "tex"):
            write_meta(out / f"{name}.{ext}", demo, command, extra, sfm_role, image_size)
    return text
