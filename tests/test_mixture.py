"""Dataset mixtures given as a small file: weighted sampling, the data hash, refusals, a training on one."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from asyncvla.training.datasets import (
    ChunkDataset,
    Episode,
    dataset_sha256,
    read_dataset,
    training_sampler,
    write_asyncvla_episodes,
)
from asyncvla.training.errors import DatasetError
from asyncvla.training.mixture import WeightedDistributedSampler
from asyncvla.training.train import TrainConfig, main, run

VIDEO_FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_video"  # lerobot 0.6.1's writer


def _episodes(k: int, n: int, T: int, cameras=("image", "wrist_image"), action_dim=7) -> list[Episode]:
    """`n` episodes of `T` steps whose states say which dataset (k) they come from."""
    out = []
    for i in range(n):
        images = {c: np.full((T, 64, 64, 3), 40 * k + i, np.uint8) for c in cameras}
        state = np.full((T, 8), float(k), np.float32)
        state[:, 1] = np.arange(T)
        action = np.full((T, action_dim), 0.1 * (k + 1), np.float32)
        out.append(Episode(images, state, action, f"task {k}"))
    return out


@pytest.fixture
def two(tmp_path):
    """Dataset a: 1 episode of 10 steps; dataset b: 4 episodes of 20 steps (8x as many)."""
    a = write_asyncvla_episodes(tmp_path / "a", _episodes(0, 1, 10), fps=10, source="a")
    b = write_asyncvla_episodes(tmp_path / "b", _episodes(1, 4, 20), fps=10, source="b")
    return a, b


def _mixture(path: Path, rows) -> Path:
    path.write_text(json.dumps({"datasets": [{"path": str(p), "weight": w} for p, w in rows]}))
    return path


def test_sampling_follows_the_weights_whatever_the_member_sizes(tmp_path, two):
    a, b = two
    episodes, info = read_dataset(_mixture(tmp_path / "mix.json", [(a, 0.8), (b, 0.2)]))
    assert [m["episodes"] for m in info["mixture"]] == [1, 4] and info["cameras"] == ["image", "wrist_image"]
    ds = ChunkDataset(episodes, chunk_length=4)
    sampler = training_sampler(ds, rank=0, world=1, seed=0)
    assert isinstance(sampler, WeightedDistributedSampler) and len(sampler) == len(ds) == 90
    drawn = []
    for epoch in range(50):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    from_a = np.array([ds.episodes[ds.index[i][0]].state[0, 0] == 0 for i in drawn])
    # 4500 draws: the binomial standard deviation of the share is 0.006; uniform draws would give 10/90
    assert abs(from_a.mean() - 0.8) < 0.03, from_a.mean()
    steps_of_a = np.bincount([ds.index[i][1] for i, x in zip(drawn, from_a) if x], minlength=10)
    assert steps_of_a.min() > 0.6 * steps_of_a.mean()  # within a member, every step is drawn alike
    sampler.set_epoch(3)
    again = list(sampler)
    assert again == drawn[3 * 90 : 4 * 90]  # an epoch's draw is the same on a resume
    # two ranks share one draw: rank r takes every world-th index
    ranks = [training_sampler(ds, rank=r, world=2, seed=0) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    assert len(ranks[0]) == len(ranks[1]) == 45
    merged = [x for pair in zip(list(ranks[0]), list(ranks[1])) for x in pair]
    assert merged == again  # 90 draws split 45 / 45, in the order of the one-process draw


def test_a_plain_dataset_keeps_the_plain_shuffled_sampler(two):
    ds = ChunkDataset(read_dataset(two[1])[0], chunk_length=4)
    sampler = training_sampler(ds, rank=0, world=1, seed=0)
    assert type(sampler) is torch.utils.data.DistributedSampler and sorted(sampler) == list(range(80))


def test_the_data_hash_covers_every_member_and_its_weight(tmp_path, two):
    a, b = two
    h = dataset_sha256(_mixture(tmp_path / "m1.json", [(a, 0.7), (b, 0.3)]))
    assert h == dataset_sha256(_mixture(tmp_path / "m2.json", [(a, 7), (b, 3)]))  # the same mixture
    yaml_file = tmp_path / "m3.yaml"
    yaml_file.write_text(f"datasets:\n  - {{path: {a}, weight: 0.7}}\n  - {{path: {b}, weight: 0.3}}\n")
    assert dataset_sha256(yaml_file) == h
    assert dataset_sha256(_mixture(tmp_path / "m4.json", [(a, 0.6), (b, 0.4)])) != h
    assert dataset_sha256(_mixture(tmp_path / "m5.json", [(b, 0.3), (a, 0.7)])) != h  # the order draws
    relative = tmp_path / "m6.json"  # paths are relative to the file
    relative.write_text(
        json.dumps({"datasets": [{"path": "a", "weight": 0.7}, {"path": "b", "weight": 0.3}]})
    )
    assert dataset_sha256(relative) == h
    (b / "episodes" / "000003.npz").write_bytes((b / "episodes" / "000003.npz").read_bytes() + b"\0")
    assert dataset_sha256(tmp_path / "m1.json") != h  # a member's bytes


def _bad(tmp_path, two, case):
    a, b = two
    path = tmp_path / "bad.json"
    if case == "missing":
        _mixture(path, [(a, 1), (tmp_path / "nowhere", 1)])
    elif case in ("zero", "negative", "nan", "text", "bool"):
        weight = {"zero": 0, "negative": -1, "nan": math.nan, "text": "0.5", "bool": True}[case]
        path.write_text(
            json.dumps({"datasets": [{"path": str(a), "weight": 1}, {"path": str(b), "weight": weight}]})
        )
    elif case == "empty":
        path.write_text('{"datasets": []}')
    elif case == "not a list":
        path.write_text('[{"path": "a", "weight": 1}]')
    elif case == "no weight":
        path.write_text(json.dumps({"datasets": [{"path": str(a)}]}))
    elif case == "cameras":
        c = write_asyncvla_episodes(
            tmp_path / "c", _episodes(2, 1, 5, cameras=("image",)), fps=10, source="c"
        )
        _mixture(path, [(a, 1), (c, 1)])
    elif case == "action size":
        c = write_asyncvla_episodes(tmp_path / "c", _episodes(2, 1, 5, action_dim=6), fps=10, source="c")
        _mixture(path, [(a, 1), (c, 1)])
    elif case == "nested":
        _mixture(tmp_path / "inner.json", [(a, 1)])
        _mixture(path, [(a, 1), (tmp_path / "inner.json", 1)])
    elif case == "twice":
        _mixture(path, [(a, 1), (a, 2)])
    elif case == "yaml":
        path = tmp_path / "bad.yaml"
        path.write_text("datasets: [ {path: a, weight: 1\n")
    return path


BAD = {
    "missing": r"datasets\[1\]: .*nowhere does not exist \(paths are relative to the file\)",
    "zero": r"datasets\[1\] \(.*b\) has weight 0; a weight is a positive finite number",
    "negative": "has weight -1; a weight is a positive finite number",
    "nan": "has weight nan; a weight is a positive finite number",
    "text": "has weight '0.5'; a weight is a positive finite number",
    "bool": "has weight True; a weight is a positive finite number",
    "empty": r'expected \{"datasets": \[\{"path": DIR, "weight": W\}',
    "not a list": r'expected \{"datasets"',
    "no weight": r"datasets\[0\] is .*; expected",
    "cameras": r"has cameras \['image'\], .* has \['image', 'wrist_image'\]; the members of a mixture share",
    "action size": "has action size 6, .* has 7; the members of a mixture share",
    "nested": "is a mixture file; list its datasets here instead",
    "twice": "lists a dataset twice",
    "yaml": "not a readable mixture file",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_mixture_files_are_one_line_and_exit_2(tmp_path, two, case, capsys):
    path = _bad(tmp_path, two, case)
    with pytest.raises(DatasetError, match=BAD[case]):
        read_dataset(path)
    out = tmp_path / "ckpt"
    assert main([str(path), "--out", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("asyncvla-train: error: ") and str(path) in err[0], err
    assert not out.exists()  # refused before anything is written


def test_training_on_a_mixture_of_a_lerobot_video_dataset_and_episodes(tmp_path, monkeypatch):
    """The lerobot-written video fixture (3 episodes, 37 steps) and an asyncvla-episodes dataset
    in one training: batches drawn by the weights, the checkpoint records the mixture's hash and
    statistics over both."""
    from asyncvla.checkpoint import load_checkpoint, read_training_record
    from asyncvla.training import train

    samplers = []
    monkeypatch.setattr(
        train, "training_sampler", lambda *a: samplers.append(training_sampler(*a)) or samplers[-1]
    )
    write_asyncvla_episodes(tmp_path / "other", _episodes(5, 2, 8), fps=10, source="other")
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"datasets:\n  - path: {VIDEO_FIXTURE}\n    weight: 3\n  - path: other\n    weight: 1\n")
    run(TrainConfig(dataset=str(mix), out=str(tmp_path / "ckpt"), steps=2, batch_size=4, threads=1))
    assert [type(s) for s in samplers] == [WeightedDistributedSampler]
    record = read_training_record(tmp_path / "ckpt")
    assert record["stages"]["policy"]["data_sha256"] == dataset_sha256(mix) != dataset_sha256(VIDEO_FIXTURE)
    _, _, stats = load_checkpoint(tmp_path / "ckpt")
    episodes, _ = read_dataset(mix)
    assert len(episodes) == 5
    every = np.concatenate([e.state for e in episodes])  # 37 + 16 steps, unweighted
    assert np.allclose(stats.state_mean, every.mean(0), atol=1e-5)


def test_a_resume_with_other_weights_is_refused_and_out_inside_a_member_too(tmp_path, two, capsys):
    a, b = two
    mix = _mixture(tmp_path / "mix.json", [(a, 0.8), (b, 0.2)])
    out = str(tmp_path / "ckpt")
    assert main([str(mix), "--out", out, "--steps", "1", "--batch-size", "4", "--threads", "1"]) == 0
    capsys.readouterr()
    _mixture(mix, [(a, 0.5), (b, 0.5)])
    assert main([str(mix), "--out", out, "--steps", "2", "--batch-size", "4", "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "dataset (sha256 of its files)" in err[0], err
    inside = str(b / "ckpt")
    assert main([str(mix), "--out", inside, "--steps", "1"]) == 2
    assert f"--out {inside} is inside the dataset {b}" in capsys.readouterr().err
    assert not Path(inside).exists()
