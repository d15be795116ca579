"""What a stale observation costs, and how each join of a late chunk pays for it: the demo checkpoint on
the tabletop suite under asynchronous execution (docs/latency.md, evalsuite/run/asynchronous.py).

    python scripts/latency_study.py                              # results/tabletop/latency.{csv,md,png}
    python scripts/latency_study.py --episodes-per-task 2 --steps 0 2   # a quick look

The latencies run in the order given (--steps), the table is ordered by d.

Rows, all on the same episodes (10 tasks x --episodes-per-task, seed 0; paired by task and episode):
- the synchronous run (the robot waits for every chunk; the whole chunk executed);
- query ahead at d = 1, 2, 4, 6 control steps of latency, with the `naive`, `skip` and
  `afm-inpaint` joins, the execution horizon H = max(1, L - d) so that the latency is hidden
  wherever it can be (a request is made when H actions ran or d are left);
- the 3B model's latencies measured on one H200 for the asyncvla, sfm and paper-style pipelines
  (results/bench/model_latency_qwen2.5-vl-3b_cuda.json, batch 1, the benchmark's default row for
  the asyncvla chunk), in their own mode, with each join;
- the protocol of the first latency study, labelled `pause`: the whole chunk executed, then the next
  one asked for while the arm holds still.
d = 0 is the synchronous run for every join (tests/test_latency.py), so it is not run again.
Each row: success with its Wilson interval, McNemar's exact p against the synchronous row, steps
to success, pause steps, stale steps and jerk. Each configuration is its own run directory under
--work (resumable); the table is rewritten after every row, so an interrupted study keeps what it
measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd

from envs.tabletop.tasks import CONTROL_HZ
from evalsuite import evaluate_suite
from evalsuite.ablations import mcnemar_exact

BENCH = Path("results/bench/model_latency_qwen2.5-vl-3b_cuda.json")
JOINS = ("naive", "skip", "afm-inpaint")
CHUNK = 8  # the demo checkpoint's chunk length


def measured_latencies() -> list[tuple[str, str, float]]:
    """(mode, pipeline, ms) at batch 1 from the H200 benchmark: the default row for the chunk."""
    rows = json.loads(BENCH.read_text())["rows"]
    b1 = next(r for r in rows if r["batch"] == 1)
    default = b1.get("default_row") or ("fast_fused_ms" if "fast_fused_ms" in b1 else "fast_ms")
    return [
        ("asyncvla", "3B asyncvla chunk", b1[default]),
        ("sfm", "3B sfm chunk", b1["fast_sfm_ms"]),
        ("sfm", "3B paper-style SFM", b1["fast_paper_style_ms"]),
    ]


def configurations(steps: list[int]) -> list[dict]:
    configs = [dict(label="synchronous", mode="asyncvla", d=None, join=None, horizon=None)]
    for d in steps:
        if d == 0:
            continue
        for join in JOINS:
            configs.append(dict(label=f"d={d}", mode="asyncvla", d=d, join=join, horizon=max(1, CHUNK - d)))
    for mode, pipeline, ms in measured_latencies():
        d = math.ceil(ms / 1000 * CONTROL_HZ - 1e-9)
        for join in JOINS:
            label = f"{pipeline}, {ms:.0f} ms"
            configs.append(dict(label=label, mode=mode, d=d, join=join, horizon=max(1, CHUNK - d), ms=ms))
    configs.append(
        dict(label="pause (first study's protocol), d=4", mode="asyncvla", d=4, join="pause", horizon=None)
    )
    return configs


def run_name(c: dict) -> str:
    if c["d"] is None:
        return f"{c['mode']}-sync"
    return f"{c['mode']}-d{c['d']}-{c['join']}-h{c['horizon'] or 'L'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes-per-task", type=int, default=20)
    p.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 4, 6], help="latencies d in steps")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="runs/latency-async")
    p.add_argument("--out", default="results/tabletop")
    args = p.parse_args(argv)
    command = " ".join(["python", *sys.argv])
    configs = configurations(args.steps)
    rows: dict[int, dict] = {}
    outcomes: dict[str, list] = {}
    first_row: dict[str, str] = {}
    # the synchronous row first (every row is compared with it), then the fixed latencies at the
    # demo's chunk, then the 3B's measured ones; the table keeps the list's order
    order = sorted(range(len(configs)), key=lambda i: (configs[i]["d"] is not None, "ms" in configs[i], i))
    for index in order:
        c = configs[index]
        name = run_name(c)
        if name not in outcomes:
            started = time.perf_counter()
            summary = evaluate_suite(
                "tabletop",
                checkpoint="demo",
                mode=c["mode"],
                episodes_per_task=args.episodes_per_task,
                workers=args.workers,
                out=Path(args.work) / name,
                replan_steps=c["horizon"],
                latency=None if c["d"] is None else 1000.0 * c["d"] / CONTROL_HZ,
                extra_args=[] if c["join"] is None else ["--async-join", c["join"]],
            )
            outcomes[name] = summary.records
            print(f"{name:32s} {time.perf_counter() - started:6.0f} s", flush=True)
        rows[index] = row(c, name, outcomes[name], outcomes[run_name(configs[0])])
        rows[index]["note"] = f"the run of row {first_row[name]!r}" if name in first_row else ""
        first_row.setdefault(name, f"{c['label']}, {c['join']}")
        write(sorted(rows.values(), key=table_order), Path(args.out), command, args.episodes_per_task)
    return 0


def table_order(r: dict) -> tuple:
    """Synchronous, then the fixed latencies by d, the measured ones, the pause protocol; joins in order."""
    kind = 3 if r["join"] == "pause" else 0 if r["d_steps"] == "" else 2 if "ms" in r["row"] else 1
    return kind, r["d_steps"] or 0, r["row"], (*JOINS, "pause", "").index(r["join"])


def row(c: dict, name: str, records, synchronous) -> dict:
    from evalsuite.tables import wilson_interval

    frame = pd.DataFrame(
        [
            {
                "key": (r.task, r.episode_index),
                "success": bool(r.success),
                "steps": r.steps,
                **{k: r.info.get(k, 0) for k in ("pause_steps", "stale_ratio", "jerk")},
            }
            for r in records
        ]
    )
    base = {(r.task, r.episode_index): bool(r.success) for r in synchronous}
    pairs = [(base[k], s) for k, s in zip(frame["key"], frame["success"]) if k in base]
    only_here = sum(1 for b, s in pairs if s and not b)
    only_sync = sum(1 for b, s in pairs if b and not s)
    k, n = int(frame["success"].sum()), len(frame)
    lo, hi = wilson_interval(k, n)
    done = frame[frame["success"]]
    return {
        "row": c["label"],
        "mode": c["mode"],
        "d_steps": "" if c["d"] is None else c["d"],
        "ms": round(c.get("ms", 0 if c["d"] is None else 1000 * c["d"] / CONTROL_HZ), 1),
        "join": c["join"] or "",
        "horizon": c["horizon"] or CHUNK,
        "episodes": n,
        "successes": k,
        "success_rate": k / n,
        "ci_low": lo,
        "ci_high": hi,
        "wins_vs_sync": only_here,
        "losses_vs_sync": only_sync,
        "mcnemar_p": mcnemar_exact(only_here, only_sync) if c["d"] is not None else float("nan"),
        "steps_to_success": round(float(done["steps"].mean()), 1) if len(done) else float("nan"),
        "pause_steps": round(float(frame["pause_steps"].mean()), 2),
        "stale_ratio": round(float(frame["stale_ratio"].mean()), 3),
        "jerk": round(float(frame["jerk"].mean()), 4),
        "run": name,
    }


def write(rows: list[dict], out: Path, command: str, per_task: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "latency.csv", index=False)
    lines = [
        "# Asynchronous execution on the tabletop suite: success and completion against the latency",
        "",
        f"`{command}`; demo checkpoint, {rows[0]['episodes']} episodes per row ({per_task} per task), the same",
        "episodes in every row (McNemar's exact test against the synchronous row, paired by task and",
        "episode). 20 Hz control: d steps = ceil(latency x 20). H: actions executed before the next request",
        "at most (L = 8). Measured latencies: the 3B model at batch 1 on one H200, from",
        f"{BENCH} (measured at an earlier commit: issue 38 re-measures them).",
        "docs/latency.md says what each join executes. afm-inpaint inpaints every chunk, the first one",
        "included (the actions committed during the first call are its holds), so with it the mode does not",
        "matter: an sfm row's afm-inpaint is the asyncvla row's at the same d. Pause steps with skip and",
        "afm-inpaint at d >= 4 = L / 2: a joined chunk has only L - d actions left (docs/latency.md).",
        "",
        "| row | mode | d | join | H | success | 95 % CI | vs sync (won/lost, p) | steps to success | pause steps | stale % | jerk | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = (
            "" if r["d_steps"] == "" else f"{r['wins_vs_sync']}/{r['losses_vs_sync']}, p={r['mcnemar_p']:.3f}"
        )
        lines.append(
            f"| {r['row']} | {r['mode']} | {r['d_steps']} | {r['join']} | {r['horizon']} | "
            f"{100 * r['success_rate']:.1f} % ({r['successes']}/{r['episodes']}) | "
            f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f} | {vs} | {r['steps_to_success']} | "
            f"{r['pause_steps']} | {100 * r['stale_ratio']:.1f} | {r['jerk']} | {r['note']} |"
        )
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    plot(table, out / "latency.png")
    # provenance sidecars (scripts/result_meta.py: tests/test_result_meta.py checks results/tabletop/)
    from result_meta import write_meta

    from evalsuite.eval_args import resolve_checkpoint

    for name in ("latency.csv", "latency.md", "latency.png"):
        write_meta(out / name, resolve_checkpoint("demo"), command)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = table[table["row"].str.startswith("d=") & (table["mode"] == "asyncvla")]
    sync = table[table["row"] == "synchronous"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, join in enumerate(JOINS):
        mine = fixed[fixed["join"] == join].sort_values("d_steps")
        d = [0, *mine["d_steps"]]
        rate = [*(100 * sync["success_rate"]), *(100 * mine["success_rate"])]
        steps = [*sync["steps_to_success"], *mine["steps_to_success"]]
        left.plot(d, rate, marker="o", color=f"C{i}", label=join)
        right.plot(d, steps, marker="o", color=f"C{i}", label=join)
    left.set(xlabel="latency d (control steps)", ylabel="success %", title="success")
    right.set(xlabel="latency d (control steps)", ylabel="steps", title="steps to success")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
