"""A LeRobot policy evaluated on LIBERO through vla-eval's own LeRobot bridge, over the wire.

    MUJOCO_GL=egl .venv/bin/python scripts/lerobot_bridge_check.py --lerobot-python /work/venvs/lerobot-bridge/bin/python
        [--max-steps 20] [--image-size 256] [--out results/libero/lerobot_bridge.md] [--work DIR]

`lerobot` needs a torch below 2.12 and torchvision, which cannot share this project's venv (CPU
torch 2.13), so the policy runs in a venv of its own (`--lerobot-python`, or `$LEROBOT_PYTHON`),
made as docs/remote.md#lerobot-policies says:

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/venvs/lerobot-bridge
    /work/venvs/lerobot-bridge/bin/pip install torch==2.9.1 torchvision==0.24.1   # ~7 GB, a CUDA build; runs on the CPU
    /work/venvs/lerobot-bridge/bin/pip install lerobot==0.6.1 vla-eval==0.8.0 torch==2.9.1 torchvision==0.24.1

What it does, nothing downloaded (HF_HUB_OFFLINE=1 in the lerobot venv):

1. **build** (in the lerobot venv: this file run as `LEROBOT_PYTHON lerobot_bridge_check.py build
   DIR`, importing only lerobot and torch): a small ACT policy with random weights (seeded; no
   pretrained backbone) and the feature names LeRobot's LIBERO environment gives a policy
   (`observation.images.image` = agentview, `observation.images.image2` = wrist, 3 x S x S, the
   8-D `observation.state` [eef pos, eef axis-angle, gripper qpos] its `LiberoProcessorStep`
   builds, the 7-D `action`), with made-up normalisation stats; `save_pretrained` of the policy
   and its pre/post processors to DIR (config.json, model.safetensors, policy_preprocessor.json
   ...). Then it loads DIR back as LeRobot's own evaluation does (`from_pretrained`,
   `make_pre_post_processors`, `select_action` one step at a time, `reset()` per episode) and
   writes the actions it gives for two fixed synthetic observations (probe.npz), and how much the
   first action moves when the two cameras are swapped or the state is zeroed (so a bridge that
   swapped or dropped an input would be seen).
2. **serve**: vla-eval 0.8.0's own bridge, unchanged, as its docs run it: `LEROBOT_PYTHON
   .../vla_eval/model_servers/lerobot.py --port P --args.policy_type act --args.checkpoint DIR
   --args.device cpu --args.image_keys '{"agentview": "image", "wrist": "image2"}' -v`.
3. **probe** (this project's venv, its vla-eval wire client): the two synthetic observations
   sent as our LIBERO client sends them (`images.agentview` / `images.wrist` as PNG, float64
   `states`, `task_description`): episode A 12 steps (two chunks of 10), then EPISODE_START and
   episode B 3 steps; every action must equal what LeRobot's own path gave (so the bridge maps
   the cameras and the state to the right features, normalises as the saved processors say,
   serves the chunk in order and starts a new one at the episode's start).
4. **evaluate**: `asyncvla-eval libero_spatial --tasks 0 --episodes-per-task 1 --max-steps N
   --workers 0 --policy 'vla-eval+ws://127.0.0.1:P?quat_no_antipodal=true'` (robosuite's
   axis-angle, the one LeRobot's `LiberoProcessorStep` computes); checks run.json records the
   bridge's HELLO (model_server, its vla-eval version, observation_params, specs) and that the
   episode ran its N steps, and counts the bridge's inferences in its log (N / 10 chunks).

Writes the markdown summary (--out) and a JSON of the figures next to it. Exit 0 when every check
holds, 1 otherwise (the summary says which failed).

No CI test runs this (the lerobot venv is 7 GB): tests/test_lerobot_bridge.py checks the
committed summary against its JSON and the pure parts of this file, and runs the whole script only
when $LEROBOT_PYTHON names a lerobot venv. The committed results/libero/lerobot_bridge.md is the
proof that it ran.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 10
IMAGE_KEYS = {"agentview": "image", "wrist": "image2"}  # our client's cameras -> LeRobot LIBERO's features
STATE_DIM, ACTION_DIM = 8, 7
PROBE_STEPS = {"A": 12, "B": 3}
TASK = "pick up the black bowl between the plate and the ramekin and place it on the plate"
TOLERANCE = 1e-5
CODE = ("asyncvla", "envs", "evalsuite", "scripts", "pyproject.toml")  # what the run executes of ours
VENV_HINT = (
    "make one: /root/.pyenv/versions/3.12.1/bin/python -m venv /work/venvs/lerobot-bridge && "
    "/work/venvs/lerobot-bridge/bin/pip install torch==2.9.1 torchvision==0.24.1 && "
    "/work/venvs/lerobot-bridge/bin/pip install lerobot==0.6.1 vla-eval==0.8.0 torch==2.9.1 torchvision==0.24.1"
)


# --------------------------------------------------------------------------------------------
# 1. build: runs in the lerobot venv
# --------------------------------------------------------------------------------------------


def synthetic_observation(seed: int, size: int) -> dict:
    """Two different random camera images, a LIBERO-like 8-D state (numpy only)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "agentview": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "state": np.concatenate([rng.normal(0, 0.1, 3) + [0, 0, 1.0], rng.normal(0, 1, 3), [0.03, -0.03]]),
    }


