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

With --render-options (issue 27) it measures what a render of both cameras costs under each
rendering choice of scene.xml, applied to the compiled model: shadow maps of several sizes (the
scene had a 1024 one), no shadows, a reflective floor, the lights; and per choice three ways to
draw the two cameras: one renderer for both (update + render + readPixels per camera, with
mjr_render and readPixels timed apart: readPixels waits for Mesa to finish drawing), one renderer
per camera (two GL contexts), and the env's one pass (both cameras into one buffer, one
readPixels); plus a renderer's construction (GL context). Options are timed in alternating
rounds, so a load that comes and goes hits all alike. Writes render_options.json / .md and
render_options.png (both cameras under the old and the shipped settings, mid-grasp).
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
from evalsuite.tree_state import tree_state  # noqa: E402


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


# --- rendering choices (issue 27) ------------------------------------------------------------------


def _shadows(size: int):
    def apply(m) -> None:
        m.light_castshadow[:] = 1
        m.vis.quality.shadowsize = size

    return apply


def _reflective_floor(m) -> None:
    import mujoco

    m.mat_reflectance[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, "floor")] = 0.3


def _headlight_only(m) -> None:
    m.light_active[:] = 0


def _no_headlight(m) -> None:
    m.vis.headlight.active = 0


# name -> (what it changes on the shipped scene, applied before the renderer is built)
RENDER_OPTIONS = {
    "shadows 1024 (the scene before issue 27)": _shadows(1024),
    "shadows 512": _shadows(512),
    "shadows 256": _shadows(256),
    "shadows 128": _shadows(128),
    "no shadows (shipped)": None,
    "no shadows, reflective floor (0.3)": _reflective_floor,
    "no shadows, headlight only (scene light off)": _headlight_only,
    "no shadows, scene light only (headlight off)": _no_headlight,
}
WAYS = ("one pass (env)", "one renderer, per camera", "a renderer per camera")


class _Drawer:
    """Both cameras of one rendering choice, drawn one of three ways."""

    def __init__(self, apply, size: int, state_env):
        import mujoco

        self.mujoco = mujoco
        self.model = mujoco.MjModel.from_xml_path(str(state_env.model_path))
        if apply is not None:
            apply(self.model)
        self.data = mujoco.MjData(self.model)
        self.data.qpos[:], self.data.mocap_pos[:], self.data.mocap_quat[:] = state_env.state
        mujoco.mj_forward(self.model, self.data)
        self.size, self.cameras = size, ("agentview", "wrist")
        t0 = time.perf_counter()
        self.shared = mujoco.Renderer(self.model, size, size)
        self.context_ms = 1e3 * (time.perf_counter() - t0)
        self.own = [mujoco.Renderer(self.model, size, size) for _ in self.cameras]
        self.wide = mujoco.Renderer(self.model, size, 2 * size)
        self.buf = np.empty((size, size, 3), np.uint8)
        self.wide_buf = np.empty((size, 2 * size, 3), np.uint8)

    def draw(self, way: str, split: dict | None = None) -> None:
        mj, size = self.mujoco, self.size
        if way == "one pass (env)":
            r = self.wide
            r._gl_context.make_current()
            for i, cam in enumerate(self.cameras):
                r.update_scene(self.data, camera=cam)
                mj.mjr_render(mj.MjrRect(i * size, 0, size, size), r.scene, r._mjr_context)
            mj.mjr_readPixels(self.wide_buf, None, mj.MjrRect(0, 0, 2 * size, size), r._mjr_context)
            return
        for i, cam in enumerate(self.cameras):
            r = self.shared if way == "one renderer, per camera" else self.own[i]
            r._gl_context.make_current()
            t0 = time.perf_counter()
            r.update_scene(self.data, camera=cam)
            mj.mjr_render(r._rect, r.scene, r._mjr_context)
            t1 = time.perf_counter()
            mj.mjr_readPixels(self.buf, None, r._rect, r._mjr_context)
            if split is not None:
                split["render"].append(t1 - t0)
                split["read"].append(time.perf_counter() - t1)

    def images(self) -> np.ndarray:
        self.shared._gl_context.make_current()
        out = []
        for cam in self.cameras:
            self.shared.update_scene(self.data, camera=cam)
            out.append(self.shared.render().copy())
        return np.concatenate(out, axis=1)

    def close(self) -> None:
        for r in (self.shared, *self.own, self.wide):
            r.close()


class _MidGrasp:
    """The state the renders are timed at: the expert closing on the red block (contact in view)."""

    def __init__(self):
        from envs.tabletop.env import SCENE_PATH

        env, expert = make_env(image_size=16), TabletopExpert()
        obs = env.reset("red_on_blue_plate", 0, 0)
        for _ in range(40):  # reach, descend and close: the fingers touch the block
            for action in expert.act([obs], ["bench"])[0][:4]:
                obs, *_ = env.step(action, render=False)
            if obs.state[6] < 0.03:
                break
        d = env.data
        self.state = (d.qpos.copy(), d.mocap_pos.copy(), d.mocap_quat.copy())
        self.model_path = SCENE_PATH
        env.close()


