"""`asyncvla-eval ablations`: the four rows of the paper's Table 4 on the same episodes.

| row (paper order)      | checkpoint      | inference                     |
|------------------------|-----------------|-------------------------------|
| w/o unified training   | SFM-trained     | asyncvla (SFM, rater, AFM)    |
| w/o AFM inference      | unified-trained | sfm                           |
| w/o confidence rater   | unified-trained | random-mask (p = 0.5)         |
| AsyncVLA               | unified-trained | asyncvla                      |

Each row is an ordinary, resumable run directory under OUT/<row>; the episodes (suite, task,
episode index, seed) are the same for all four, only the mode part of the id differs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from evalsuite.evaluate import EvalConfig, evaluate
from evalsuite.tables import rate_row, write_tables

VARIANTS = (  # (row label, run dir name, which checkpoint, inference mode)
    ("w/o unified training", "wo_unified_training", "sfm", "asyncvla"),
    ("w/o AFM inference", "wo_afm_inference", "unified", "sfm"),
    ("w/o confidence rater", "wo_confidence_rater", "unified", "random-mask"),
    ("AsyncVLA", "asyncvla", "unified", "asyncvla"),
)


def variant_configs(base: EvalConfig, sfm_checkpoint: str) -> list[tuple[str, EvalConfig]]:
    configs = []
    for label, dirname, which, mode in VARIANTS:
        checkpoint = sfm_checkpoint if which == "sfm" else base.policy.checkpoint
        policy = dataclasses.replace(base.policy, checkpoint=checkpoint, mode=mode)
        configs.append((label, dataclasses.replace(base, policy=policy, out=base.out / dirname)))
    return configs


def ablation_table(results: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per variant in the paper's order: each task's rate and interval, and the task mean."""
    rows = []
    for label, records in results:
        row: dict = {"variant": label}
        task_rates = []
        for task, group in records.groupby("task", sort=False):
            stats = rate_row(group["success"])
            row[f"{task}"] = stats["success_rate"]
            row[f"{task} CI"] = f"{100 * stats['ci_low']:.1f}-{100 * stats['ci_high']:.1f}"
            task_rates.append(stats["success_rate"])
        pooled = rate_row(records["success"])
        row["average"] = sum(task_rates) / len(task_rates) if task_rates else float("nan")
        row["pooled CI"] = f"{100 * pooled['ci_low']:.1f}-{100 * pooled['ci_high']:.1f}"
        row["episodes"] = pooled["episodes"]
        row["errors"] = pooled["errors"]
        rows.append(row)
    return pd.DataFrame(rows)


def run_ablations(
    base: EvalConfig, sfm_checkpoint: str, show_progress: bool = True
) -> tuple[pd.DataFrame, str]:
    from evalsuite.tables import records_frame

    results = []
    for label, config in variant_configs(base, sfm_checkpoint):
        summary = evaluate(config, show_progress=show_progress)
        results.append((label, records_frame(summary.records, config.suites)))
    table = ablation_table(results)
    percent = table.copy()
    for col in percent.columns:
        if percent[col].dtype.kind == "f":
            percent[col] = (100 * percent[col]).round(1)
    header = (
        f"> ablations on {', '.join(s.name for s in base.suites)}; unified checkpoint {base.policy.checkpoint}; "
        f"SFM-trained checkpoint {sfm_checkpoint}; seed {base.seed}; rates in %"
    )
    markdown = write_tables({"ablations": percent}, Path(base.out) / "tables", header)
    return table, markdown


def main(argv: list[str]) -> int:
    from evalsuite.cli import UsageError, config_from_args, eval_parser, resolve_checkpoint

    parser = eval_parser()
    parser.prog = "asyncvla-eval ablations"
    parser.add_argument(
        "--sfm-ckpt", required=True, help="the same model trained with the SFM-only objective"
    )
    args = parser.parse_args(argv)
    if not args.ckpt:
        raise UsageError("ablations need --ckpt UNIFIED_CHECKPOINT and --sfm-ckpt SFM_CHECKPOINT")
    if not args.out:
        args.out = f"runs/ablations-{args.suite}-seed{args.seed or 0}"
    base = config_from_args(args, ["ablations", *argv])
    _, markdown = run_ablations(base, resolve_checkpoint(args.sfm_ckpt), show_progress=not args.quiet)
    print(markdown)
    return 0