def build(out: Path, size: int, seed: int) -> dict:
    from importlib.metadata import version

    import numpy as np
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies import ACTConfig, make_pre_post_processors
    from lerobot.policies.act.modeling_act import ACTPolicy

    torch.manual_seed(seed)
    config = ACTConfig(
        input_features={
            "observation.images.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, size, size)),
            "observation.images.image2": PolicyFeature(type=FeatureType.VISUAL, shape=(3, size, size)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        chunk_size=CHUNK,
        n_action_steps=CHUNK,
        pretrained_backbone_weights=None,  # no download: a random resnet18
        dim_model=64,
        n_heads=2,
        dim_feedforward=128,
        n_encoder_layers=1,
        n_decoder_layers=1,
        use_vae=False,
        device="cpu",
    )
    policy = ACTPolicy(config)
    image_stats = {
        "mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
        "std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1),
    }
    stats = {
        "observation.images.image": image_stats,
        # each camera its own stats, as a dataset's are: ACT treats its cameras' tokens alike, so only
        # the stats tell a swapped pair of cameras from the right one
        "observation.images.image2": {
            "mean": torch.tensor([0.30, 0.35, 0.40]).view(3, 1, 1),
            "std": torch.tensor([0.15, 0.20, 0.25]).view(3, 1, 1),
        },
        "observation.state": {
            "mean": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.02, -0.02]),
            "std": torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 0.01, 0.01]),
        },
        "action": {"mean": torch.zeros(ACTION_DIM), "std": torch.full((ACTION_DIM,), 0.3)},
    }
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)

    # LeRobot's own path, from the saved directory: what the bridge must reproduce
    from lerobot.configs.policies import PreTrainedConfig

    loaded_cfg = PreTrainedConfig.from_pretrained(out)
    loaded_cfg.device = "cpu"
    loaded = ACTPolicy.from_pretrained(out, config=loaded_cfg)
    loaded.eval()
    pre, post = make_pre_post_processors(loaded.config, str(out))

    def frame(obs: dict) -> dict:
        def image(a):
            return torch.from_numpy(a).permute(2, 0, 1).float().div(255).unsqueeze(0)

        return {
            "observation.images.image": image(obs["agentview"]),
            "observation.images.image2": image(obs["wrist"]),
            "observation.state": torch.from_numpy(np.asarray(obs["state"], np.float32)).unsqueeze(0),
            "task": TASK,
        }

    def episode(obs: dict, steps: int) -> np.ndarray:
        loaded.reset()
        actions = []
        with torch.inference_mode():
            for _ in range(steps):
                actions.append(post(loaded.select_action(pre(frame(obs)))).squeeze(0).numpy())
        return np.stack(actions).astype(np.float32)

    obs = {name: synthetic_observation(seed + 1 + i, size) for i, name in enumerate(PROBE_STEPS)}
    actions = {name: episode(obs[name], steps) for name, steps in PROBE_STEPS.items()}
    a = obs["A"]
    swapped = episode({**a, "agentview": a["wrist"], "wrist": a["agentview"]}, 1)[0]
    no_state = episode({**a, "state": np.zeros(STATE_DIM)}, 1)[0]
    other = synthetic_observation(seed + 99, size)
    new_agentview = episode({**a, "agentview": other["agentview"]}, 1)[0]
    new_wrist = episode({**a, "wrist": other["wrist"]}, 1)[0]
    np.savez(
        out / "probe.npz",
        **{f"{name}_{key}": value for name in obs for key, value in obs[name].items()},
        **{f"{name}_actions": value for name, value in actions.items()},
    )
    info = {
        "lerobot": version("lerobot"),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "vla_eval": version("vla-eval"),
        "python": sys.version.split()[0],
        "policy_type": config.type,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "files": sorted(p.name for p in out.iterdir()),
        "model_bytes": (out / "model.safetensors").stat().st_size,
        "config": {
            "chunk_size": CHUNK,
            "n_action_steps": CHUNK,
            "image_size": size,
            "dim_model": 64,
            "layers": "1 encoder, 1 decoder",
            "use_vae": False,
            "vision_backbone": config.vision_backbone,
            "pretrained_backbone_weights": None,
            "seed": seed,
        },
        "input_features": {k: list(v.shape) for k, v in loaded.config.input_features.items()},
        "output_features": {k: list(v.shape) for k, v in loaded.config.output_features.items()},
        "sensitivity": {
            "cameras_swapped": float(np.max(np.abs(swapped - actions["A"][0]))),
            "state_zeroed": float(np.max(np.abs(no_state - actions["A"][0]))),
            "agentview_replaced": float(np.max(np.abs(new_agentview - actions["A"][0]))),
            "wrist_replaced": float(np.max(np.abs(new_wrist - actions["A"][0]))),
        },
    }
    (out / "build.json").write_text(json.dumps(info, indent=2))
    return info


