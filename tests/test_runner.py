"""The runner's mechanics on the toy simulator (tests/toy_suite.py): parallel == inline,
crash recovery through Ray actor restarts, errors kept apart from failures."""

import dataclasses
import time

import pytest

from evalsuite.evaluate import EvalConfig, evaluate
from evalsuite.policy import PolicySpec
from evalsuite.run.runner_base import RunOptions


def _outcomes(summary):
    return {r.episode_id: (r.success, r.steps) for r in summary.records}


def _config(suite, out, policy="random", workers=2, **options):
    spec = PolicySpec(kind=policy, expert_factory=suite.expert_factory)
    return EvalConfig(
        suites=[suite], policy=spec, out=out, options=RunOptions(workers=workers, video="none", **options)
    )


def test_outcomes_do_not_depend_on_workers_or_batching(toy_suites, tmp_path):
    """The random policy draws from keys (episode id, step), so 0, 1 and 2 workers agree exactly."""
    suite = toy_suites("toy")
    inline = evaluate(_config(suite, tmp_path / "inline", workers=0), show_progress=False)
    parallel = evaluate(_config(suite, tmp_path / "ray", workers=2, max_batch=2), show_progress=False)
    assert len(inline.records) == 12
    assert _outcomes(inline) == _outcomes(parallel)
    successes = sum(r.success for r in inline.records)
    assert 0 < successes < 12  # the random policy neither always wins nor always loses here


def _faulty(suite, tmp_path, faults):
    kwargs = {
        "inner_factory": suite.env_factory,
        "inner_kwargs": suite.env_kwargs,
        "faults": faults,
        "state_dir": str(tmp_path / "faults"),
    }
    return dataclasses.replace(suite, env_factory="envs.faults:make_env", env_kwargs=kwargs)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_crashing_episode_is_retried_and_a_persistent_crash_becomes_an_error(toy_suites, tmp_path, workers):
    suite = _faulty(toy_suites("toy"), tmp_path, {"raise": {"1": 1, "3": -1}})
    summary = evaluate(
        _config(
            suite,
            tmp_path / "run",
            policy="scripted",
            workers=workers,
            retries=2,
        ),
        show_progress=False,
    )
    by_index = {(r.task, r.episode_index): r for r in summary.records}
    retried = by_index[("reach", 1)]
    assert retried.success is True and retried.attempts == 2 and retried.error is None
    broken = by_index[("reach", 3)]
    assert broken.success is None and broken.attempts == 3 and "InjectedCrash" in broken.error
    per_task = summary.tables["per_task"].set_index("task")
    assert per_task.loc["reach", "episodes"] == 5 and per_task.loc["reach", "errors"] == 1
    assert per_task.loc["reach", "success_rate"] == 1.0  # the error is neither a success nor a failure


def test_a_segfaulting_worker_is_restarted_by_ray_and_the_episode_finishes(toy_suites, tmp_path):
    suite = _faulty(toy_suites("toy"), tmp_path, {"segfault": {"2": 1}})
    summary = evaluate(
        _config(
            suite,
            tmp_path / "run",
            policy="scripted",
            workers=2,
            retries=1,
        ),
        show_progress=False,
    )
    record = next(r for r in summary.records if r.task == "reach" and r.episode_index == 2)
    assert record.success is True and record.attempts == 2
    assert all(r.error is None for r in summary.records)


def test_a_hung_episode_times_out_and_is_retried(toy_suites, tmp_path):
    suite = _faulty(toy_suites("toy"), tmp_path, {"hang": {"0": 1}})
    summary = evaluate(
        _config(suite, tmp_path / "run", policy="scripted", workers=1, retries=1, episode_timeout_s=4.0),
        show_progress=False,
    )
    record = next(r for r in summary.records if r.task == "reach" and r.episode_index == 0)
    assert record.success is True and record.attempts == 2


