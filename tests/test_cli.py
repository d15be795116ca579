"""`asyncvla-eval` on bad input: one-line error, exit code 2, run directory intact; kill -9 + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalsuite.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _eval(tmp_path, *args):
    return main([*args, "--out", str(tmp_path / "run"), "-q"])


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(
    "args, message",
    [
        (["no-such-suite", "--policy", "random"], "unknown suite 'no-such-suite'"),
        (["toy", "--policy", "random", "--tasks", "fly"], "unknown task(s) fly"),
        (["toy", "--policy", "random", "--episodes-per-task", "7"], "has 6 fixed initial states"),
        (["toy", "--ckpt", "/no/such/checkpoint"], "checkpoint '/no/such/checkpoint' does not exist"),
        (["toy"], "choose a policy"),
        (["toy", "--policy", "random", "--set", "colour=red"], "has no such option"),
        (["toy-missing", "--policy", "random", "--workers", "0"], "pip install toy-sim"),
        (["toy-nan", "--policy", "scripted", "--workers", "0"], "NaN or Inf"),
        (["toy-wrongdim", "--policy", "scripted", "--workers", "0"], "needs [L, 7] actions"),
        (["toy", "--policy", "random", "--workers", "64"], "but the Ray cluster has"),
    ],
)
def test_bad_input_stops_with_a_clear_message_and_exit_code_2(toy_suites, tmp_path, capsys, args, message):
    assert _eval(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("asyncvla-eval: error:")


def test_bad_actions_through_ray_also_stop_the_run(toy_suites, tmp_path, capsys):
    assert _eval(tmp_path, "toy-nan", "--policy", "scripted", "--workers", "2") == 2
    assert "NaN or Inf" in capsys.readouterr().err


def test_a_fatal_error_keeps_the_records_already_written(toy_suites, tmp_path, capsys):
    assert _eval(tmp_path, "toy", "--policy", "scripted", "--workers", "0", "--tasks", "reach") == 0
    episodes = tmp_path / "run" / "episodes.jsonl"
    before = episodes.read_text()
    # same run directory, a different policy: refused before anything is touched
    assert _eval(tmp_path, "toy", "--policy", "random", "--workers", "0", "--tasks", "reach") == 2
    assert "different 'policy'" in capsys.readouterr().err
    assert episodes.read_text() == before


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_run_with_error_records_exits_3_and_says_how_to_rerun_them(toy_suites, tmp_path, capsys, workers):
    args = ["toy-crash", "--policy", "scripted", "--workers", workers, "--retries", "1"]
    assert _eval(tmp_path, *args, "--episodes-per-task", "2") == 3
    err = capsys.readouterr().err
    assert "2 of 4 episodes are recorded as errors" in err and "--retry-errors" in err
    records = [json.loads(x) for x in _lines(tmp_path / "run" / "episodes.jsonl")]
    assert sorted(r["success"] for r in records if r["episode_index"] == 0) == [True, True]
    assert [r["attempts"] for r in records if r["success"] is None] == [2, 2]
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["finished"] and manifest["stopped"] is None  # it ran to the end, with errors


def test_a_stopped_run_is_not_marked_finished(toy_suites, tmp_path, capsys):
    assert _eval(tmp_path, "toy-nan", "--policy", "scripted", "--workers", "0") == 2
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest.get("finished") is None and "NaN or Inf" in manifest["stop_reason"]


def test_a_pyarrow_that_cannot_import_stops_a_ray_run_with_the_fix(toy_suites, tmp_path, capsys, monkeypatch):
    """SimplerEnv's numpy 1.26 beside pyarrow >= 22: Ray's workers would die at start."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    assert _eval(tmp_path, "toy", "--policy", "random", "--workers", "2") == 2
    err = capsys.readouterr().err
    assert "pyarrow fails to import" in err and "pyarrow<22" in err


def test_dry_run_prints_the_plan_and_runs_nothing(toy_suites, tmp_path, capsys):
    assert _eval(tmp_path, "toy", "--policy", "random", "--dry-run", "--episodes-per-task", "4") == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and out.rstrip().endswith("8")
    assert not (tmp_path / "run").exists()


def test_report_rebuilds_the_tables_from_the_records(toy_suites, tmp_path, capsys):
    assert _eval(tmp_path, "toy", "--policy", "scripted", "--workers", "0") == 0
    table = (tmp_path / "run" / "tables" / "per_task.csv").read_text()
    (tmp_path / "run" / "tables" / "per_task.csv").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "tables" / "per_task.csv").read_text() == table