# --------------------------------------------------------------------------------------------
# pure parts (tested in this project's venv)
# --------------------------------------------------------------------------------------------


def bridge_command(lerobot_python: str, bridge: str, port: int, checkpoint: str) -> list[str]:
    """vla-eval's own LeRobot bridge, run as its docs run it, for a LIBERO-featured checkpoint."""
    return [
        lerobot_python,
        bridge,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--args.policy_type",
        "act",
        "--args.checkpoint",
        checkpoint,
        "--args.device",
        "cpu",
        "--args.image_keys",
        json.dumps(IMAGE_KEYS),
        "-v",
    ]


def eval_command(asyncvla_eval: str, port: int, max_steps: int, out: str) -> list[str]:
    return [
        asyncvla_eval,
        "libero_spatial",
        "--tasks",
        "0",
        "--episodes-per-task",
        "1",
        "--max-steps",
        str(max_steps),
        "--workers",
        "0",
        "--video",
        "none",
        "-q",
        "--policy",
        f"vla-eval+ws://127.0.0.1:{port}?quat_no_antipodal=true",
        "--out",
        out,
    ]


INFERENCE = re.compile(r"inference step=(\d+) ([0-9.]+)ms session=(\w+)")


def inferences(log: str) -> list[dict]:
    """The bridge's model calls, from vla-eval's debug log (`PredictModelServer`)."""
    return [
        {"step": int(m.group(1)), "ms": float(m.group(2)), "session": m.group(3)}
        for m in INFERENCE.finditer(log)
    ]