def test_the_modes_of_a_model_draw_from_the_same_keys(toy_suites):
    """Ablation rows (modes) must see the same noise on an episode: the policy's keys leave the mode out."""
    import numpy as np

    from evalsuite.records import EpisodeSpec
    from evalsuite.run.episode import run_episode

    suite = toy_suites("toy")
    seen: dict[str, list[str]] = {}
    for mode in ("asyncvla", "sfm", "random-mask"):
        spec = EpisodeSpec("toy", "reach", 3, 0, "", mode)
        keys = seen.setdefault(mode, [])

        def act(observations, batch_keys, keys=keys):
            keys.extend(batch_keys)
            return np.zeros((1, 2, 7), np.float32)

        env = __import__("toy_suite").make_env()
        run_episode(env, suite, spec, act, replan_steps=None, max_steps=6)
    assert seen["asyncvla"] == seen["sfm"] == seen["random-mask"]
    assert seen["sfm"][0] == "toy/reach/-/ep003/seed0@0"


@pytest.mark.parametrize("replicas", [1, 2])
def test_policy_server_replicas_share_the_workers(toy_suites, tmp_path, monkeypatch, replicas):
    """--policy-servers N starts N batching servers (one GPU each on a cluster); each env worker
    asks one of them, round-robin. A user policy class leaves one file per serving process."""
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("ASYNCVLA_TEST_PID_DIR", str(pids))
    suite = toy_suites("toy")
    spec = PolicySpec(kind="import", factory="user_policy:PidPolicy")
    config = EvalConfig(
        suites=[suite],
        policy=spec,
        out=tmp_path / "run",
        options=RunOptions(workers=2, video="none", policy_servers=replicas, max_wait_ms=50),
    )
    summary = evaluate(config, show_progress=False)
    assert len(summary.records) == 12 and all(r.error is None for r in summary.records)
    assert len(list(pids.iterdir())) == replicas


def test_more_policy_servers_than_workers_is_refused(tmp_path, capsys):
    from evalsuite.cli import main

    argv = ["tabletop", "--policy", "random", "--workers", "2", "--policy-servers", "3"]
    assert main([*argv, "--out", str(tmp_path / "run"), "-q"]) == 2
    assert "--policy-servers 3 exceeds --workers 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_on_a_two_node_ray_cluster(toy_suites, tmp_path, monkeypatch):
    """A head node and a worker node (ray.cluster_utils.Cluster: two raylets on this machine, as
    docs/cluster.md starts them on two machines), one CPU each, so each node hosts one env worker;
    the driver joins with --address and two policy server replicas serve the workers."""
    from ray.cluster_utils import Cluster

    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("ASYNCVLA_TEST_PID_DIR", str(pids))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        config = EvalConfig(
            suites=[toy_suites("toy")],
            policy=PolicySpec(kind="import", factory="user_policy:PidPolicy"),
            out=tmp_path / "run",
            options=RunOptions(workers=2, address=cluster.address, video="none", policy_servers=2),
        )
        summary = evaluate(config, show_progress=False)
    finally:
        cluster.shutdown()
    assert len(summary.records) == 12 and all(r.error is None for r in summary.records)
    assert len(list(pids.iterdir())) == 2


def test_a_run_leaves_no_ray_process_behind(toy_suites, tmp_path):
    """Every process the run's `ray.init()` started ends with the run."""
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    summary = evaluate(_config(toy_suites("toy"), tmp_path / "run", workers=2), show_progress=False)
    assert len(summary.records) == 12

    def started_by_the_run():
        alive = []
        for p in psutil.Process().children(recursive=True):
            try:
                if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.name())
            except psutil.NoSuchProcess:
                pass
        return alive

    deadline = time.time() + 30
    while started_by_the_run() and time.time() < deadline:
        time.sleep(0.2)
    assert started_by_the_run() == []


def test_the_harness_uses_only_rays_public_api():
    """Ray renames its private modules and system-config keys between releases (an unknown
    `_system_config` key makes every local start time out): nothing in the harness reaches for
    `ray._private`, `ray._raylet` or an underscored argument of Ray's."""
    import ast
    from pathlib import Path

    import evalsuite

    found = []
    for path in sorted(Path(evalsuite.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray."):
                names = [node.module, *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("ray.")]
            elif isinstance(node, ast.Attribute) and ast.unparse(node).startswith("ray."):
                names = ast.unparse(node).split(".")
            elif isinstance(node, ast.Call) and ast.unparse(node.func).startswith("ray."):
                names = [k.arg for k in node.keywords if k.arg]
            else:
                continue
            private = [n for part in names for n in part.split(".") if n.startswith("_")]
            if private:
                found.append(f"{path.name}:{node.lineno}: {private}")
    assert found == []
