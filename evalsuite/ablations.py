"""`asyncvla-eval ablations`: the four rows of the paper's Table 4 on the same episodes.

| row (paper order)      | checkpoint      | inference                     |
|------------------------|-----------------|-------------------------------|
| w/o unified training   | SFM-trained     | asyncvla (SFM, rater, AFM)    |
| w/o AFM inference      | unified-trained | sfm                           |
| w/o confidence rater   | unified-trained | random-mask (p = 0.5)         |
| AsyncVLA               | unified-trained | asyncvla                      |

Each row is an ordinary, resumable run directory under OUT/<row>; the episodes (suite, task,
episode index, seed) are the same for all four, only the mode part of the id differs, and every row
draws the same noise on an episode (the policy's draws are keyed by the episode without its mode),
so each row is compared with the full model episode by episode: wins / losses (episodes only one
of the two solved) and McNemar's exact p-value, beside each row's Wilson intervals.
`seed_summary` puts several training seeds' tables side by side: each seed's rate, their mean
and spread, and the Wilson interval of all seeds' episodes pooled. Pass `--data` to write the
training data size into the table's header (the ordering depends on the data regime:
shared/notes/ablation-regimes.md).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from evalsuite.errors import UsageError
from evalsuite.eval_args import config_from_args, eval_parser, resolve_checkpoint
from evalsuite.evaluate import EvalConfig, evaluate
from evalsuite.tables import rate_row, records_frame, wilson_interval, write_tables
from evalsuite.validate import check_checkpoint_for

log = logging.getLogger(__name__)

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
        row["successes"] = pooled["successes"]
        row["errors"] = pooled["errors"]
        rows.append(row)
    reference_label, reference = results[-1]  # the full model, last in the paper's order
    for row, (label, records) in zip(rows, results):
        if label == reference_label:
            continue
        only_row, only_ref = paired_discordance(records, reference)
        row[f"wins / losses vs {reference_label}"] = f"{only_row} / {only_ref}"
        row["McNemar p"] = mcnemar_exact(only_row, only_ref)
    return pd.DataFrame(rows)


EPISODE = ["suite", "task", "episode_index", "seed"]  # the draw key: the same episode in every row


def paired_discordance(records: pd.DataFrame, reference: pd.DataFrame) -> tuple[int, int]:
    """Episodes both rows finished, paired by the draw key: (this row succeeded and the reference
    failed, the reverse). Every row draws the same SFM noise on an episode (docs/CONTRACTS.md)."""
    a = records[records["success"].notna()].set_index(EPISODE)["success"].astype(bool)
    b = reference[reference["success"].notna()].set_index(EPISODE)["success"].astype(bool)
    a, b = a.align(b, join="inner")
    return int((a & ~b).sum()), int((~a & b).sum())


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """McNemar's exact test (two-sided binomial on the discordant pairs): do two rows differ on the
    same episodes? Far more sensitive than comparing two independent rates when most episodes agree."""
    from statsmodels.stats.contingency_tables import mcnemar  # slow to import: only when a table is made

    return float(mcnemar([[0, only_a], [only_b, 0]], exact=True).pvalue)


def seed_summary(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Training seeds side by side: each seed's task-mean rate, mean and spread, pooled interval.

    `tables` maps a training seed to its `ablation_table`; all must have the four rows in order.
    """
    if not tables:
        raise ValueError("seed_summary needs at least one seed's ablation table")
    labels = [v[0] for v in VARIANTS]
    for seed, table in tables.items():
        if list(table["variant"]) != labels:
            raise ValueError(f"seed {seed}: rows {list(table['variant'])}, expected {labels}")
    rows = []
    for i, label in enumerate(labels):
        rates = [float(t.iloc[i]["average"]) for t in tables.values()]
        k = sum(int(t.iloc[i]["successes"]) for t in tables.values())
        n = sum(int(t.iloc[i]["episodes"]) for t in tables.values())
        lo, hi = wilson_interval(k, n)
        row: dict = {"variant": label}
        row |= {f"seed {s}": r for s, r in zip(tables, rates, strict=True)}
        row["mean over seeds"] = float(np.mean(rates))
        row["sd over seeds"] = float(np.std(rates, ddof=1)) if len(rates) > 1 else float("nan")
        row["pooled episodes"] = n
        row["pooled successes"] = k
        row["pooled CI"] = f"{100 * lo:.1f}-{100 * hi:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def to_percent(table: pd.DataFrame) -> pd.DataFrame:
    percent = table.copy()
    for col in percent.columns:
        if col == "McNemar p":
            percent[col] = percent[col].round(4)  # a probability, not a rate
        elif percent[col].dtype.kind == "f":
            percent[col] = (100 * percent[col]).round(1)
    return percent


