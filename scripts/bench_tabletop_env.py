"""Measure the tabletop env's per-step cost and memory, and the scripted expert's success rate.

    python scripts/bench_tabletop_env.py [--episodes 3] [--expert-episodes 50] [--noisy-episodes 10]

Step cost, on expert episodes of every task (one process, one env, this machine's CPU + Mesa):
  - physics-only control step (`step(render=False)`), rendered step (`step(render=True)`, both
    cameras), `render_frame()`, `reset()` (layout + settle steps + one render), env construction;
  - the ratio rendered / physics-only, measured in the same run on the same actions;
  - resident memory of the process before and after building (and rendering with) one env.
Writes step_cost.json and step_cost.md. With --expert-episodes N > 0 also runs the scripted
expert on the first N shipped initial states of every task (physics only: the expert reads
ground truth, not images) and writes expert.md; --noisy-episodes adds the same expert with
Gaussian noise on its motion, a stand-in for a weak policy. Both files carry the versions and this command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from envs.tabletop import TASKS, make_env  # noqa: E402
from envs.tabletop.expert import TabletopExpert  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def expert_episode(env, expert, task, k: int, render: bool, noise: float = 0.0):
    """Run the expert (plus Gaussian noise on its motion); return (success, steps, actions, step seconds)."""
    obs = env.reset(task.name, k, 0)
    actions, times, success = [], [], False
    rng = np.random.default_rng([k, len(task.name)])
    while len(actions) < task.max_steps and not success:
        chunk = expert.act([obs], [f"bench/{task.name}/{k}@{len(actions)}"])[0]
        if noise > 0:  # a weak policy: right plan, imprecise motion
            chunk[:, :6] = np.clip(chunk[:, :6] + rng.normal(0, noise, chunk[:, :6].shape), -1, 1)
        for action in chunk:
            t0 = time.perf_counter()
            obs, _, success, _ = env.step(action, render=render)
            times.append(time.perf_counter() - t0)
            actions.append(action)
            if success or len(actions) >= task.max_steps:
                break
    return success, len(actions), np.array(actions), np.array(times)


def replay_times(env, task, k: int, actions: np.ndarray, render: bool) -> np.ndarray:
    env.reset(task.name, k, 0)
    times = []
    for action in actions:
        t0 = time.perf_counter()
        env.step(action, render=render)
        times.append(time.perf_counter() - t0)
    return np.array(times)


def versions() -> dict:
    out = {"python": platform.python_version(), "MUJOCO_GL": os.environ.get("MUJOCO_GL")}
    for pkg in ("mujoco", "numpy"):
        out[pkg] = metadata.version(pkg)
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs visible"
    return out


def measure_steps(episodes: int, image_size: int) -> dict:
    rss0 = rss_mib()
    t0 = time.perf_counter()
    env = make_env(image_size=image_size)
    construct_s = time.perf_counter() - t0
    rss_env = rss_mib()
    expert = TabletopExpert()
    physics, rendered, resets, frames = [], [], [], []
    for task in TASKS:
        for k in range(episodes):
            t0 = time.perf_counter()
            env.reset(task.name, k, 0)
            resets.append(time.perf_counter() - t0)
            _, _, actions, _ = expert_episode(env, expert, task, k, render=False)
            physics.append(replay_times(env, task, k, actions, render=False))
            rendered.append(replay_times(env, task, k, actions, render=True))
            t0 = time.perf_counter()
            env.render_frame()
            frames.append(time.perf_counter() - t0)
    rss_after = rss_mib()
    env.close()
    physics_all, rendered_all = np.concatenate(physics), np.concatenate(rendered)
    ms = lambda a: {"mean": 1e3 * float(np.mean(a)), "median": 1e3 * float(np.median(a))}  # noqa: E731
    return {
        "image_size": image_size,
        "steps_timed": int(len(physics_all)),
        "episodes": episodes * len(TASKS),
        "physics_step_ms": ms(physics_all),
        "rendered_step_ms": ms(rendered_all),
        "rendered_over_physics": float(np.mean(rendered_all) / np.mean(physics_all)),
        "render_frame_ms": ms(frames),
        "reset_ms": ms(resets),
        "construct_ms": 1e3 * construct_s,
        "rss_mib": {"before_env": rss0, "after_env": rss_env, "after_episodes": rss_after},
    }


def measure_expert(episodes: int, noise: float = 0.0) -> dict:
    env, expert = make_env(), TabletopExpert()
    rows = {}
    for task in TASKS:
        results = [expert_episode(env, expert, task, k, False, noise)[:2] for k in range(episodes)]
        steps = [s for ok, s in results if ok]
        rows[task.name] = {
            "success": len(steps),
            "episodes": episodes,
            "failed_episodes": [k for k, (ok, _) in enumerate(results) if not ok],
            "steps_mean": float(np.mean(steps)) if steps else None,
            "steps_max": int(max(steps)) if steps else None,
            "budget": task.max_steps,
        }
    env.close()
    return rows


def write_step_cost(out: Path, result: dict, command: str) -> None:
    (out / "step_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    r = result
    lines = [
        "# Tabletop env: cost per control step",
        "",
        f"Command: `{command}`",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}.",
        f"{r['steps_timed']} control steps of {r['episodes']} scripted-expert episodes (all tasks), "
        f"{r['image_size']}x{r['image_size']} images, the same actions replayed with and without rendering.",
        "",
        "| what | mean ms | median ms |",
        "|---|---|---|",
    ]
    for key, label in [
        ("physics_step_ms", "step(render=False): physics only"),
        ("rendered_step_ms", "step(render=True): physics + 2 cameras"),
        ("render_frame_ms", "render_frame() (video frame)"),
        ("reset_ms", "reset() (layout, settle steps, 2 cameras)"),
    ]:
        lines.append(f"| {label} | {r[key]['mean']:.2f} | {r[key]['median']:.2f} |")
    rss = r["rss_mib"]
    lines += [
        f"| env construction | {r['construct_ms']:.1f} | |",
        "",
        f"Rendered step / physics-only step: **{r['rendered_over_physics']:.1f}x** (same run, same actions).",
        f"Resident memory: {rss['before_env']:.0f} MiB before the env, {rss['after_env']:.0f} MiB after "
        f"building it, {rss['after_episodes']:.0f} MiB after the episodes (renderer included).",
        "",
        "The machine is shared with other jobs, so absolute times are indicative; the ratio is what "
        "the gated rendering (render only steps whose images are used) is sized on.",
    ]
    (out / "step_cost.md").write_text("\n".join(lines) + "\n")


def _success_table(rows: dict) -> list[str]:
    lines = [
        "| task | solved | mean steps | max steps | budget | failed episodes |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        mean = f"{r['steps_mean']:.1f}" if r["steps_mean"] is not None else "-"
        lines.append(
            f"| {name} | {r['success']}/{r['episodes']} | {mean} | {r['steps_max']} | {r['budget']} | "
            f"{', '.join(map(str, r['failed_episodes'])) or '-'} |"
        )
    return lines


def _rate(rows: dict) -> tuple[int, int]:
    return sum(r["success"] for r in rows.values()), sum(r["episodes"] for r in rows.values())


def write_expert(out: Path, rows: dict, noisy: dict | None, noise: float, command: str, vers: dict) -> None:
    total, n = _rate(rows)
    lines = [
        "# Tabletop scripted expert: success on the shipped initial states",
        "",
        f"Command: `{command}`",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in vers.items())}.",
        "Physics only (the expert reads `Observation.privileged`), chunks of 8 executed whole, "
        "episode ends at the first success or at the task's step budget.",
        "",
        f"**{total} / {n} episodes solved ({100 * total / n:.1f} %).**",
        "",
        *_success_table(rows),
    ]
    if noisy:
        ok, m = _rate(noisy)
        lines += [
            "",
            f"## A weak policy: the expert with N(0, {noise}) noise on its 6 motion dimensions",
            "",
            f"Same plan, imprecise motion (noise seeded per episode): **{ok} / {m} solved "
            f"({100 * ok / m:.1f} %)**, between the expert and zero.",
            "",
            *_success_table(noisy),
        ]
    (out / "expert.md").write_text("\n".join(lines) + "\n")
    record = {"versions": vers, "tasks": rows, "noisy": {"noise": noise, "tasks": noisy}}
    (out / "expert.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=3, help="expert episodes per task for the step timing")
    p.add_argument("--expert-episodes", type=int, default=0, help="episodes per task for expert.md (0: skip)")
    p.add_argument("--noisy-episodes", type=int, default=0, help="episodes per task of the noisy expert")
    p.add_argument("--noise", type=float, default=0.5, help="std of the noisy expert's motion noise")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("results/tabletop_env"))
    args = p.parse_args(argv)
    command = "python scripts/bench_tabletop_env.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    vers = versions()
    if args.episodes > 0:
        result = {"versions": vers, "command": command, **measure_steps(args.episodes, args.image_size)}
        write_step_cost(args.out, result, command)
        print((args.out / "step_cost.md").read_text())
    if args.expert_episodes > 0:
        noisy = measure_expert(args.noisy_episodes, args.noise) if args.noisy_episodes > 0 else None
        write_expert(args.out, measure_expert(args.expert_episodes), noisy, args.noise, command, vers)
        print((args.out / "expert.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