def measure_render_options(size: int, rounds: int, per_round: int = 10) -> dict:
    state = _MidGrasp()
    drawers = {name: _Drawer(apply, size, state) for name, apply in RENDER_OPTIONS.items()}
    times = {name: {way: [] for way in WAYS} for name in drawers}
    splits = {name: {"render": [], "read": []} for name in drawers}
    for d in drawers.values():  # warm-up: shader compilation, first upload of textures
        for way in WAYS:
            d.draw(way)
    for _ in range(rounds):  # alternate: every option sees the same machine load
        for name, d in drawers.items():
            for way in WAYS:
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    d.draw(way, splits[name] if way == "one renderer, per camera" else None)
                    times[name][way].append(time.perf_counter() - t0)
    out = {}
    for name, d in drawers.items():
        out[name] = {
            **{way: 1e3 * float(np.median(t)) for way, t in times[name].items()},
            "mjr_render_ms_per_camera": 1e3 * float(np.median(splits[name]["render"])),
            "readPixels_ms_per_camera": 1e3 * float(np.median(splits[name]["read"])),
            "renderer_construction_ms": d.context_ms,
            "renders_timed": len(times[name][WAYS[0]]),
        }
    if size == 128:  # the images the two choices give, for render_options.png
        _SHEET["before"] = drawers["shadows 1024 (the scene before issue 27)"].images()
        _SHEET["shipped"] = drawers["no shadows (shipped)"].images()
    for d in drawers.values():
        d.close()
    return out


_SHEET: dict = {}


def write_render_options(out: Path, result: dict, command: str) -> None:
    (out / "render_options.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Tabletop scene: what rendering both cameras costs under each rendering choice",
        "",
        f"Command: `{command}`",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}. "
        f"Load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in result['load_before'])}, "
        f"after {', '.join(f'{x:.2f}' for x in result['load_after'])} (2 cores shared with other jobs).",
        "",
        "Both cameras at one mid-grasp state, median ms per step (both cameras); options timed in "
        "alternating rounds. `mjr_render` / `readPixels`: per camera with one renderer for both "
        "(`readPixels` waits for Mesa to finish drawing, so most of the drawing is counted there).",
    ]
    for size, rows in result["sizes"].items():
        lines += [
            "",
            f"## {size} x {size} px",
            "",
            "| scene | one pass (env) | one renderer, per camera | a renderer per camera "
            "| mjr_render / camera | readPixels / camera | renderer construction |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | **{r['one pass (env)']:.2f}** | {r['one renderer, per camera']:.2f} | "
                f"{r['a renderer per camera']:.2f} | {r['mjr_render_ms_per_camera']:.2f} | "
                f"{r['readPixels_ms_per_camera']:.2f} | {r['renderer_construction_ms']:.0f} |"
            )
    lines += ["", "![before and shipped](render_options.png)", ""]
    (out / "render_options.md").write_text("\n".join(lines) + "\n")
    if _SHEET:
        from PIL import Image, ImageDraw

        top, bottom = _SHEET["before"], _SHEET["shipped"]
        label = 14
        sheet = Image.new("RGB", (top.shape[1], 2 * (top.shape[0] + label)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for i, (img, text) in enumerate(((top, "before: shadows 1024"), (bottom, "shipped: no shadows"))):
            y = i * (top.shape[0] + label)
            draw.text((2, y + 1), text, fill=(0, 0, 0))
            sheet.paste(Image.fromarray(img), (0, y + label))
        sheet.save(out / "render_options.png")


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
    record = {
        "meta": tree_state(),
        "versions": vers,
        "tasks": rows,
        "noisy": {"noise": noise, "tasks": noisy},
    }
    (out / "expert.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=3, help="expert episodes per task for the step timing")
    p.add_argument("--expert-episodes", type=int, default=0, help="episodes per task for expert.md (0: skip)")
    p.add_argument("--noisy-episodes", type=int, default=0, help="episodes per task of the noisy expert")
    p.add_argument("--noise", type=float, default=0.5, help="std of the noisy expert's motion noise")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--render-options", action="store_true", help="measure rendering choices (issue 27)")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds of 10 renders per option")
    p.add_argument("--out", type=Path, default=Path("results/tabletop_env"))
    args = p.parse_args(argv)
    command = "python scripts/bench_tabletop_env.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    vers = versions()
    if args.episodes > 0:
        result = {
            "meta": tree_state(),
            "versions": vers,
            "command": command,
            **measure_steps(args.episodes, args.image_size),
        }
        write_step_cost(args.out, result, command)
        print((args.out / "step_cost.md").read_text())
    if args.render_options:
        sizes = (56, 128)
        result = {"meta": tree_state(), "versions": vers, "command": command, "load_before": os.getloadavg()}
        result["sizes"] = {str(n): measure_render_options(n, args.rounds) for n in sizes}
        result["load_after"] = os.getloadavg()
        write_render_options(args.out, result, command)
        print((args.out / "render_options.md").read_text())
    if args.expert_episodes > 0:
        noisy = measure_expert(args.noisy_episodes, args.noise) if args.noisy_episodes > 0 else None
        write_expert(args.out, measure_expert(args.expert_episodes), noisy, args.noise, command, vers)
        print((args.out / "expert.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
