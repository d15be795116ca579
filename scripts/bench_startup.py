"""Where a run's fixed cost goes: Ray's start and stop, start-up imports, one LIBERO env build.

    python scripts/bench_startup.py [--repeats 3] [--ray-repeats 3] [--no-libero] [--out results/bench]

Every measurement runs in a fresh interpreter (a user's run pays each cost once per process):
1. Ray as the runner uses it (`--ray-repeats` times): a local cluster, two 1-CPU actors answering
   once, then `ray.shutdown()`.
2. Imports: what a run's start-up imports now (the CLI, the suite registry, run.json's host info),
   and what it imported before for nothing: torch (run.json's GPU list), matplotlib (the
   nightly/compare commands), scipy.spatial (SimplerEnv's adapter, through the registry); and
   what the tables' Wilson intervals import at the end of a run, now (scipy.stats) and before
   (statsmodels). Each is timed after numpy, which every run imports anyway.
3. The interpreter's exit after a run's imports (Ray, pandas, scipy.stats), with and without
   `gc.freeze()` first (what `evalsuite.cli.console_main` does), alternated: from the last
   statement to the process's end, as the parent sees it.
4. One LIBERO env built and reset for the first time, profiled (skipped with --no-libero or
   without the package): robosuite's XML compile, the GL context, the renders, numba's first
   dispatch, the rest.
Writes startup.json to --out, with the packages' versions and the load average before and after
(the machine may be shared). The whole-command comparison with vla-eval is
scripts/bench_libero_peer.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from evalsuite.tree_state import tree_state

ROOT = Path(__file__).resolve().parents[1]
# recorded with the figures: their start and import times are what is measured
PACKAGES = ("ray", "numpy", "pandas", "scipy", "statsmodels", "torch", "matplotlib", "mujoco", "robosuite")

RAY_LIFECYCLE = """
import json, logging, time
import ray
t0 = time.perf_counter()
ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
t1 = time.perf_counter()
Worker = ray.remote(num_cpus=1)(type("Worker", (), {"ping": lambda self: 1}))
workers = [Worker.remote() for _ in range(2)]
ray.get([w.ping.remote() for w in workers])
t2 = time.perf_counter()
ray.shutdown()
print(json.dumps({"init_s": t1 - t0, "actors_s": t2 - t1, "stop_s": time.perf_counter() - t2}))
"""

IMPORT_TIME = """
import json, sys, time
import numpy
t0 = time.perf_counter()
exec(sys.argv[1])
print(json.dumps({"s": time.perf_counter() - t0}))
"""

IMPORTS = {
    "now: evalsuite.cli + suite registry": "from evalsuite.cli import main\n"
    "from evalsuite.suites import registry\nregistry()",
    "now: run.json host info (nvidia-smi)": "from evalsuite.manifest import host_info\nhost_info()",
    "now, at the end: scipy.stats for the tables' Wilson intervals": "from scipy.stats import binomtest",
    "before, at the end: statsmodels for the tables' Wilson intervals": "from statsmodels.stats.proportion "
    "import proportion_confint",
    "before: torch for run.json's GPU list": "import torch\ntorch.cuda.is_available()",
    "before: matplotlib.pyplot (nightly/compare)": "import matplotlib\nmatplotlib.use('Agg')\n"
    "import matplotlib.pyplot",
    "before: scipy.spatial.transform (SimplerEnv's adapter)": "from scipy.spatial.transform import Rotation",
}

EXIT = """
import gc, sys, time
import pandas, ray, scipy.stats
if sys.argv[1] == "freeze":
    gc.freeze()
print(time.time(), flush=True)
"""

LIBERO_BUILD = """
import cProfile, json, pstats, time
from envs.libero.env import make_env
env = make_env(suite="libero_spatial")
task = next(iter(env.task_ids))
profile = cProfile.Profile()
t0 = time.perf_counter()
profile.enable()
env.reset(task, 0, 0)
profile.disable()
total = time.perf_counter() - t0
stats = pstats.Stats(profile).stats
def cum(pattern):
    return sum(v[3] for (f, line, name), v in stats.items() if pattern in (f + ":" + name))
parts = {
    "xml_compile_s": cum("mujoco._structs.from_xml_string"),
    "gl_context_s": cum("_set_mujoco_context_and_buffers"),
    "renders_s": cum("mujoco._render.mjr_render") + cum("mujoco._render.mjr_readPixels"),
    "numba_first_dispatch_s": cum("numba/core/dispatcher.py:_compile_for_args"),
}
t1 = time.perf_counter()
env.reset(task, 1, 0)
print(json.dumps({"first_reset_s": total, **parts, "second_reset_s": time.perf_counter() - t1}))
"""


def run_child(program: str, *args: str) -> dict:
    env = os.environ | {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def exit_seconds(mode: str) -> float:
    """From the child's last statement (it prints the time) to its end, as the parent sees it."""
    done = subprocess.run([sys.executable, "-c", EXIT, mode], capture_output=True, text=True, cwd=ROOT)
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
    return ended - float(done.stdout.strip().splitlines()[-1])


def versions() -> dict:
    """The packages whose start and import the figures time (read without importing them)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "runs": [round(v, 3) for v in values]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-repeats", type=int, default=3, help="Ray starts")
    parser.add_argument("--no-libero", action="store_true", help="skip the LIBERO env build")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    load_start = os.getloadavg()

    ray_runs = [run_child(RAY_LIFECYCLE) for _ in range(args.ray_repeats)]
    ray_result = {key: summary([r[key] for r in ray_runs]) for key in ray_runs[0]}
    print(f"ray: {ray_result}", flush=True)

    imports = {}
    for name, code in IMPORTS.items():
        imports[name] = summary([run_child(IMPORT_TIME, code)["s"] for _ in range(args.repeats)])
        print(f"{name}: {imports[name]['median']} s", flush=True)

    exits: dict[str, list[float]] = {"plain": [], "freeze": []}
    for i in range(args.repeats):
        for mode in ["plain", "freeze"] if i % 2 == 0 else ["freeze", "plain"]:
            exits[mode].append(exit_seconds(mode))
    exit_result = {mode: summary(values) for mode, values in exits.items()}
    print(f"exit: {exit_result}", flush=True)

    libero = None
    if not args.no_libero:
        if importlib.util.find_spec("libero") is None:
            print("LIBERO is not installed: skipping the env build (pip install -e '.[libero]')")
        else:
            builds = [run_child(LIBERO_BUILD) for _ in range(args.repeats)]
            libero = {key: summary([r[key] for r in builds]) for key in builds[0]}
            print(f"libero build: {libero}", flush=True)

    result = {
        "meta": tree_state(),
        "command": "python scripts/bench_startup.py " + " ".join(sys.argv[1:]),
        "host": {
            "name": platform.node(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg(),
        },
        "versions": {"python": platform.python_version(), **versions()},
        "ray_lifecycle_s": ray_result,
        "imports_s": imports,
        "exit_after_a_run_s": exit_result,
        "libero_first_build_s": libero,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'startup.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
