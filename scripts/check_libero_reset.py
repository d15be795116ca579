"""Check the cheap LIBERO reset against the reference (hard) reset on every init state of a task.

    python scripts/check_libero_reset.py [--suites libero_spatial,libero_object,libero_goal,libero_10]
                                         [--tasks 0] [--states 50] [--after 16] [--out results/libero]
                                         [--name reset_check]

Two envs of the same task side by side: the reference one resets the way openpi's and
OpenVLA-OFT's clients do (robosuite's hard reset: the model is recompiled on every `env.reset()`),
the other with `cheap_reset=True`. Each then runs the same `--after` random steps, so every cheap
reset starts from a simulator a random policy has just moved (arm, objects and the gripper's
command integrator), and the first cheap reset comes right after the env was built. Compared bit
for bit, per init state: the simulator state after the settle steps, the model's body poses, both
first camera images and the 8-D state, the state after each following step and the images of the
last one. Then init state 0 once more in the reference env and in a fresh one: whether the
reference itself is a function of (task, init state, seed). Writes NAME.json (every difference, both reset times) to --out; `--tasks all` checks
every task of each suite (other scenes: drawers, stove, microwave, study).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_libero import versions  # noqa: E402

PAPER_SUITES = "libero_spatial,libero_object,libero_goal,libero_10"
log = logging.getLogger("check_libero_reset")


def episode(env, task: str, k: int, actions: np.ndarray) -> tuple[dict, float]:
    """Reset to init state k, then the steps; everything that must match, and the reset's seconds."""
    t0 = time.perf_counter()
    first = env.reset(task, k, 7)
    reset_s = time.perf_counter() - t0
    model = env._env.sim.model
    out = {
        "settled_state": env._env.get_sim_state().copy(),
        "body_pos": np.array(model.body_pos),
        "body_quat": np.array(model.body_quat),
        "first_state_8d": first.state,
        **{f"first_{cam}": image for cam, image in first.images.items()},
    }
    states = []
    for i, action in enumerate(actions):
        obs = env.step(action, render=i == len(actions) - 1)[0]
        states.append(env._env.get_sim_state().copy())
    out["states_after"] = np.stack(states) if states else np.zeros(0)
    out |= {f"last_{cam}": image for cam, image in (obs.images.items() if len(actions) else ())}
    return out, reset_s


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def check_suite(suite_name: str, task_index: int, states: int | None, after: int) -> dict:
    import envs.libero.env
    from envs.libero import make_env

    envs.libero.env.HISTORY_DEPENDENT_TASKS = frozenset()  # measure the cheap reset on every task
    from evalsuite.suites import get_suite

    suite = get_suite(suite_name)
    task = suite.tasks[task_index].name
    kwargs = dict(suite.env_kwargs)
    reference = make_env(**(kwargs | {"cheap_reset": False}))
    cheap = make_env(**(kwargs | {"cheap_reset": True}))
    n = min(states or 50, 50)
    rows = []
    for k in range(n):
        actions = np.random.default_rng(k).uniform(-1, 1, (after, 7))
        ref, ref_s = episode(reference, task, k, actions)
        got, cheap_s = episode(cheap, task, k, actions)
        diffs = {key: _max_diff(got[key], ref[key]) for key in ref}
        identical = all(np.array_equal(got[key], ref[key]) for key in ref)
        rows.append(
            {
                "init_state": k,
                "identical": identical,
                "max_abs_diff": diffs,
                "hard_s": ref_s,
                "cheap_s": cheap_s,
            }
        )
        log.info(
            "%s task %d init %d: identical=%s hard %.2f s cheap %.2f s",
            suite_name,
            task_index,
            k,
            identical,
            ref_s,
            cheap_s,
        )
    # Is the reference a function of (task, init state, seed)? Init state 0 again in the reference
    # env, which has reset n times since: LIBERO samples some fixtures relative to the scene it is in.
    actions = np.random.default_rng(0).uniform(-1, 1, (after, 7))
    again, _ = episode(reference, task, 0, actions)
    fresh = make_env(**(kwargs | {"cheap_reset": False}))
    first, _ = episode(fresh, task, 0, actions)
    repeat_diff = {key: _max_diff(again[key], first[key]) for key in first}
    for env in (reference, cheap, fresh):
        env.close()
    # the first reset of each env includes no build (make_env builds lazily on the first reset)
    hard = [r["hard_s"] for r in rows[1:]] or [rows[0]["hard_s"]]
    cheap_times = [r["cheap_s"] for r in rows[1:]] or [rows[0]["cheap_s"]]
    return {
        "suite": suite_name,
        "task_index": task_index,
        "task": task,
        "init_states_checked": n,
        "steps_after_reset": after,
        "all_identical": all(r["identical"] for r in rows),
        "not_identical": [r["init_state"] for r in rows if not r["identical"]],
        # init state 0 from a fresh reference env vs after the n resets above: equal when the hard
        # reset's scene does not depend on the env's history
        "reference_repeats": not any(repeat_diff.values()),
        "reference_repeat_max_abs_diff": repeat_diff,
        "hard_reset_s_mean": round(float(np.mean(hard)), 3),
        "cheap_reset_s_mean": round(float(np.mean(cheap_times)), 3),
        "cheap_reset_s_max": round(float(np.max(cheap_times)), 3),
        "per_init_state": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suites", default=PAPER_SUITES)
    p.add_argument("--tasks", default="0", help="task indices in the suite's benchmark order, or all")
    p.add_argument("--states", type=int, default=50, help="init states 0..N-1 (LIBERO ships 50)")
    p.add_argument("--after", type=int, default=16, help="random steps compared after each reset")
    p.add_argument("--out", default="results/libero")
    p.add_argument("--name", default="reset_check", help="output file name, without .json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from envs.libero.headless import choose_gl_backend
    from evalsuite.suites import get_suite

    gl = choose_gl_backend()
    result = {
        "command": "python " + " ".join(["scripts/check_libero_reset.py", *(argv or sys.argv[1:])]),
        "host": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
        "mujoco_gl": f"{os.environ.get('MUJOCO_GL')} ({gl.reason})",
        "versions": versions(),
        "suites": [
            check_suite(suite, task, args.states, args.after)
            for suite in args.suites.split(",")
            for task in (
                range(len(get_suite(suite).tasks)) if args.tasks == "all" else map(int, args.tasks.split(","))
            )
        ],
    }
    result["host"]["load_avg_end"] = os.getloadavg()
    result["all_identical"] = all(s["all_identical"] for s in result["suites"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    for s in result["suites"]:
        print(
            f"{s['suite']} task {s['task_index']}: {s['init_states_checked']} init states, identical: "
            f"{s['all_identical']}, hard reset {s['hard_reset_s_mean']} s, cheap {s['cheap_reset_s_mean']} s "
            f"(max {s['cheap_reset_s_max']} s)"
        )
    return 0 if result["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
