"""`asyncvla-eval export RUN_DIR --format vla-eval`: a real run, written in vla-eval 0.8.0's result
layout and read back by vla-eval's own loader (`vla_eval.results.export.export_db`, what `vla-eval
export` runs), which must rebuild the aggregates we wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

vla_eval = pytest.importorskip("vla_eval")

from vla_eval.results.collector import BenchmarkResult, TaskResult  # noqa: E402
from vla_eval.results.export import export_db, print_export_summary  # noqa: E402

from evalsuite.cli import main  # noqa: E402


class FailsOnRed:
    """Random-ish actions; crashes on every episode whose instruction names the red block."""

    action_dim = 7
    chunk_length = 4

    def act(self, observations, keys):
        if any("red" in o.instruction for o in observations):
            raise RuntimeError("this policy cannot see red")
        return np.full((len(observations), self.chunk_length, self.action_dim), 0.2, np.float32)

    def reset(self, episode_key):
        pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    args = ["tabletop", "--tasks", "push_yellow_right,red_on_blue_plate", "--episodes-per-task", "2"]
    args += ["--max-steps", "6", "--workers", "0", "--video", "none", "-q", "--retries", "0"]
    assert main([*args, "--policy", "test_vla_eval_export:FailsOnRed", "--out", str(out)]) == 3  # 2 errors
    return out


def without_time(aggregate: dict) -> dict:
    return {k: v for k, v in aggregate.items() if k != "created_at"}


def test_vla_evals_loader_rebuilds_the_aggregate_we_wrote(run_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), "--format", "vla-eval", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    database, aggregate_path = Path(printed[0]), Path(printed[1])
    assert database.name.startswith("recording-") and aggregate_path.name == "tabletop_aggregate.json"
    ours = json.loads(aggregate_path.read_text())

    (theirs,) = export_db(database, tmp_path / "reread")  # what `vla-eval export DB` does
    assert without_time(theirs) == without_time(ours)
    assert without_time(
        json.loads((tmp_path / "reread" / "tabletop_aggregate.json").read_text())
    ) == without_time(ours)
    print_export_summary([theirs])  # its own table printer reads it

    assert set(BenchmarkResult.__required_keys__) <= set(ours)
    # TaskResult's keys but num_errors (NotRequired, which its postponed annotations hide from TypedDict)
    assert all(set(TaskResult.__annotations__) - {"num_errors"} <= set(t) for t in ours["tasks"])
    assert ours["num_episodes_total"] == 4 and ours["num_errors"] == 2 and ours["seed"] == 0
    assert ours["mean_success"] == 0.0 and ours["config"]["episodes_per_task"] == 2
    assert ours["harness_version"].startswith("asyncvla-eval 0.1.0")
    assert ours["config"]["asyncvla_eval"]["policy"]["factory"] == "test_vla_eval_export:FailsOnRed"
    by_task = {t["task"]: t for t in ours["tasks"]}
    red = by_task["put the red block on the blue plate"]
    assert red["num_errors"] == 2 and red["mean_success"] == 0.0 and red["avg_steps"] == 0
    assert [e["failure_reason"] for e in red["episodes"]] == ["error", "error"]
    assert "this policy cannot see red" in red["episodes"][0]["failure_detail"]
    push = by_task["push the yellow block to the right"]
    assert [e["episode_id"] for e in push["episodes"]] == [0, 1] and push["avg_steps"] == 6
    assert all(len(e["asyncvla"]["final_state"]) == 8 for e in push["episodes"])


def test_exporting_twice_writes_the_same_files(run_dir, tmp_path):
    for name in ("a", "b"):
        assert main(["export", str(run_dir), "--format", "vla-eval", "--out", str(tmp_path / name)]) == 0
    a, b = (sorted(p.name for p in (tmp_path / n).iterdir()) for n in ("a", "b"))
    assert a == b and len(a) == 2
    first, second = (json.loads((tmp_path / n / "tabletop_aggregate.json").read_text()) for n in ("a", "b"))
    assert without_time(first) == without_time(second)
    assert main(["export", str(run_dir), "--format", "vla-eval", "--out", str(tmp_path / "a")]) == 0  # again


def test_a_vla_eval_servers_hello_is_the_aggregates_server_info(run_dir, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["policy"]["vla_eval"] = {
        "server": {"model_server": "Pi0ModelServer", "harness_version": "0.8.0"}
    }
    (copy / "run.json").write_text(json.dumps(manifest))
    (copy / "episodes.jsonl").write_text((run_dir / "episodes.jsonl").read_text())
    assert main(["export", str(copy), "--format", "vla-eval"]) == 0
    aggregate = json.loads((copy / "export-vla-eval" / "tabletop_aggregate.json").read_text())
    assert aggregate["server_info"] == {"model_server": "Pi0ModelServer", "harness_version": "0.8.0"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "csv"], "invalid choice: 'csv'"),
        (["--format", "vla-eval", "--out", "{foreign}"], "holds files an export does not write (notes.txt)"),
        (["--format", "vla-eval", "--out", "{file}"], "is a file; give a directory"),
    ],
)
def test_bad_export_arguments_are_one_line(run_dir, tmp_path, capsys, args, message):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    args = [a.format(foreign=foreign, file=tmp_path / "file") for a in args]
    assert main(["export", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == [
        "notes.txt"
    ]