def write_seed_summary(summary: pd.DataFrame, out_dir: Path, header: str) -> str:
    return write_tables({"ablations_seeds": to_percent(summary)}, Path(out_dir), header)


def run_ablations(
    base: EvalConfig, sfm_checkpoint: str, show_progress: bool = True, data_note: str | None = None
) -> tuple[pd.DataFrame, str]:
    results = []
    for label, config in variant_configs(base, sfm_checkpoint):
        summary = evaluate(config, show_progress=show_progress)
        results.append((label, records_frame(summary.records, config.suites)))
    table = ablation_table(results)
    header = (
        f"> ablations on {', '.join(s.name for s in base.suites)}; unified checkpoint {base.policy.checkpoint}; "
        f"SFM-trained checkpoint {sfm_checkpoint}; seed {base.seed}; rates in %\n"
        f"> command: `{' '.join(base.command)}`\n"
        f"> training data: {data_note or 'not given (pass --data)'}"
    )
    markdown = write_tables({"ablations": to_percent(table)}, Path(base.out) / "tables", header)
    return table, markdown


def check_objectives(unified_ckpt: str, sfm_ckpt: str) -> None:
    """The rows need a unified-trained --ckpt and an SFM-trained --sfm-ckpt: refuse swapped or
    mismatched checkpoints (checkpoints without a training record cannot be checked: a warning)."""
    from asyncvla.checkpoint import read_training_record  # imports torch

    for flag, path, wanted in (("--ckpt", unified_ckpt, "unified"), ("--sfm-ckpt", sfm_ckpt, "sfm")):
        record = read_training_record(path)
        if record is None:
            log.warning("%s %s has no training record: its objective cannot be checked", flag, path)
        elif record.get("objective") != wanted:
            raise UsageError(
                f"{flag} {path} was trained with objective {record.get('objective')!r}; the ablation needs "
                f"a {wanted!r}-trained checkpoint there (asyncvla-train ... --objective {wanted})"
            )


def check_ablations_dir(out: Path) -> None:
    """--out is new, empty, or an ablations directory (a run directory per row, and tables/; each
    row's is checked as a run directory when it opens): nothing is mixed into another directory."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory (new, or an ablations run to resume)")
    ours = {dirname for _, dirname, _, _ in VARIANTS} | {"tables"}
    other = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if other:
        raise UsageError(
            f"--out {out} is a non-empty directory that is not an ablations run (it holds "
            f"{', '.join(other[:5])}); choose a new or empty directory, or an ablations run to resume"
        )


def main(argv: list[str]) -> int:
    parser = eval_parser()
    parser.prog = "asyncvla-eval ablations"
    parser.add_argument(
        "--sfm-ckpt", required=True, help="the same model trained with the SFM-only objective"
    )
    parser.add_argument(
        "--data", help="training data size, written beside the table (e.g. '10 demos, 1 per task')"
    )
    args = parser.parse_args(argv)
    if not args.ckpt:
        raise UsageError("ablations need --ckpt UNIFIED_CHECKPOINT and --sfm-ckpt SFM_CHECKPOINT")
    if not args.out:
        args.out = f"runs/ablations-{args.suite}-seed{args.seed or 0}"
    base = config_from_args(args, ["ablations", *argv], out_is_run=False)
    check_ablations_dir(base.out)
    sfm_ckpt = resolve_checkpoint(args.sfm_ckpt)
    check_checkpoint_for(sfm_ckpt, base.suites, mode="asyncvla")  # its row runs the full inference
    check_objectives(base.policy.checkpoint, sfm_ckpt)
    _, markdown = run_ablations(base, sfm_ckpt, show_progress=not args.quiet, data_note=args.data)
    print(markdown)
    return 0
