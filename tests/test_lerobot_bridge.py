"""scripts/lerobot_bridge_check.py: a LeRobot policy on LIBERO through vla-eval's own LeRobot bridge.

What CI can and cannot check. The check needs `lerobot` (0.6.1, Python 3.12, torch 2.9.1 with
torchvision: a 7 GB venv of its own, docs/remote.md#lerobot-policies), which this project's venv
cannot hold and CI does not build. So CI checks only:

- the committed result (results/libero/lerobot_bridge.json + .md): every check held, the bridge's
  actions equal LeRobot's own path, the LIBERO episode ran its steps with the HELLO in run.json,
  and the markdown is what the script renders from that JSON (a renamed field fails here);
- the script's pure parts (the bridge's command line and LIBERO feature names, run.json's check,
  the log parsing) and its refusals;
- the camera names it passes map, through vla-eval's own `_qualify_image_key`, to the feature
  names LeRobot's LIBERO environment gives a policy.

The end-to-end test runs only where $LEROBOT_PYTHON names that venv's python, and is skipped
everywhere else, CI included: a skip is no coverage. The proof that the bridge serves a LeRobot
policy is the committed output of the script, run as its docstring says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import lerobot_bridge_check as check  # noqa: E402

RESULTS = ROOT / "results" / "libero"
# LeRobot 0.6.1's LiberoEnv.features_map (lerobot/envs/configs.py): what its env calls the cameras
LEROBOT_LIBERO_CAMERAS = {"agentview": "observation.images.image", "wrist": "observation.images.image2"}


@pytest.mark.parametrize("name, size", [("lerobot_bridge", 256), ("lerobot_bridge_360", 360)])
def test_committed_result_held_and_renders_from_its_json(name, size):
    """256: what our client sends (vla-eval's `LIBEROBenchmark`'s size); 360: what LeRobot's
    `--env.type=libero` renders by default (its `LiberoEnv` config), to which the bridge scales ours."""
    path = RESULTS / f"{name}.json"
    result = json.loads(path.read_text())
    assert result["build"]["config"]["image_size"] == size
    assert result["build"]["input_features"]["observation.images.image"] == [3, size, size]
    assert result["failures"] == []
    assert result["build"]["lerobot"] and result["build"]["policy_type"] == "act"
    for row in result["probe"]["episodes"].values():
        assert row["max_abs_diff"] <= check.TOLERANCE
    # the probe could see a wrong mapping: each input moves the action far above the tolerance
    assert min(result["build"]["sensitivity"].values()) > 100 * check.TOLERANCE
    assert result["run"]["server"]["model_server"] == "LeRobotModelServer"
    assert [e["steps"] for e in result["run"]["episodes"]] == [20]
    assert result["eval_inferences"] == 2  # 20 steps, chunks of 10
    assert path.with_suffix(".md").read_text() == check.render(result)


def test_bridge_command_names_lerobot_libero_features():
    from vla_eval.model_servers.lerobot import _qualify_image_key

    command = check.bridge_command("/venv/bin/python", "/x/lerobot.py", 8123, "/ckpt")
    keys = json.loads(command[command.index("--args.image_keys") + 1])
    assert {camera: _qualify_image_key(key) for camera, key in keys.items()} == LEROBOT_LIBERO_CAMERAS
    assert command[command.index("--port") + 1] == "8123"
    assert command[command.index("--args.checkpoint") + 1] == "/ckpt"
    assert "-v" in command  # the debug log the inference count is read from
    evaluation = check.eval_command("asyncvla-eval", 8123, 20, "/run")
    assert "vla-eval+ws://127.0.0.1:8123?quat_no_antipodal=true" in evaluation


def test_inferences_parse_vla_eval_debug_log():
    log = (
        "2026-12-07 22:03:07,727 DEBUG    vla_eval.model_servers.predict: inference step=0 140.3ms session=41ac8f4d\n"
        "2026-12-07 22:03:08,000 INFO     vla_eval.model_servers.serve: EPISODE_START session=41ac8f4d episode=x\n"
        "2026-12-07 22:03:16,098 DEBUG    vla_eval.model_servers.predict: inference step=10 237.8ms session=41ac8f4d\n"
    )
    assert check.inferences(log) == [
        {"step": 0, "ms": 140.3, "session": "41ac8f4d"},
        {"step": 10, "ms": 237.8, "session": "41ac8f4d"},
    ]


def _run_dir(tmp_path: Path, model_server: str = "LeRobotModelServer", steps: int = 20) -> Path:
    run = {
        "policy": {
            "vla_eval": {
                "server": {"model_server": model_server, "harness_version": "0.8.0", "protocol_version": 1},
                "suites": {
                    "libero_spatial": {
                        "params": {"send_state": True, "send_wrist_image": True, "quat_no_antipodal": True},
                        "specs_checked": True,
                        "spec_warnings": [],
                    }
                },
            }
        }
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    episode = {"task": "t", "episode_index": 0, "steps": steps, "success": False, "error": None}
    (tmp_path / "episodes.jsonl").write_text(json.dumps(episode) + "\n")
    return tmp_path


def test_check_run_accepts_the_bridges_run(tmp_path):
    summary, failures = check.check_run(_run_dir(tmp_path), 20)
    assert failures == []
    assert summary["server"]["model_server"] == "LeRobotModelServer"


def test_check_run_names_what_does_not_hold(tmp_path):
    _, failures = check.check_run(_run_dir(tmp_path, model_server="ProbeServer", steps=7), 20)
    assert any("ProbeServer" in f for f in failures)
    assert any("ran 7 steps, not 20" in f for f in failures)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-steps", "0"], "--max-steps must be >= 1"),
        (["--lerobot-python", "/nonexistent/python"], "must name a lerobot venv's python"),
    ],
)
def test_refusals_exit_2_with_one_line(argv, message, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LEROBOT_PYTHON"}
    out = tmp_path / "x.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lerobot_bridge_check.py"), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("LEROBOT_PYTHON"),
    reason="needs $LEROBOT_PYTHON: a lerobot 0.6.1 venv (7 GB, docs/remote.md#lerobot-policies); "
    "the committed results/libero/lerobot_bridge.md is the proof that it ran",
)
def test_end_to_end_with_a_lerobot_venv(tmp_path):
    out = tmp_path / "lerobot_bridge.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "lerobot_bridge_check.py"),
            "--max-steps",
            "10",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MUJOCO_GL": "egl"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["failures"] == []
    assert result["eval_inferences"] == 1
    assert [e["steps"] for e in result["run"]["episodes"]] == [10]


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan killed here may wait for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


MESSAGE = "lerobot_bridge_check: interrupted; the bridge and the evaluation were stopped, nothing is left running; run it again to redo the check"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    "signum, code, message",
    [(signal.SIGTERM, 143, MESSAGE), (signal.SIGINT, 130, MESSAGE), (signal.SIGKILL, -9, None)],
)
def test_interrupted_leaves_no_child(signum, code, message, tmp_path):
    """A stand-in for the lerobot venv's python that records its pid and hangs in the build step;
    the check is signalled (its child is not): exit 130 / 143 with one line, and the child is gone,
    after kill -9 too (the children die with the check: PR_SET_PDEATHSIG)."""
    fake = tmp_path / "python"
    pidfile = tmp_path / "child.pid"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}\nexec sleep 120\n")
    fake.chmod(0o755)
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:  # a file, not a pipe: an orphaned child would hold a pipe open
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "lerobot_bridge_check.py"), "--lerobot-python", str(fake),
             "--out", str(tmp_path / "x.md")],
            stderr=err,
            env={**os.environ, "TMPDIR": str(tmp_path)},  # kill -9 leaves its empty work directory
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists():
            assert time.monotonic() < deadline and proc.poll() is None, err_path.read_text()
            time.sleep(0.05)
        child = int(pidfile.read_text())
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code
        if message:
            assert err_path.read_text().strip().splitlines() == [message]
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, f"the check's child {child} outlived it"
            time.sleep(0.05)
        assert not (tmp_path / "x.md").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
