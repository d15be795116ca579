"""`asyncvla-eval` as a hostile new user runs it: every bad input fails in seconds with one line on
stderr, exit code 2, no traceback, and leaves an existing run directory byte-identical.

Each command runs in its own process with a timeout (a hang fails the test), against the toy
suites (tests/toy_suite.py) and copies of the shipped demo checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncvla import demo_checkpoint

TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 90  # generous for a loaded 2-core machine; every refusal here takes a few seconds


def _env(**extra) -> dict:
    return {
        **os.environ,
        "ASYNCVLA_SUITE_MODULES": "toy_suite",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "RAY_AUTH_MODE": "disabled",
        **extra,
    }


def cli(*args: str, env: dict | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evalsuite.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
        stdin=subprocess.DEVNULL,
    )


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("asyncvla-eval: error:"), result.stderr
    assert message in lines[0], lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """A finished toy run that every bad command below points --out at."""
    out = tmp_path_factory.mktemp("existing") / "run"
    result = cli(
        "toy", "--policy", "random", "--workers", "0", "--episodes-per-task", "2", "--out", str(out), "-q"
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Copies of the demo checkpoint, each damaged in one way."""
    root = tmp_path_factory.mktemp("ckpts")
    demo = demo_checkpoint()

    def copy(name: str) -> Path:
        return Path(shutil.copytree(demo, root / name))

    made = {"empty": root / "empty", "file": root / "a_file"}
    made["empty"].mkdir()
    made["file"].write_text("not a directory")
    made["truncated"] = copy("truncated")
    data = (made["truncated"] / "model.safetensors").read_bytes()
    (made["truncated"] / "model.safetensors").write_bytes(data[: len(data) // 3])
    made["not_safetensors"] = copy("not_safetensors")
    (made["not_safetensors"] / "model.safetensors").write_bytes(b"PK\x03\x04 a zip file, not safetensors")
    made["bad_json"] = copy("bad_json")
    (made["bad_json"] / "config.json").write_text("{ not json")
    made["json_list"] = copy("json_list")
    (made["json_list"] / "config.json").write_text("[1, 2, 3]")
    made["huge"] = copy("huge")
    config = json.loads((made["huge"] / "config.json").read_text())
    text = config["model"]["text"]  # the same head size, 512 x wider: about 5 GB of weights if built
    text.update(hidden_size=65536, num_heads=2048, num_kv_heads=1024, intermediate_size=262144)
    (made["huge"] / "config.json").write_text(json.dumps(config))
    return made


EVAL = ["toy", "--workers", "0", "-q"]


@pytest.mark.parametrize(
    "args, message",
    [
        # hangs before: a GPU that never comes, a batch that is never sent, a cluster nobody runs
        (["--policy", "random", "--workers", "1", "--device", "cuda"], "this machine has no usable GPU"),
        (["--policy", "random", "--workers", "1", "--max-batch", "0"], "--max-batch 0: must be at least 1"),
        (
            ["--policy", "random", "--workers", "1", "--address", "127.0.0.1:1"],
            "no Ray cluster answers there",
        ),
        # silently wrong before
        (["--policy", "random", "--max-steps", "0"], "--max-steps 0: must be at least 1"),
        (["--policy", "random", "--max-steps", "-5"], "--max-steps -5: must be at least 1"),
        (["--policy", "random", "--tasks", ""], "--tasks is empty"),
        (["--policy", "random", "--tasks", " , "], "--tasks is empty"),
        (["--policy", "random", "--episode-timeout", "-1"], "--episode-timeout -1.0: must be a positive"),
        (["--policy", "random", "--set", "goal=abc"], "--set goal=abc: suite 'toy' expects float"),
        (["--policy", "random", "--retries", "-1"], "--retries -1: must be at least 0"),
        (["--policy", "random", "--max-wait-ms", "-3"], "--max-wait-ms -3.0: must be at least 0"),
        (["--policy", "random", "--threshold", "1.5"], "--threshold 1.5"),
        (["--policy", "random", "--max-steps", "abc"], "argument --max-steps: invalid int value: 'abc'"),
        (["--policy", "random", "--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_arguments_are_refused_in_seconds(existing_run, args, message):
    before = snapshot(existing_run)
    assert_refused(cli(*EVAL, *args, "--out", str(existing_run)), message)
    assert snapshot(existing_run) == before


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty", "config.json is missing"),
        ("file", "no such checkpoint directory"),
        ("truncated", "model.safetensors: unreadable, truncated or not a safetensors file"),
        ("not_safetensors", "model.safetensors: unreadable, truncated or not a safetensors file"),
        ("bad_json", "config.json: not readable JSON"),
        ("json_list", "config.json: holds a JSON list"),
        ("huge", "config.json expects (65536,)"),
    ],
)
@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_broken_checkpoint_is_refused_in_the_driver(
    existing_run, checkpoints, tmp_path, name, message, workers
):
    """Refused by the driver before any model is built (the huge one would take 5.5 GB) and
    before Ray starts, where a policy server would build one."""
    before = snapshot(existing_run)
    probe = tmp_path / "probe.json"
    args = ["toy", "--ckpt", str(checkpoints[name]), "--workers", workers, "--out", str(existing_run), "-q"]
    assert_refused(cli_probing_model_builds(probe, *args), message)
    assert json.loads(probe.read_text()) == {"models_built_on": [], "ray_started": False}
    assert snapshot(existing_run) == before


# `asyncvla-eval` with every AsyncVLA built on a real device (not the meta device, which holds no
# weights) written to $PROBE at exit, and whether the command started Ray.
PROBE = """
import json, os, sys
from asyncvla.model import AsyncVLA
from evalsuite.cli import main
built, build = [], AsyncVLA.__init__
def recording(self, *args, **kwargs):
    device = str(kwargs.get("device", args[3] if len(args) > 3 else "cpu"))
    if device != "meta":
        built.append(device)
    build(self, *args, **kwargs)
AsyncVLA.__init__ = recording
try:
    code = main(sys.argv[1:])
finally:
    ray = sys.modules.get("ray")
    started = bool(ray is not None and ray.is_initialized())
    with open(os.environ["PROBE"], "w") as f:
        json.dump({"models_built_on": built, "ray_started": started}, f)
sys.exit(code)
"""


def cli_probing_model_builds(probe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=_env(PROBE=str(probe)),
        stdin=subprocess.DEVNULL,
    )


def test_the_model_build_probe_sees_a_model_built(tmp_path):
    """The probe above records a build: the demo checkpoint, valid, runs one step of its suite."""
    probe = tmp_path / "probe.json"
    args = ["tabletop", "--ckpt", "demo", "--workers", "0", "--tasks", "0", "--episodes-per-task", "1"]
    result = cli_probing_model_builds(probe, *args, "--max-steps", "1", "--out", str(tmp_path / "run"), "-q")
    assert result.returncode == 0, result.stderr
    assert json.loads(probe.read_text()) == {"models_built_on": ["cpu"], "ray_started": False}


def test_a_checkpoint_for_another_action_dimension_is_refused(existing_run):
    before = snapshot(existing_run)
    result = cli("toy-6d", "--ckpt", "demo", "--workers", "0", "--out", str(existing_run), "-q")
    assert_refused(result, "predicts 7-D actions but suite 'toy-6d' takes 6-D ones")
    assert snapshot(existing_run) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_checkpoint_file_is_named(checkpoints, tmp_path):
    ckpt = Path(shutil.copytree(demo_checkpoint(), tmp_path / "ckpt"))
    (ckpt / "rater.safetensors").chmod(0)
    assert_refused(cli(*EVAL, "--ckpt", str(ckpt), "--out", str(tmp_path / "run")), "rater.safetensors")


def test_out_pointing_at_a_file_is_refused(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert_refused(cli(*EVAL, "--policy", "random", "--out", str(target)), "is a file")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "field, value, message",
    [("success", "false", "field 'success' is 'false'"), ("suite", 5, "field 'suite' is 5")],
)
def test_report_refuses_a_record_of_the_wrong_type(existing_run, tmp_path, field, value, message):
    run = Path(shutil.copytree(existing_run, tmp_path / "run"))
    lines = (run / "episodes.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record[field] = value
    lines[1] = json.dumps(record)
    (run / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(run)
    assert_refused(cli("report", str(run)), f"episodes.jsonl:2 is not a valid episode record ({message}")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "content, message", [("[1, 2]", "holds a JSON list"), ('{"seed": 0}', "has no list of 'suites'")]
)
def test_report_refuses_a_run_json_of_the_wrong_shape(existing_run, tmp_path, content, message):
    run = Path(shutil.copytree(existing_run, tmp_path / "run"))
    (run / "run.json").write_text(content)
    assert_refused(cli("report", str(run)), message)


def test_two_identical_commands_on_one_directory_leave_one_runs_records(tmp_path):
    out = tmp_path / "run"
    args = [*EVAL, "--policy", "scripted", "--episodes-per-task", "3", "--out", str(out)]
    env = _env(ASYNCVLA_TOY_STEP_DELAY="1.0")  # the first run lasts longer than the second's start-up
    first = subprocess.Popen(
        [sys.executable, "-m", "evalsuite.cli", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not (out / ".lock").exists():  # the first run holds the directory
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = cli(*args, env=env)
    assert_refused(second, f"is in use by another run (pid {first.pid} on host")
    assert first.wait(timeout=TIMEOUT_S) == 0
    ids = [json.loads(line)["episode_id"] for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(ids) == 6 and len(set(ids)) == 6


def test_a_bad_suite_plugin_is_one_line(tmp_path):
    result = cli("list", env=_env(ASYNCVLA_SUITE_MODULES="no_such_plugin_module"))
    assert_refused(
        result, "ASYNCVLA_SUITE_MODULES='no_such_plugin_module': cannot import 'no_such_plugin_module'"
    )
    (tmp_path / "empty_plugin.py").write_text("SUITES = 'not a list'\n")
    env = _env(ASYNCVLA_SUITE_MODULES="empty_plugin", PYTHONPATH=str(tmp_path))
    assert_refused(cli("list", env=env), "must export SUITES, a list of evalsuite.suites.SuiteSpec")


def test_a_plugin_that_replaces_a_built_in_suite_is_warned_about(tmp_path):
    (tmp_path / "shadow.py").write_text(
        "import dataclasses\n"
        "from evalsuite.suites.tabletop import SUITES as BUILT_IN\n"
        "SUITES = [dataclasses.replace(BUILT_IN[0], protocol={'mine': True})]\n"
    )
    result = cli("list", env=_env(ASYNCVLA_SUITE_MODULES="shadow", PYTHONPATH=str(tmp_path)))
    assert result.returncode == 0
    assert "shadow replaces the built-in suite 'tabletop'" in result.stderr


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only): a full disk for real, not a mock."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)):
        pytest.skip("needs root and mount to make a small file system")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_keeps_the_records_and_resumes(small_disk, tmp_path):
    out = small_disk / "run"
    args = [*EVAL, "--policy", "scripted", "--episodes-per-task", "6", "--video", "all", "--out", str(out)]
    filler = small_disk / "filler"
    stat = os.statvfs(small_disk)
    free = stat.f_bavail * stat.f_frsize
    filler.write_bytes(b"\0" * (free - 24 * 1024))  # room for the manifest and a record, not the videos
    result = cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr
    assert not list(out.glob("*.tmp"))  # no 0-byte run.json.tmp
    kept = (out / "episodes.jsonl").read_text().splitlines() if (out / "episodes.jsonl").exists() else []
    assert all(json.loads(line) for line in kept)  # whatever was written is whole
    filler.unlink()
    assert cli(*args).returncode == 0  # resume after freeing space
    ids = [json.loads(line)["episode_id"] for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(ids) == 12 and len(set(ids)) == 12


def test_report_reads_a_run_on_a_read_only_file_system(existing_run, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount read-only")
    ro = tmp_path / "ro"
    ro.mkdir()
    if not (_mount("--bind", str(existing_run), str(ro)) and _mount("-o", "remount,ro,bind", str(ro))):
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
        pytest.skip("mount is not permitted here")
    try:
        result = cli("report", str(ro))
        assert result.returncode == 0, result.stderr
        assert "per_task" in result.stdout and "Traceback" not in result.stderr
        assert "tables not written" in result.stderr
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
