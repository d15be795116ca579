"""`--num-workers 2`: two torch DDP worker processes (gloo, CPU) train one model and its loss falls."""

import csv

import numpy as np

from asyncvla.training.datasets import Episode, write_asyncvla_episodes
from asyncvla.training.train import TrainConfig, run


def test_two_worker_ddp_training_loss_falls(tmp_path):
    t = np.arange(12)[:, None]
    eps = [
        Episode(
            {c: np.full((12, 56, 56, 3), 50 + 100 * k, np.uint8) for c in ("agentview", "wrist")},
            np.concatenate([np.cos(0.4 * t + k), np.sin(0.4 * t + k), np.zeros((12, 6))], 1).astype(
                np.float32
            ),
            np.sin(0.4 * t + np.arange(7) * 0.5 + 1.5 * k).astype(np.float32),
            f"task {k}",
        )
        for k in range(2)
    ]
    data = write_asyncvla_episodes(tmp_path / "data", eps, fps=10, source="test")
    run(
        TrainConfig(
            dataset=str(data),
            out=str(tmp_path / "ckpt"),
            steps=60,
            batch_size=4,
            lr=3e-3,
            vision_lr=3e-3,
            num_workers=2,
            objective="sfm",  # m = 1: the lower-variance loss, so 60 steps show the fall clearly
        )
    )
    loss = np.array([float(r["loss"]) for r in csv.DictReader(open(tmp_path / "ckpt" / "loss_policy.csv"))])
    assert len(loss) == 60  # rank 0 logs the all-reduced loss once per step
    assert loss[-10:].mean() < 0.6 * loss[:10].mean(), (loss[:10].mean(), loss[-10:].mean())
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
