"""Wall time of the README's main job, before and after a change, in alternated pairs (issue 27).

    git worktree add /tmp/before <old commit>
    git worktree add /tmp/after <new commit>          # or leave --after out: this tree
    python scripts/bench_main_job.py --before /tmp/before --after /tmp/after --pairs 3

The main job is `asyncvla-eval tabletop --ckpt demo --episodes-per-task 5` (50 episodes, 2 Ray env
workers, the demo checkpoint in the policy server). Each pair runs it once from the old tree and
once from this one, as fresh processes into fresh run directories, in alternating order (old
first, then new first, ...), so a load that comes and goes hits both sides alike. The old tree
runs with the same virtualenv, its own code first on PYTHONPATH (Ray's workers inherit it) and
its own demo checkpoint. Records per run: wall time of the command, the machine's load average
before and after, episodes, steps, policy calls, successes. Writes results/bench/main_job.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evalsuite.tree_state import tree_state

ROOT = Path(__file__).resolve().parents[1]
JOB = ["tabletop", "--ckpt", "demo", "--episodes-per-task", "5"]
EPISODE = ("suite", "task", "episode_index", "seed")  # the same episode on both sides


def run_job(tree: Path, work: Path, label: str) -> dict:
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "evalsuite.cli", *JOB, "--out", str(out)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} in {tree} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line]
    outcomes = {"/".join(str(r[k]) for k in EPISODE): r["success"] for r in records}
    return {
        "tree": label,
        "outcomes": outcomes,
        "wall_s": round(wall, 2),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "episodes": len(records),
        "steps": sum(r["steps"] for r in records),
        "policy_calls": sum(r["info"]["policy_calls"] for r in records),
        "successes": sum(bool(r["success"]) for r in records),
    }


def paired_outcomes(pairs: list[dict]) -> dict:
    """Each side's outcomes (the same in every run of a side: episodes are seeded), and the two
    sides compared episode by episode with the project's McNemar test (evalsuite.ablations)."""
    from evalsuite.ablations import mcnemar_exact

    before, after = pairs[0]["before"]["outcomes"], pairs[0]["after"]["outcomes"]
    wins = sum(bool(after[e]) and not before[e] for e in before)
    losses = sum(bool(before[e]) and not after[e] for e in before)
    return {
        "successes_before": sum(map(bool, before.values())),
        "successes_after": sum(map(bool, after.values())),
        "episodes_paired": len(before.keys() & after.keys()),
        "after_wins_losses": [wins, losses],
        "mcnemar_p": mcnemar_exact(wins, losses),
        "same_outcomes_in_every_run": all(
            p[side]["outcomes"] == pairs[0][side]["outcomes"] for p in pairs for side in ("before", "after")
        ),
    }


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "main_job.json").write_text(json.dumps(result, indent=2) + "\n")
    s = result["summary"]
    lines = [
        "# The README's main job, before and after issue 27",
        "",
        f"Command: `{result['command']}`  ",
        f"Job: `asyncvla-eval {' '.join(JOB)}` (50 episodes, 2 Ray env workers, default video: first "
        "success and first failure of each task)  ",
        f"Before: commit {result['before_commit']} (shadow-casting light, 1024 shadow map, video frames "
        f"rendered again); after: commit {result['after_commit']}{result['after_note']}  ",
        f"Machine: {result['machine']}; shared with other jobs, so the load is recorded per run",
        "",
        "| pair | order | before s | after s | before / after | before steps | after steps | "
        "successes before / after | load (1 min) at start |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for i, pair in enumerate(result["pairs"]):
        b, a = pair["before"], pair["after"]
        lines.append(
            f"| {i + 1} | {pair['order']} | {b['wall_s']:.1f} | {a['wall_s']:.1f} | "
            f"**{b['wall_s'] / a['wall_s']:.2f}x** | {b['steps']} | {a['steps']} | "
            f"{b['successes']} / {a['successes']} | {b['load_before'][0]:.2f} / {a['load_before'][0]:.2f} |"
        )
    lines += [
        "",
        f"Median wall time: before {s['before_median_s']:.1f} s, after {s['after_median_s']:.1f} s: "
        f"**{s['speedup_of_medians']:.2f}x** (per pair {', '.join(f'{r:.2f}' for r in s['pair_ratios'])}). "
        f"Per step and worker (2 workers): before {s['before_ms_per_step_worker']:.1f} ms, after "
        f"{s['after_ms_per_step_worker']:.1f} ms.",
        "",
        f"Outcomes on the same {s['episodes_paired']} episodes: before {s['successes_before']}, after "
        f"{s['successes_after']} successes; the after side wins {s['after_wins_losses'][0]} and loses "
        f"{s['after_wins_losses'][1]} episodes (McNemar exact p = {s['mcnemar_p']:.3f}); every run of a "
        f"side gave the same outcomes: {s['same_outcomes_in_every_run']}.",
        "",
        "The two sides run different checkpoints (each tree its own demo), so their episodes differ in "
        "length where their outcomes differ: the per-step figure is the one that compares the "
        "machinery alone.",
    ]
    (out / "main_job.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="a git worktree of the old commit")
    p.add_argument("--after", type=Path, default=ROOT, help="the new tree (default: this one)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--after-note", default="", help="what the after tree holds beyond its commit")
    args = p.parse_args(argv)
    command = "python scripts/bench_main_job.py " + " ".join(sys.argv[1:] if argv is None else argv)
    pairs = []
    (ROOT / "runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="main-job-", dir=ROOT / "runs") as tmp:
        for i in range(args.pairs):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            runs = {}
            for side in order:
                runs[side] = run_job(args.before if side == "before" else args.after, Path(tmp), side)
                print(json.dumps(runs[side]), flush=True)
            pairs.append({"order": " then ".join(order), **runs})
    import statistics

    def median(side: str, key: str) -> float:
        return statistics.median(p[side][key] for p in pairs)

    def per_step(side: str) -> float:  # ms per step and worker
        return statistics.median(2e3 * p[side]["wall_s"] / p[side]["steps"] for p in pairs)

    summary = {
        "before_median_s": median("before", "wall_s"),
        "after_median_s": median("after", "wall_s"),
        "pair_ratios": [round(p["before"]["wall_s"] / p["after"]["wall_s"], 3) for p in pairs],
        "before_ms_per_step_worker": per_step("before"),
        "after_ms_per_step_worker": per_step("after"),
    }
    summary["speedup_of_medians"] = summary["before_median_s"] / summary["after_median_s"]
    summary |= paired_outcomes(pairs)
    # each tree's commit and whether its tracked files were exactly that commit
    before, after = tree_state(args.before), tree_state(args.after)
    result = {
        "meta": tree_state(),
        "command": command,
        "before_commit": (before["commit"] or "?")[:7],
        "before_clean_tree": before["clean_tree"],
        "after_commit": (after["commit"] or "?")[:7],
        "after_clean_tree": after["clean_tree"],
        "after_note": args.after_note,
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "pairs": pairs,
        "summary": summary,
    }
    write(args.out, result)
    print((args.out / "main_job.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