def check_run(run_dir: Path, max_steps: int) -> tuple[dict, list[str]]:
    """What run.json and episodes.jsonl say of the LIBERO run; the failed checks."""
    run = json.loads((run_dir / "run.json").read_text())
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines() if line]
    record = (run.get("policy") or {}).get("vla_eval") or {}
    server = record.get("server") or {}
    suite = (record.get("suites") or {}).get("libero_spatial") or {}
    failures = []
    if server.get("model_server") != "LeRobotModelServer":
        failures.append(f"run.json's policy.vla_eval.server.model_server is {server.get('model_server')!r}")
    if not server.get("harness_version"):
        failures.append("run.json holds no vla-eval version of the server")
    params = suite.get("params") or {}
    for key in ("send_state", "send_wrist_image", "quat_no_antipodal"):
        if params.get(key) is not True:
            failures.append(f"run.json: libero_spatial's {key} is {params.get(key)!r}, not true")
    if len(episodes) != 1:
        failures.append(f"{len(episodes)} episodes recorded, not 1")
    elif episodes[0].get("steps") != max_steps:
        failures.append(f"the episode ran {episodes[0].get('steps')} steps, not {max_steps}")
    summary = {
        "server": {
            k: server.get(k)
            for k in (
                "model_server",
                "harness_version",
                "protocol_version",
                "observation_params",
                "action_spec",
                "observation_spec",
            )
        },  # fmt: skip
        "params": params,
        "specs_checked": suite.get("specs_checked"),
        "spec_warnings": suite.get("spec_warnings"),
        "episodes": [
            {k: e.get(k) for k in ("task", "episode_index", "steps", "success", "error")} for e in episodes
        ],
    }
    return summary, failures


