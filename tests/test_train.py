"""Training on the tiny model: Alg. 2 overfits a small dataset, the rater learns to rank errors, resume, CLI errors."""

import csv

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from asyncvla import flow
from asyncvla.backbone import Preprocessor
from asyncvla.checkpoint import load_checkpoint
from asyncvla.training.datasets import ChunkDataset, Episode, read_dataset, write_asyncvla_episodes
from asyncvla.training.train import TrainConfig, collate, main, run


def _deterministic(k: int, T: int = 12) -> Episode:
    """One smooth trajectory per task; the observation (state phase + image colour) determines the chunk."""
    t = np.arange(T)[:, None]
    action = np.sin(0.4 * t + np.arange(7) * 0.5 + 1.5 * k).astype(np.float32)
    state = np.concatenate([np.cos(0.4 * t + k), np.sin(0.4 * t + k), np.zeros((T, 6))], 1).astype(np.float32)
    images = {c: np.full((T, 56, 56, 3), 60 + 100 * k, np.uint8) for c in ("agentview", "wrist")}
    return Episode(images, state, action, ["pick up the red cube", "open the drawer"][k])


def _eval_loss(ckpt, dataset_dir, objective):
    model, tok, stats = load_checkpoint(ckpt)
    ds = ChunkDataset(read_dataset(dataset_dir)[0], model.cfg.chunk_length)
    inputs, actions, pad = collate(
        [ds[i] for i in range(len(ds))], Preprocessor(model.cfg, tok), stats, "cpu"
    )
    g = torch.Generator().manual_seed(123)  # the same noise, masks and times before and after training
    with torch.no_grad():
        return float(
            np.mean([model.compute_loss(inputs, actions, pad, objective, g).item() for _ in range(8)])
        )


@pytest.mark.slow  # 500 training steps: ~20 s on a quiet 2-core machine, 70-100 s when shared
@pytest.mark.parametrize("objective", ["unified", "sfm"])
def test_tiny_model_overfits_small_dataset(tmp_path, objective):
    data = write_asyncvla_episodes(
        tmp_path / "data", [_deterministic(0), _deterministic(1)], fps=10, source="test"
    )
    cfg = dict(
        dataset=str(data), out=str(tmp_path / "ckpt"), batch_size=8, objective=objective, save_every=10**6
    )
    run(TrainConfig(**cfg, steps=1, lr=1e-12, vision_lr=1e-12))  # an untrained checkpoint, same init
    before = _eval_loss(tmp_path / "ckpt", data, objective)
    run(TrainConfig(**cfg, steps=500, lr=3e-3, vision_lr=3e-3, warmup_steps=20, overwrite=True))
    after = _eval_loss(tmp_path / "ckpt", data, objective)
    assert before > 1.0 and after < before / 10, (before, after)
    rows = list(csv.DictReader(open(tmp_path / "ckpt" / "loss_policy.csv")))
    assert len(rows) == 500 and int(rows[-1]["step"]) == 500


def _random_walk(k: int, T: int = 12) -> Episode:
    """Actions are a random walk from the current state: later tokens of a chunk are less predictable."""
    rng = np.random.default_rng(k)
    action = np.cumsum(rng.normal(scale=0.5, size=(T, 7)), axis=0).astype(np.float32)
    state = np.concatenate([np.zeros((1, 7)), action[:-1]], 0)  # the position before each step
    state = np.concatenate([state, np.zeros((T, 1))], 1).astype(np.float32)
    images = {c: np.full((T, 56, 56, 3), 128, np.uint8) for c in ("agentview", "wrist")}
    return Episode(images, state, action, "follow the path")