def test_kill_9_then_the_same_command_resumes_without_loss_or_duplicates(toy_suites, tmp_path):
    """A real SIGKILL of a running evaluation, then the same command: same final table as one clean run."""
    slow = ["toy", "--policy", "random", "--workers", "0", "-q", "--set", "goal=1.0"]
    env = {**os.environ, "ASYNCVLA_TOY_STEP_DELAY": "0.05"}
    cmd = [sys.executable, "-m", "evalsuite.cli", *slow, "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    episodes = tmp_path / "killed" / "episodes.jsonl"
    deadline = time.time() + 120
    while len(_lines(episodes)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = len(_lines(episodes))
    assert 3 <= recorded < 12, "the kill must land mid-run"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clean = [sys.executable, "-m", "evalsuite.cli", *slow, "--out", str(tmp_path / "clean")]
    subprocess.run(clean, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ids = [json.loads(line)["episode_id"] for line in _lines(episodes)]
    assert len(ids) == len(set(ids)) == 12
    killed_table = (tmp_path / "killed" / "tables" / "per_task.csv").read_text()
    assert killed_table == (tmp_path / "clean" / "tables" / "per_task.csv").read_text()
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["resumed"] == 1


def test_backend_flag_selects_the_simulator_backend_of_suites_that_have_one(capsys):
    from evalsuite.eval_args import config_from_args, eval_parser

    argv = ["simpler-widowx", "--policy", "random", "--backend", "maniskill3"]
    config = config_from_args(eval_parser().parse_args(argv), argv)
    assert config.suites[0].env_kwargs["backend"] == "maniskill3"
    assert main(["tabletop", "--policy", "random", "--backend", "maniskill3", "--dry-run"]) == 2
    assert "has no such option" in capsys.readouterr().err


def test_the_command_freezes_what_a_run_leaves_out_of_the_last_garbage_collection(monkeypatch, capsys):
    """`asyncvla-eval` is `console_main`: `main`, then `gc.freeze()`, so the interpreter's exit does
    not walk every object the run imported (results/bench/startup.json measures it). Tests call
    `main`, which must not freeze (a test session would keep every cycle it makes)."""
    import gc
    from importlib.metadata import entry_points

    from evalsuite.cli import console_main

    (command,) = entry_points(group="console_scripts", name="asyncvla-eval")
    assert command.value == "evalsuite.cli:console_main"
    gc.unfreeze()
    assert main(["list"]) == 0 and gc.get_freeze_count() == 0
    monkeypatch.setattr(sys, "argv", ["asyncvla-eval", "list"])
    try:
        assert console_main() == 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert "libero_spatial" in capsys.readouterr().out


def test_a_run_without_a_model_starts_without_torch_or_matplotlib(toy_suites, tmp_path):
    """What a random- or scripted-policy run imports: torch and matplotlib stay out, the suite
    registry does without scipy (SimplerEnv's adapter), scipy comes in for the tables' Wilson
    intervals and statsmodels not at all (what each costs: scripts/bench_startup.py)."""
    probe = (
        "import json, sys\n"
        "from evalsuite.cli import main\n"
        "from evalsuite.suites import registry\n"
        "registry()\n"
        "heavy = ('torch', 'matplotlib', 'scipy', 'statsmodels')\n"
        "before = [m for m in heavy if m in sys.modules]\n"
        f"code = main(['toy', '--policy', 'random', '--workers', '0', '-q', '--out', {str(tmp_path / 'run')!r}])\n"
        "print(json.dumps([code, before, [m for m in heavy if m in sys.modules]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=os.environ, check=True
    )
    code, before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0
    assert before == []
    assert after == ["scipy"]


def test_run_json_names_the_hosts_gpus_as_nvidia_smi_lists_them(toy_suites, tmp_path, monkeypatch):
    """host_info asks nvidia-smi (a stand-in here, on PATH) instead of importing torch. The stand-in
    prints, one per line as `--format=csv,noheader` does, the name the real H200 reported when the
    model was benchmarked on it (results/bench; read there through torch: no GPU here to record
    nvidia-smi itself)."""
    bench = json.loads((ROOT / "results/bench/model_latency_qwen2.5-vl-3b_cuda.json").read_text())
    recorded = bench["meta"]["device"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{recorded}\\n{recorded}\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert _eval(tmp_path, "toy", "--policy", "random", "--workers", "0", "--episodes-per-task", "1") == 0
    host = json.loads((tmp_path / "run" / "run.json").read_text())["host"]
    assert host["gpus"] == [recorded, recorded] and host["cuda_visible_devices"] == "1"

    smi.unlink()  # no driver: no gpus entry, and no error
    assert main(["toy", "--policy", "random", "--workers", "0", "-q", "--out", str(tmp_path / "cpu")]) == 0
    assert "gpus" not in json.loads((tmp_path / "cpu" / "run.json").read_text())["host"]
