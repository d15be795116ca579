"""The shipped demo checkpoint (`--ckpt demo`) and the pieces of scripts/reproduce_tabletop.py.

Runs the real tabletop env and the real shipped checkpoint; a few seconds on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import asyncvla
from asyncvla.training.datasets import dataset_sha256, read_dataset
from evalsuite.cli import main as eval_main
from evalsuite.eval_args import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import reproduce_tabletop as repro  # noqa: E402


def _env():
    from envs.tabletop import make_env

    return make_env(image_size=56, split="eval", settle_steps=5)


def test_ckpt_demo_resolves_loads_and_acts():
    path = resolve_checkpoint("demo")
    assert Path(path) == asyncvla.demo_checkpoint()
    policy = asyncvla.load(path, mode="asyncvla")
    env = _env()
    try:
        obs = env.reset("red_in_bowl", 0, 0)
        chunk = policy.act([obs], ["test/demo@0"])
        assert chunk.shape == (1, policy.chunk_length, 7) and chunk.dtype == np.float32
        assert np.all(np.isfinite(chunk))
        again = policy.act([obs, obs], ["test/demo@0", "other@0"])
        np.testing.assert_allclose(again[0], chunk[0], atol=1e-5)  # noise comes from the key only
        ex = policy.explain(obs, "test/demo@0")
        assert np.all((ex.confidence >= 0) & (ex.confidence <= 1))
        np.testing.assert_array_equal(ex.mask, (ex.confidence < policy.threshold).astype(ex.mask.dtype))
        np.testing.assert_allclose(ex.afm_actions, chunk[0], atol=1e-5)
        for action in chunk[0]:  # the env accepts what the policy emits
            obs, done, success, _ = env.step(action, render=True)
        assert obs.images["agentview"].shape == (56, 56, 3)
    finally:
        env.close()


def test_demo_checkpoint_is_small_and_has_its_manifest():
    path = asyncvla.demo_checkpoint()
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 20 * 2**20
    assert not list(path.glob("*.pt"))  # weights only, no pickled optimizer state
    manifest = json.loads((path / "manifest.json").read_text())
    assert len(manifest["data_sha256"]) == 64
    assert any("--stage rater" in c for c in manifest["train_commands"])
    assert "--objective" not in manifest["train_commands"][0]  # the default: unified
    loss = pd.read_csv(path / "loss_policy.csv")["loss"]
    assert loss.tail(100).mean() < 0.7 * loss.head(20).mean()  # it learned


def test_cli_runs_the_demo_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = ["tabletop", "--ckpt", "demo", "--tasks", "push_green_left", "--episodes-per-task", "1"]
    argv += ["--max-steps", "8", "--workers", "0", "--out", str(out), "--video", "none", "-q"]
    assert eval_main(argv) == 0  # no --set image_size: tabletop renders at the checkpoint's size
    records = [json.loads(line) for f in out.rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(records) == 1 and records[0]["success"] is not None and records[0]["steps"] == 8
    run = json.loads((out / "run.json").read_text())
    size = json.loads((asyncvla.demo_checkpoint() / "config.json").read_text())["model"]["image_size"]
    assert json.dumps(run).count(f'"image_size": {size}') >= 1


def test_render_size_follows_the_checkpoint_only_where_the_suite_allows_it(tmp_path):
    from evalsuite.eval_args import apply_overrides, render_at_model_size
    from evalsuite.suites import get_suite

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(
        json.dumps({"format": "asyncvla-checkpoint", "model": {"image_size": 84}})
    )
    tabletop = get_suite("tabletop")
    assert render_at_model_size(tabletop, str(ckpt)).env_kwargs["image_size"] == 84
    fixed = dataclasses.replace(tabletop, render_at_model_size=False)  # e.g. LIBERO's 256 px protocol
    assert render_at_model_size(fixed, str(ckpt)).env_kwargs["image_size"] == 128
    assert apply_overrides(tabletop, ["image_size=96"]).env_kwargs["image_size"] == 96


def _write_dataset(path: Path, tasks: dict[str, int]) -> None:
    (path / "episodes").mkdir(parents=True)
    index = 0
    for task, n in tasks.items():
        for k in range(n):
            T = 3 + k
            np.savez(
                path / "episodes" / f"{index:06d}.npz",
                **{"image.agentview": np.zeros((T, 8, 8, 3), np.uint8)},
                state=np.full((T, 8), index, np.float32),
                action=np.zeros((T, 7), np.float32),
                instruction=np.array(f"do {task}"),
                task=np.array(task),
            )
            index += 1
    info = {"format": "asyncvla-episodes", "version": 1, "cameras": ["agentview"], "state_dim": 8}
    info |= {"action_dim": 7, "fps": 20, "num_episodes": index, "image_size": 8}
    info["tasks"] = {t: {"episodes": n, "tried": n} for t, n in tasks.items()}
    (path / "info.json").write_text(json.dumps(info))


def test_subset_takes_the_first_demos_of_each_task(tmp_path):
    _write_dataset(tmp_path / "full", {"a": 3, "b": 2})
    sub = repro.make_subset(tmp_path / "full", tmp_path / "sub", per_task=1)
    episodes, info = read_dataset(sub)
    assert info["num_episodes"] == 2
    assert [int(e.state[0, 0]) for e in episodes] == [0, 3]  # episode 0 of task a, episode 0 of task b
    assert repro.data_note(sub) == "2 demos (6 steps), 2 tasks, 8 px"
    assert dataset_sha256(sub) == dataset_sha256(sub) != dataset_sha256(tmp_path / "full")
