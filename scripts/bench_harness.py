"""Harness throughput: episodes/s of a bare sequential loop vs the runner with 1 and 2 workers.

Same env (tabletop), same policy (scripted expert), same episodes, no videos, measured in one
run. The local Ray cluster is started once before the runner is timed (`ray.init` is a fixed
cost of ~5-15 s per command, reported apart); the runner's numbers include starting its actors
and building the envs. Writes results/bench/harness.{json,md}.

    python scripts/bench_harness.py [--episodes-per-task 3] [--tasks a,b,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from evalsuite.evaluate import EvalConfig, evaluate, plan_for  # noqa: E402
from evalsuite.policy import PolicySpec, build_policy  # noqa: E402
from evalsuite.run.runner_base import RunOptions  # noqa: E402
from evalsuite.suites import get_suite  # noqa: E402
from evalsuite.suites.spec import import_object  # noqa: E402
from evalsuite.tree_state import tree_state  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results" / "bench"


def bare_loop(suite, plan, policy) -> tuple[float, int]:
    """What a user would write without a harness: one env, one policy, render when the policy looks."""
    env = import_object(suite.env_factory)(**suite.env_kwargs)
    start, steps = time.perf_counter(), 0
    for spec in plan:
        obs = env.reset(spec.task, spec.episode_index, spec.seed)
        budget = suite.task(spec.task).max_steps
        queue, t = [], 0
        while t < budget:
            if not queue:
                queue = list(policy.act([obs], [f"{spec.id}@{t}"])[0])
            obs, done, success, _ = env.step(queue.pop(0), render=not queue)
            t += 1
            if done or success:
                break
        steps += t
    env.close()
    return time.perf_counter() - start, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes-per-task", type=int, default=3)
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all ten)")
    args = p.parse_args()
    suite = get_suite("tabletop")
    spec = PolicySpec(kind="scripted", expert_factory=suite.expert_factory)
    tasks = args.tasks.split(",") if args.tasks else None
    base = EvalConfig(
        suites=[suite], policy=spec, out=Path(), tasks=tasks, episodes_per_task=args.episodes_per_task
    )
    plan = plan_for(base)
    load_before = os.getloadavg()[0]

    bare_s, bare_steps = bare_loop(suite, plan, build_policy(spec))
    results = {"bare": {"wall_s": bare_s, "episodes": len(plan), "steps": bare_steps}}
    import logging

    import ray

    start = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray_init_s = time.perf_counter() - start
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            config = EvalConfig(
                suites=[suite],
                policy=spec,
                out=Path(tmp),
                tasks=tasks,
                episodes_per_task=args.episodes_per_task,
                options=RunOptions(workers=workers, video="none"),
            )
            start = time.perf_counter()
            summary = evaluate(config, show_progress=False)
            wall = time.perf_counter() - start
        results[f"runner_{workers}"] = {
            "wall_s": wall,
            "episodes": len(summary.records),
            "steps": sum(r.steps for r in summary.records),
        }
    for row in results.values():
        row["episodes_per_s"] = row["episodes"] / row["wall_s"]
    for workers in (1, 2):
        r = results[f"runner_{workers}"]
        r["ratio_to_bare"] = r["episodes_per_s"] / results["bare"]["episodes_per_s"]
        r["target_ratio"] = 0.9 * workers
    out = {
        "meta": tree_state(),  # the commit measured, and whether the tree was exactly it
        "command": "python scripts/bench_harness.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}",
        "note": f"runner wall time includes actor start and env construction; ray.init took {ray_init_s:.1f} s "
        "once, before, and is not included",
        "ray_init_s": ray_init_s,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "harness.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Harness throughput (tabletop, scripted expert, no videos)",
        "",
        f"Command: `{out['command']}`  ",
        f"Machine: {out['machine']}  ",
        f"Note: {out['note']}",
        "",
        "| loop | episodes | wall s | episodes/s | ratio to bare | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ratio = f"{r['ratio_to_bare']:.2f}" if "ratio_to_bare" in r else "1.00"
        target = f">= {r['target_ratio']:.1f}" if "target_ratio" in r else ""
        lines.append(
            f"| {name} | {r['episodes']} | {r['wall_s']:.1f} | {r['episodes_per_s']:.3f} | {ratio} | {target} |"
        )
    (RESULTS / "harness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
