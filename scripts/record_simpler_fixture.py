"""Record what the real SimplerEnv returns, as the fixture that drives the tests' fake of it.

Run it where SimplerEnv is installed by its own instructions (docs/simpler.md#install):

    python scripts/record_simpler_fixture.py --out tests/fixtures/simpler_real.json

For every env id of the published sweeps (`envs/simpler/sweeps.csv`, all script families) it builds
the env exactly as the adapter does (`SweepConfig.gym_make_kwargs`, the row's kwargs), resets it
with the row's first initial state, steps it a few times, and writes the structure of what came
back: observation keys with shapes and dtypes, reset-info and step-info keys (and their small
values), the robot's active joints, finger joints and TCP link, the robot base and TCP poses with
sapien's own base-frame TCP pose, the budget, the action space and the instruction. No image data.

Ray-traced rows (`shader_dir=rt`: every drawer row) are built with the default shader unless
`--keep-rt` is given: on a CPU the ray tracer takes minutes per step, and the shader changes the
pictures, not the structure recorded here. The fixture says which envs were built that way.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envs.simpler.adapter import import_simulator  # noqa: E402
from envs.simpler.assets import missing_files  # noqa: E402
from envs.simpler.sweep import SweepConfig, load_sweeps  # noqa: E402

FAMILIES = ("rt1", "octo", "misc_alt_urdf")
# WidowX absolute gripper: +1 = open; Google robot relative gripper: 0 = keep. A small forward move.
PROBE_ACTION = {"widowx": [0.01, 0, 0, 0, 0, 0, 1.0], "google_robot": [0.01, 0, 0, 0, 0, 0, 0.0]}


def structure(value):
    """Keys, shapes and dtypes of a nested observation (no array data)."""
    if isinstance(value, dict):
        return {str(k): structure(v) for k, v in value.items()}
    array = np.asarray(value)
    return {"shape": list(array.shape), "dtype": str(array.dtype)}


def small_value(value):
    """A JSON value for an info entry: the value itself when it is small, else its type and shape."""
    if isinstance(value, dict):
        return {str(k): small_value(v) for k, v in value.items()}
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return {"numpy": type(value).__name__, "value": value.item()}
    array = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if array is not None and array.dtype != object and array.size <= 16:
        return {"numpy": f"ndarray[{array.dtype}]", "value": array.tolist()}
    if array is not None and array.dtype != object:
        return {"numpy": f"ndarray[{array.dtype}]", "shape": list(array.shape)}
    return {"type": type(value).__name__, "repr": repr(value)[:120]}


def poses(unwrapped, obs) -> dict:
    tcp, base = unwrapped.tcp.pose, unwrapped.agent.robot.pose
    rel = base.inv() * tcp  # sapien's own answer, which envs/simpler/state.py must reproduce
    return {
        "tcp_p": tcp.p.tolist(),
        "tcp_q": tcp.q.tolist(),
        "robot_pose_p": base.p.tolist(),
        "robot_pose_q": base.q.tolist(),
        "tcp_in_base_p": rel.p.tolist(),
        "tcp_in_base_q": rel.q.tolist(),
        "obs_base_pose": np.asarray(obs["agent"]["base_pose"]).tolist(),
        "qpos": np.asarray(obs["agent"]["qpos"]).tolist(),
    }


def representative_configs(env_ids: list[str] | None) -> list[SweepConfig]:
    """One configuration per env id: the first rt1 row that uses it, else the first row of any family."""
    chosen: dict[str, SweepConfig] = {}
    for family in FAMILIES:
        for config in load_sweeps(family):
            chosen.setdefault(config.env_name, config)
    return [chosen[e] for e in sorted(chosen) if not env_ids or e in env_ids]


def record_env(config: SweepConfig, gym, get_image, asset_dir: Path, steps: int, keep_rt: bool) -> dict:
    overlay = str(asset_dir / "real_inpainting" / Path(config.rgb_overlay_path).name)
    kwargs = config.gym_make_kwargs(overlay if config.rgb_overlay_path else None)
    shader = kwargs.get("shader_dir", "default")
    if shader == "rt" and not keep_rt:
        kwargs.pop("shader_dir")
    t0 = time.perf_counter()
    env = gym.make(config.env_name, **kwargs)
    built = time.perf_counter()
    options = config.reset_options(0)
    options["robot_init_options"]["init_xy"] = np.array(options["robot_init_options"]["init_xy"])
    if "init_xy" in options["obj_init_options"]:
        options["obj_init_options"]["init_xy"] = np.array(options["obj_init_options"]["init_xy"])
    obs, reset_info = env.reset(options=options)
    reset_done = time.perf_counter()
    unwrapped = env.unwrapped
    agent = unwrapped.agent
    entry = {
        "sweep_row": config.row_id,
        "family": config.family,
        "task_name": config.task_name,
        "robot": config.robot,
        "shader": shader if keep_rt or shader != "rt" else "default (the row asks for rt)",
        "missing_assets": [str(p.relative_to(asset_dir)) for p in missing_files(config, asset_dir)],
        "max_episode_steps": env.spec.max_episode_steps,
        "action_space": {
            "low": env.action_space.low.tolist(),
            "high": env.action_space.high.tolist(),
        },
        "robot_uid": unwrapped.robot_uid,
        "active_joints": [j.name for j in agent.robot.get_active_joints()],
        "gripper_joint_names": list(agent.config.gripper_joint_names),
        "ee_link_name": agent.config.ee_link_name,
        "tcp_link_name": unwrapped.tcp.name,
        "obs": structure(obs),
        "image_for_policy": structure(get_image(unwrapped, obs)),
        "reset_info": small_value(reset_info),
        "instruction": unwrapped.get_language_instruction(),
        "is_final_subtask": bool(unwrapped.is_final_subtask()),
        "poses": [poses(unwrapped, obs)],
        "steps": [],
    }
    robot_kind = "widowx" if "widowx" in config.robot else "google_robot"
    action = np.array(PROBE_ACTION[robot_kind])
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(action)
        entry["steps"].append(
            {
                "info": small_value(info),
                "reward": float(reward),
                "terminated": small_value(terminated),
                "truncated": small_value(truncated),
                "obs_same_structure": structure(obs) == entry["obs"],
            }
        )
        entry["poses"].append(poses(unwrapped, obs))
    stepped = time.perf_counter()
    entry["timings_s"] = {
        "build": round(built - t0, 2),
        "reset": round(reset_done - built, 2),
        "step": round((stepped - reset_done) / max(steps, 1), 3),
    }
    env.close()
    return entry


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("sapien", "numpy", "gymnasium", "mani_skill2_real2sim", "simpler_env"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(module_file: str) -> str | None:
    try:
        return subprocess.check_output(
            ["git", "-C", str(Path(module_file).parent), "rev-parse", "HEAD"],
            text=True,
            stderr=subprocess.DEVNULL,
        ).strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="tests/fixtures/simpler_real.json")
    p.add_argument("--steps", type=int, default=3, help="steps after the reset (default 3)")
    p.add_argument("--env-ids", help="comma-separated env ids (default: every env id of the sweeps)")
    p.add_argument("--keep-rt", action="store_true", help="build ray-traced rows with the ray tracer")
    args = p.parse_args(argv)
    gym, get_image, asset_dir = import_simulator()
    import mani_skill2_real2sim
    import simpler_env

    out = Path(args.out)
    fixture = json.loads(out.read_text()) if out.exists() else {"envs": {}}
    wanted = args.env_ids.split(",") if args.env_ids else None
    for config in representative_configs(wanted):
        print(f"recording {config.env_name} (sweep row {config.row_id}) ...", flush=True)
        entry = record_env(config, gym, get_image, asset_dir, args.steps, args.keep_rt)
        print(f"  {entry['timings_s']}", flush=True)
        fixture["envs"][config.env_name] = entry
        fixture["recorded"] = {  # written after every env: a long recording keeps what it has
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]),
            "versions": versions(),
            "commits": {
                "ManiSkill2_real2sim": git_commit(mani_skill2_real2sim.__file__),
                "SimplerEnv": git_commit(simpler_env.__file__),
            },
            "host": f"{platform.machine()} {platform.system()}, software Vulkan where no GPU",
            "probe_actions": PROBE_ACTION,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(fixture['envs'])} env ids)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