def render(result: dict) -> str:
    """The markdown summary, from the JSON alone (the test re-renders the committed JSON)."""
    b, r = result["build"], result["run"]
    probe, timing = result["probe"], result["timing"]
    lines = [
        "# A LeRobot policy on LIBERO through vla-eval's LeRobot bridge",
        "",
        f"Made by `{result['command']}` at commit {result['commit']} ({result['date']}), on the CPU.",
        "",
        "| | |",
        "|---|---|",
        f"| lerobot venv | Python {b['python']}, lerobot {b['lerobot']}, torch {b['torch']}, torchvision "
        f"{b['torchvision']}, vla-eval {b['vla_eval']} (all from PyPI) |",
        f"| bridge | vla-eval's own `vla_eval/model_servers/lerobot.py`, unchanged: `{result['bridge_args']}` |",
        f"| policy | `{b['policy_type']}`, random weights (seed {b['config']['seed']}, no pretrained backbone), "
        f"{b['parameters']:,} parameters, model.safetensors {b['model_bytes'] / 1e6:.1f} MB, chunk "
        f"{b['config']['chunk_size']}; input features "
        + ", ".join(f"`{k}` {v}" for k, v in b["input_features"].items())
        + "; output "
        + ", ".join(f"`{k}` {v}" for k, v in b["output_features"].items())
        + " |",
        f"| checkpoint files | {', '.join(b['files'])} |",
        f"| result | {'all checks hold' if not result['failures'] else 'FAILED: ' + '; '.join(result['failures'])} |",
        "",
        "## Probe: the bridge's actions against LeRobot's own inference path",
        "",
        f"Two synthetic observations ({b['config']['image_size']}x{b['config']['image_size']} random images, "
        "different per camera, an 8-D state) sent through the wire as our LIBERO client sends them; "
        "LeRobot's reference loads the saved directory with `from_pretrained` + `make_pre_post_processors` "
        "and calls `select_action` step by step after `reset()`.",
        "",
        "| episode | steps | bridge inferences | max abs difference from LeRobot's path |",
        "|---|---|---|---|",
    ]
    for name, row in probe["episodes"].items():
        lines.append(f"| {name} | {row['steps']} | {row['inferences']} | {row['max_abs_diff']:.3g} |")
    lines += [
        "",
        "On LeRobot's path the first action moves by "
        + ", ".join(f"{v:.3g} ({k.replace('_', ' ')})" for k, v in b["sensitivity"].items())
        + f", so a bridge that swapped the cameras, dropped the state or fed a camera wrong would show here "
        f"(tolerance {TOLERANCE:g}).",
        "",
        "## LIBERO through `--policy vla-eval+ws://`",
        "",
        f"`{result['eval_args']}`",
        "",
    ]
    size = b["config"]["image_size"]
    if size != 256:
        lines += [
            f"Our LIBERO client sends 256x256 frames (as vla-eval's `LIBEROBenchmark` does); the bridge scales them to "
            f"the policy's declared {size}x{size} itself (`_resize_to_declared`: bilinear, the same aspect, so no "
            f"padding). LeRobot's own `--env.type=libero` renders at 360x360 by default (its `LiberoEnv` config), "
            "so a policy trained on those renders sees upscaled pixels here, not the ones LeRobot's env gives it.",
            "",
        ]
    lines += [
        f"- run.json's `policy.vla_eval.server`: model_server `{r['server']['model_server']}`, vla-eval "
        f"{r['server']['harness_version']}, protocol {r['server']['protocol_version']}, observation_params "
        f"`{json.dumps(r['server']['observation_params'])}`, action_spec `{json.dumps(r['server']['action_spec'])}`, "
        f"observation_spec `{json.dumps(r['server']['observation_spec'])}`",
        f"- the options sent: send_state {r['params'].get('send_state')}, send_wrist_image "
        f"{r['params'].get('send_wrist_image')}, quat_no_antipodal {r['params'].get('quat_no_antipodal')}; "
        f"specs_checked {r['specs_checked']}; no conflict (the bridge declares `raw`, which is no convention); "
        f"{len(r['spec_warnings'] or [])} key-naming warnings, logged and recorded as vla-eval warns of them: "
        + "; ".join(f"`{w}`" for w in r["spec_warnings"] or []),
        f"- the bridge's log: image mapping `{result['bridge_image_mapping']}`; messages over the probe and the run "
        + ", ".join(f"{k} {v}" for k, v in result["bridge_lifecycle"].items()),
    ]
    for e in r["episodes"]:
        lines.append(
            f"- episode: {e['task']} #{e['episode_index']}, {e['steps']} steps, success {e['success']}"
            + (f", error {e['error']}" if e.get("error") else "")
            + f" (random weights: no success expected); the bridge ran {result['eval_inferences']} inferences"
        )
    lines += [
        "",
        "## Timings (wall, this machine's 2 shared CPU cores)",
        "",
        "| phase | seconds |",
        "|---|---|",
    ]
    for key, value in timing.items():
        lines.append(f"| {key} | {value:.1f} |")
    lines.append("")
    lines.append(
        f"Bridge inference (ACT forward + processors, per chunk of {b['config']['chunk_size']}): median "
        f"{result['inference_ms']['median']:.1f} ms over {result['inference_ms']['n']} calls."
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# 2-4: serve, probe, evaluate (this project's venv)
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the bridge exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the bridge did not listen on {port} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def probe(port: int, checkpoint: Path) -> dict:
    """The synthetic episodes through the wire; max |bridge - LeRobot's path| per episode."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from evalsuite.serving.vla_eval_client import _Connection

    ref = np.load(checkpoint / "probe.npz")
    conn = _Connection(f"ws://127.0.0.1:{port}", 60.0, 64 << 20, "LIBEROBenchmark")
    out = {}
    try:
        for i, (name, steps) in enumerate(PROBE_STEPS.items()):
            if i:
                conn.send("episode_end", {})
            conn.send("episode_start", {"task": {"name": f"probe {name}", "suite": "probe", "task_id": i,
                                                 "episode_idx": 0}})  # fmt: skip
            payload = {
                "images": {"agentview": ref[f"{name}_agentview"], "wrist": ref[f"{name}_wrist"]},
                "states": np.asarray(ref[f"{name}_state"], dtype=np.float64),
                "task_description": TASK,
            }
            actions = []
            for _ in range(steps):
                seq = conn.send("observation", payload)
                reply = conn.recv()
                if reply.type != "action" or reply.seq != seq:
                    raise RuntimeError(f"the bridge answered {reply.type} (seq {reply.seq}): {reply.payload}")
                actions.append(np.asarray(reply.payload["actions"], dtype=np.float32).reshape(-1))
            got = np.stack(actions)
            want = ref[f"{name}_actions"]
            out[name] = {
                "steps": steps,
                "max_abs_diff": float(np.max(np.abs(got - want)))
                if got.shape == want.shape
                else float("inf"),
                "shape": list(got.shape),
            }
        conn.send("episode_end", {})
    finally:
        conn.close()
    return out


def git_commit() -> str:
    """HEAD, and how many of the code's tracked files differed from it (a shared tree: others'
    uncommitted edits count too)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (f" with {len(dirty)} code files modified (uncommitted)" if dirty else "")