@pytest.mark.slow  # policy then rater training: ~30 s quiet, ~130 s on the shared machine
def test_rater_learns_to_rank_token_errors(tmp_path):
    data = write_asyncvla_episodes(
        tmp_path / "data", [_random_walk(k) for k in range(8)], fps=10, source="test"
    )
    held_out = [_random_walk(k) for k in range(100, 103)]
    common = dict(dataset=str(data), out=str(tmp_path / "ckpt"), batch_size=16, save_every=10**6)
    run(TrainConfig(**common, steps=300, lr=3e-3, vision_lr=3e-3, warmup_steps=20))
    run(TrainConfig(**common, stage="rater", steps=200, lr=3e-3))
    model, tok, stats = load_checkpoint(tmp_path / "ckpt")
    ds = ChunkDataset(held_out, model.cfg.chunk_length)
    samples = [ds[i] for i in range(len(ds)) if not ds[i].action_pad.any()]
    inputs, actions, _ = collate(samples, Preprocessor(model.cfg, tok), stats, "cpu")
    gens = [torch.Generator().manual_seed(i) for i in range(len(samples))]
    r = model.sample_actions(inputs, gens, mode="asyncvla")
    err = (r.sfm - actions).pow(2).mean(-1)
    # high confidence should go with low error: rank correlation of (1 - p) with the error, per chunk
    rho = [spearmanr(1 - p, e).statistic for p, e in zip(r.confidence.numpy(), err.numpy())]
    assert np.nanmean(rho) > 0.5, np.nanmean(rho)
    q = flow.pseudo_labels(err)
    assert ((r.confidence - q).pow(2).mean() < ((0.5 - q) ** 2).mean()).item()  # better than a constant


