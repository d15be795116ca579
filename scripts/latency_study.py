"""What each millisecond of thinking costs in success: the demo checkpoint on the tabletop suite,
latency-aware (docs/latency.md), in the asyncvla and sfm modes at fixed latencies and at the 3B
model's chunk latencies measured on one H200 (results/bench/model_latency_qwen2.5-vl-3b_cuda.json:
the default fast path and the reference path; the paper-style pipeline computes SFM's chunks, so
its rows are the sfm mode at its own latency).

    python scripts/latency_study.py                        # results/tabletop/latency.{csv,md,png}
    python scripts/latency_study.py --episodes-per-task 2 --latencies 0 600   # a quick look

Each configuration is its own run directory under --work (resumable: an interrupted study picks
up where it stopped). Success is over the same episodes in every configuration. Two latencies
that make the same number of control steps give the same episodes step for step (the runs are
deterministic), so such a configuration reuses the other's run and says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

from envs.tabletop.tasks import CONTROL_HZ
from evalsuite import evaluate_suite

BENCH = Path("results/bench/model_latency_qwen2.5-vl-3b_cuda.json")


def measured_latencies() -> list[tuple[str, str, float]]:
    """(mode, what, ms) at batch 1 from the H200 benchmark."""
    rows = json.loads(BENCH.read_text())["rows"]
    b1 = next(r for r in rows if r["batch"] == 1)
    return [
        ("asyncvla", "3B fast path", b1.get("fast_fused_ms", b1["fast_ms"])),
        ("sfm", "3B fast path", b1["fast_sfm_ms"]),
        ("sfm", "3B paper-style, fast path", b1["fast_paper_style_ms"]),
        ("asyncvla", "3B reference path", b1["eager_ms"]),
        ("sfm", "3B reference path", b1["eager_sfm_ms"]),
        ("sfm", "3B paper-style, reference path", b1["eager_paper_style_ms"]),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes-per-task", type=int, default=5)
    p.add_argument("--latencies", type=float, nargs="+", default=[0, 200, 600])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="runs/latency")
    p.add_argument("--out", default="results/tabletop")
    args = p.parse_args(argv)

    configs = [(mode, "fixed", ms) for mode in ("asyncvla", "sfm") for ms in args.latencies]
    configs += measured_latencies()
    rows, done = [], {}
    for mode, what, ms in configs:
        steps = math.ceil(ms / 1000 * CONTROL_HZ - 1e-9)
        if (mode, steps) in done:
            rows.append({**done[(mode, steps)], "latency": what, "latency_ms": round(ms, 1)})
            rows[-1]["note"] = f"the run of {done[(mode, steps)]['latency_ms']:.0f} ms: also {steps} steps"
            continue
        start = time.perf_counter()
        run_dir = Path(args.work) / f"{mode}-{ms:.0f}ms"
        summary = evaluate_suite(
            "tabletop",
            checkpoint="demo",
            mode=mode,
            episodes_per_task=args.episodes_per_task,
            workers=args.workers,
            latency=ms,
            out=run_dir,
        )
        suite = summary.tables["per_suite"].iloc[0]
        waited = [r.info.get("latency_steps", 0) for r in summary.records]
        episode_steps = [r.steps for r in summary.records]
        rows.append(
            {
                "mode": mode,
                "latency": what,
                "latency_ms": round(ms, 1),
                "episodes": int(suite["episodes"]),
                "successes": int(suite["successes"]),
                "success_rate": float(suite["success_rate"]),
                "ci_low": float(suite["ci_low"]),
                "ci_high": float(suite["ci_high"]),
                "steps_waiting_fraction": round(sum(waited) / max(1, sum(episode_steps)), 3),
                "latency_steps": steps,
                "run_dir": str(run_dir),
                "note": "",
            }
        )
        done[(mode, steps)] = rows[-1]
        print(
            f"{mode:9s} {ms:7.1f} ms  {rows[-1]['success_rate']:.2f}  ({time.perf_counter() - start:.0f} s)"
        )
    write(rows, Path(args.out), args, " ".join(["python", *sys.argv]))
    return 0


def write(rows: list[dict], out: Path, args, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "latency.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Success against the policy's latency (tabletop, demo checkpoint, latency-aware)",
        "",
        f"`{command}`; {rows[0]['episodes']} episodes per configuration (the same ones), 20 Hz control: a",
        "latency becomes ceil(latency x 20) steps during which the rest of the previous chunk runs, then the",
        "arm holds still (docs/latency.md). Measured latencies: the 3B model at batch 1 on one H200",
        f"({BENCH}).",
        "",
        "| mode | latency | ms | steps per call | steps waited / episode steps | success | 95 % CI | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['latency']} | {r['latency_ms']:.0f} | {r['latency_steps']} | "
            f"{r['steps_waiting_fraction']:.2f} | {100 * r['success_rate']:.0f} % ({r['successes']}/{r['episodes']}) | "
            f"{100 * r['ci_low']:.0f}-{100 * r['ci_high']:.0f} | {r['note']} |"
        )
    (out / "latency.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for mode, colour in (("asyncvla", "C0"), ("sfm", "C1")):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["latency_ms"])
        ax.errorbar(
            [r["latency_ms"] for r in mine],
            [100 * r["success_rate"] for r in mine],
            yerr=[
                [100 * (r["success_rate"] - r["ci_low"]) for r in mine],
                [100 * (r["ci_high"] - r["success_rate"]) for r in mine],
            ],
            marker="o",
            capsize=3,
            color=colour,
            label=mode,
        )
        for r in mine:
            if r["latency"] != "fixed":
                ax.annotate(r["latency"], (r["latency_ms"], 100 * r["success_rate"]), fontsize=6, rotation=30)
    ax.set_xscale("symlog", linthresh=50)
    ax.set_xlabel("policy latency (ms)")
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