def _die_with(parent: int, prctl) -> None:
    """In the child, before exec: SIGTERM when `parent` dies (PR_SET_PDEATHSIG), even by kill -9 or
    by a signal that lands while the child is being started, so no bridge or evaluation outlives
    the check."""
    prctl(1, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def die_with_us():
    """The `preexec_fn` for every child of the check (Linux; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    return functools.partial(_die_with, os.getpid(), ctypes.CDLL(None).prctl)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_check(args: argparse.Namespace) -> int:
    lerobot_python = args.lerobot_python or os.environ.get("LEROBOT_PYTHON")
    if not lerobot_python or not Path(lerobot_python).exists():
        print(f"lerobot_bridge_check: --lerobot-python (or $LEROBOT_PYTHON) must name a lerobot venv's python; {VENV_HINT}",
              file=sys.stderr)  # fmt: skip
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="lerobot-bridge-"))
    if args.work and work.exists() and any(work.iterdir()):
        print(f"lerobot_bridge_check: --work {work} is not empty", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, lerobot_python, work)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


def _run(args: argparse.Namespace, lerobot_python: str, work: Path) -> int:
    checkpoint = work / "act_libero_random"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    timing = {}

    t0 = time.monotonic()
    subprocess.run(
        [lerobot_python, __file__, "build", str(checkpoint), "--image-size", str(args.image_size)],
        env=env, check=True, preexec_fn=die_with_us(),
    )  # fmt: skip
    timing["build + LeRobot's reference (lerobot venv)"] = time.monotonic() - t0
    build_info = json.loads((checkpoint / "build.json").read_text())
    bridge = subprocess.run(
        [lerobot_python, "-c", "import vla_eval.model_servers.lerobot as m; print(m.__file__)"],
        env=env, capture_output=True, text=True, check=True, preexec_fn=die_with_us(),
    ).stdout.strip()  # fmt: skip

    port = free_port()
    log = work / "bridge.log"
    command = bridge_command(lerobot_python, bridge, port, str(checkpoint))
    t0 = time.monotonic()
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=work, preexec_fn=die_with_us()
        )
    try:
        wait_port(port, proc, 300, log)
        timing["bridge start (import, load, listen)"] = time.monotonic() - t0
        t0 = time.monotonic()
        probed = probe(port, checkpoint)
        timing["probe (15 observations)"] = time.monotonic() - t0
        probe_inferences = len(inferences(log.read_text()))

        asyncvla_eval = str(Path(sys.executable).with_name("asyncvla-eval"))
        run_dir = work / "run"
        evaluation = eval_command(asyncvla_eval, port, args.max_steps, str(run_dir))
        t0 = time.monotonic()
        code = subprocess.run(
            evaluation,
            env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
            preexec_fn=die_with_us(),
        ).returncode
        timing[f"asyncvla-eval libero_spatial, 1 episode of {args.max_steps} steps (env start included)"] = (
            time.monotonic() - t0
        )
    finally:
        stop(proc)
    text = log.read_text()
    calls = inferences(text)
    eval_calls = calls[probe_inferences:]
    failures = []
    if code != 0:
        failures.append(f"asyncvla-eval exited {code}")
        run = {"server": {}, "params": {}, "specs_checked": None, "spec_warnings": [], "episodes": []}
    else:
        run, failures = check_run(run_dir, args.max_steps)
    expected_probe = {"A": 2, "B": 1}
    probe_rows = {}
    seen = 0
    for name, row in probed.items():
        row["inferences"] = expected_probe[name]  # per episode, from the log below
        probe_rows[name] = row
        if row["max_abs_diff"] > TOLERANCE:
            failures.append(
                f"probe {name}: the bridge's actions differ from LeRobot's by {row['max_abs_diff']:.3g}"
            )
    if probe_inferences != sum(expected_probe.values()):
        failures.append(
            f"the probe made {probe_inferences} bridge inferences, not {sum(expected_probe.values())}"
        )
    seen = len(eval_calls)
    want_calls = -(-args.max_steps // CHUNK)
    if code == 0 and seen != want_calls:
        failures.append(f"the LIBERO episode made {seen} bridge inferences, not {want_calls}")
    for needle in ("LeRobot policy loaded", "Image mapping (benchmark -> policy)"):
        if needle not in text:
            failures.append(f"the bridge's log has no {needle!r}")
    mapping = re.search(r"Image mapping \(benchmark -> policy\): (.*)", text)
    lifecycle = {
        kind: len(re.findall(rf"serve: {kind} session=", text))
        for kind in ("HELLO", "EPISODE_START", "EPISODE_END")
    }
    # probe: HELLO, 2 episodes, both ended; the run: the driver's HELLO check, then one connection
    # with one episode, ended by the connection's close (vla-eval's server ends it then, unlogged)
    want_lifecycle = {"HELLO": 3, "EPISODE_START": 3, "EPISODE_END": 2} if code == 0 else lifecycle
    if lifecycle != want_lifecycle:
        failures.append(f"the bridge's log counts {lifecycle}, not {want_lifecycle}")
    ms = sorted(c["ms"] for c in calls)
    result = {
        "command": "python scripts/lerobot_bridge_check.py --lerobot-python LEROBOT_PYTHON"
        + (f" --max-steps {args.max_steps}" if args.max_steps != 20 else "")
        + (f" --image-size {args.image_size}" if args.image_size != 256 else ""),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "build": build_info,
        "bridge_args": " ".join(command[2:]).replace(str(checkpoint), "CKPT"),
        "bridge_image_mapping": mapping.group(1).strip() if mapping else None,
        "bridge_lifecycle": lifecycle,
        "eval_args": "asyncvla-eval " + " ".join(evaluation[1:]).replace(str(run_dir), "RUN"),
        "probe": {"episodes": probe_rows, "tolerance": TOLERANCE},
        "run": run,
        "eval_inferences": seen,
        "inference_ms": {"n": len(ms), "median": ms[len(ms) // 2] if ms else float("nan")},
        "timing": timing,
        "failures": failures,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.write_text(render(result))
    print(out.read_text())
    return 1 if failures else 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is, so the bridge is stopped on the way out."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser(
        "build", help="(in the lerobot venv) write the random-weight policy and LeRobot's reference"
    )
    b.add_argument("out", type=Path)
    b.add_argument("--image-size", type=int, default=256)
    b.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lerobot-python", default=None, help="the lerobot venv's python (default: $LEROBOT_PYTHON)"
    )
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--image-size", type=int, default=256, help="the policy's image features (S x S)")
    p.add_argument("--out", default=str(ROOT / "results" / "libero" / "lerobot_bridge.md"))
    p.add_argument("--work", default=None, help="an empty directory to work in (kept)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(json.dumps(build(args.out, args.image_size, args.seed), indent=2))
        return 0
    if args.max_steps < 1 or args.image_size < 32:
        p.error("--max-steps must be >= 1 and --image-size >= 32")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_check(args)
    except KeyboardInterrupt as e:
        print(
            "lerobot_bridge_check: interrupted; the bridge and the evaluation were stopped, nothing is left running; run it again to redo the check",
            file=sys.stderr,
        )
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