def test_resume_continues_the_run(tmp_path):
    data = write_asyncvla_episodes(tmp_path / "data", [_deterministic(0)], fps=10, source="test")
    cfg = dict(dataset=str(data), out=str(tmp_path / "ckpt"), batch_size=4, save_every=2)
    run(TrainConfig(**cfg, steps=4))
    first = torch.load(tmp_path / "ckpt" / "train_state_policy.pt", weights_only=True)
    assert first["step"] == 4
    run(TrainConfig(**cfg, steps=6, resume=True))
    state = torch.load(tmp_path / "ckpt" / "train_state_policy.pt", weights_only=True)
    assert state["step"] == 6
    rows = list(csv.DictReader(open(tmp_path / "ckpt" / "loss_policy.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # the log continues, it is not rewritten


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "neither an asyncvla-episodes directory" in capsys.readouterr().err
    data = write_asyncvla_episodes(tmp_path / "data", [_deterministic(0)], fps=10, source="test")
    assert main([str(data), "--out", str(tmp_path / "o"), "--steps", "0"]) == 2
    assert "--steps 0: must be at least 1" in capsys.readouterr().err
    assert main([str(data), "--out", str(tmp_path / "o"), "--objective", "afm"]) == 2  # one line, no usage
    assert capsys.readouterr().err.splitlines() == [
        "asyncvla-train: error: argument --objective: invalid choice: 'afm' (choose from 'unified', 'sfm') "
        "(see asyncvla-train --help)"
    ]
    assert not (tmp_path / "o").exists()  # nothing was written


@pytest.mark.parametrize(
    "moves, grippers, pauses",
    [
        ([1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]),  # a pause in the middle
        ([0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]),  # at the start
        ([1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]),  # none
        ([1, 1, 0, 0, 1, 1], [1, 1, -1, -1, -1, -1], [0, 0, 0, 1, 0, 0]),  # still, but closing: not a pause
    ],
)
def test_pause_detection(moves, grippers, pauses):
    from asyncvla.training.datasets import pause_steps

    action = np.zeros((len(moves), 7), np.float32)
    action[:, 0] = 0.01 * np.asarray(moves)
    action[:, 6] = grippers
    assert pause_steps(action).astype(int).tolist() == pauses
    assert not pause_steps(action, threshold=0).any()  # 0 disables


def _paused_episode(T: int = 10) -> Episode:
    ep = _deterministic(0, T)
    ep.action[3:6, :6] = 0.0  # the demonstrator waits three steps
    ep.action[3:6, 6] = ep.action[2, 6]
    return ep


def test_paused_and_padded_tokens_carry_no_gradient(tmp_path, monkeypatch):
    """The policy's loss sends no gradient through the velocity of a paused or padded token, and
    perturbing those tokens' targets changes neither the rater's loss nor its labels (they leave the
    chunk's min and max of Eq. 6). (Their noisy actions stay model inputs, as the paper's.)"""
    from asyncvla.training.train import rater_loss

    data = write_asyncvla_episodes(tmp_path / "data", [_paused_episode()], fps=10, source="test")
    run(TrainConfig(dataset=str(data), out=str(tmp_path / "ckpt"), batch_size=4, steps=1))
    model, tok, stats = load_checkpoint(tmp_path / "ckpt")
    ds = ChunkDataset(read_dataset(data)[0], model.cfg.chunk_length)
    samples = [ds[i] for i in (1, 5, 8)]  # chunks over the pause, after it, and past the end
    inputs, actions, ignore = collate(samples, Preprocessor(model.cfg, tok), stats, "cpu")
    assert ignore.any(dim=1).all() and not ignore.all()

    velocities = []
    full_velocity = model.full_velocity

    def keep(*args):
        v = full_velocity(*args)
        v.retain_grad()
        velocities.append(v)
        return v

    monkeypatch.setattr(model, "full_velocity", keep)
    model.compute_loss(inputs, actions, ignore, "sfm", torch.Generator().manual_seed(0)).backward()
    grad = velocities[0].grad.abs().sum(-1)
    assert (grad[ignore] == 0).all() and (grad[~ignore] > 0).all()

    perturbed = actions.clone()
    perturbed[ignore] += 100.0
    same = rater_loss(model, inputs, actions, torch.Generator().manual_seed(0), ignore)
    assert rater_loss(
        model, inputs, perturbed, torch.Generator().manual_seed(0), ignore
    ).item() == pytest.approx(same.item(), rel=1e-6)
    err = torch.rand(2, 8)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[:, 6:] = False
    bumped = err.clone()
    bumped[:, 6:] = 50.0
    assert torch.allclose(flow.pseudo_labels(err, valid)[valid], flow.pseudo_labels(bumped, valid)[valid])


def test_the_checkpoint_records_how_it_was_trained_and_refuses_an_untrained_rater(tmp_path):
    import asyncvla
    from asyncvla.checkpoint import CheckpointError, read_training_record
    from asyncvla.training.datasets import dataset_sha256

    data = write_asyncvla_episodes(tmp_path / "data", [_paused_episode()], fps=10, source="test")
    ckpt = tmp_path / "ckpt"
    run(TrainConfig(dataset=str(data), out=str(ckpt), batch_size=4, steps=3, objective="sfm"))
    record = read_training_record(ckpt)
    policy = record["stages"]["policy"]
    assert record["objective"] == "sfm" and list(record["stages"]) == ["policy"] and policy["steps"] == 3
    assert policy["data_sha256"] == dataset_sha256(data) and record["image_size"] == 56
    assert policy["data_image_size"] == record["data_image_size"] == [56, 56]
    assert policy["pause_fraction"] == pytest.approx(0.3) and policy["pause_threshold"] == 1e-4
    with pytest.raises(CheckpointError, match="its rater was never trained.*--stage rater"):
        asyncvla.load(str(ckpt), mode="asyncvla")
    asyncvla.load(str(ckpt), mode="sfm")  # SFM needs no rater
    # the rater stage on other data (another pause threshold) keeps the policy stage's provenance
    other = write_asyncvla_episodes(
        tmp_path / "other", [_paused_episode(), _paused_episode()], fps=10, source="t2"
    )
    cfg = TrainConfig(
        dataset=str(other), out=str(ckpt), batch_size=4, steps=2, stage="rater", pause_threshold=0
    )
    run(cfg)
    record = read_training_record(ckpt)
    assert record["objective"] == "sfm" and record["stages"]["policy"] == policy
    rater = record["stages"]["rater"]
    assert rater["steps"] == 2 and rater["data_sha256"] == dataset_sha256(other) != policy["data_sha256"]
    assert rater["pause_threshold"] == 0 and rater["pause_fraction"] == 0
    assert "data_sha256" not in record and "pause_threshold" not in record  # only per stage
    asyncvla.load(str(ckpt), mode="asyncvla")
    run(TrainConfig(dataset=str(data), out=str(ckpt), batch_size=4, steps=1, overwrite=True))  # rater stale
    assert list(read_training_record(ckpt)["stages"]) == ["policy"]
