"""Dataset readers: asyncvla-episodes v1 (docs/CONTRACTS.md) and the LeRobot layout, chunking, statistics.

The LeRobot dataset is written here in LeRobot's v2.1 on-disk layout (meta/info.json,
meta/tasks.jsonl, data/chunk-000/episode_*.parquet with PNG image structs), since no
LeRobot dataset can be downloaded in tests.
"""

import io
import json

import numpy as np
import pytest

from asyncvla.training.datasets import ChunkDataset, Episode, read_dataset, write_asyncvla_episodes


def _episode(k, T):
    rng = np.random.default_rng(k)
    images = {c: rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8) for c in ("agentview", "wrist")}
    state = rng.normal(size=(T, 8)).astype(np.float32)
    action = (np.arange(T)[:, None] + 100 * k + np.zeros((1, 7))).astype(np.float32)
    return Episode(images, state, action, f"task {k}")


def test_asyncvla_episodes_round_trip_and_chunk_padding(tmp_path):
    eps = [_episode(0, 5), _episode(1, 11)]
    write_asyncvla_episodes(tmp_path / "ds", eps, fps=10, source="test")
    info = json.loads((tmp_path / "ds" / "info.json").read_text())
    assert info["num_episodes"] == 2 and info["cameras"] == ["agentview", "wrist"] and info["action_dim"] == 7
    read, _ = read_dataset(tmp_path / "ds")
    assert read[1].instruction == "task 1"
    assert np.array_equal(read[1].images["wrist"], eps[1].images["wrist"])
    ds = ChunkDataset(read, chunk_length=4)
    assert len(ds) == 16
    s = ds[3]  # episode 0, step 3 of 5: two real actions, then the last one repeated
    assert s.actions[:, 0].tolist() == [3, 4, 4, 4]
    assert s.action_pad.tolist() == [False, False, True, True]
    assert np.array_equal(s.images["agentview"], eps[0].images["agentview"][3])
    s = ds[5]  # episode 1, step 0: no padding
    assert s.actions[:, 0].tolist() == [100, 101, 102, 103] and not s.action_pad.any()
    stats = ds.norm_stats()
    all_actions = np.concatenate([e.action for e in eps])
    assert np.allclose(stats.action_mean, all_actions.mean(0)) and np.allclose(
        stats.action_std, all_actions.std(0)
    )
    assert np.allclose(stats.normalize_action(all_actions).mean(0), 0, atol=1e-5)


def test_bad_episode_directories_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an asyncvla-episodes directory"):
        read_dataset(tmp_path)
    write_asyncvla_episodes(tmp_path / "ds", [_episode(0, 3)], fps=10, source="test")
    np.savez(tmp_path / "ds" / "episodes" / "000000.npz", state=np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"000000.npz: missing arrays \['image.agentview'"):
        read_dataset(tmp_path / "ds")


def _png(img):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_lerobot_layout_with_parquet_images(tmp_path):
    import pandas as pd

    root = tmp_path / "lerobot"
    (root / "meta").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    features = {
        "observation.images.image": {"dtype": "image", "shape": [32, 32, 3]},
        "observation.state": {"dtype": "float32", "shape": [8]},
        "action": {"dtype": "float32", "shape": [7]},
    }
    (root / "meta" / "info.json").write_text(
        json.dumps({"codebase_version": "v2.1", "fps": 10, "features": features})
    )
    (root / "meta" / "tasks.jsonl").write_text(
        '{"task_index": 0, "task": "pick the can"}\n{"task_index": 1, "task": "open it"}\n'
    )
    eps = [_episode(0, 4), _episode(1, 3)]
    for e, ep in enumerate(eps):
        T = len(ep.action)
        order = np.arange(T)[::-1]  # rows out of order: the reader sorts by frame_index
        pd.DataFrame(
            {
                "observation.images.image": [
                    {"bytes": _png(ep.images["agentview"][t]), "path": None} for t in order
                ],
                "observation.state": [ep.state[t] for t in order],
                "action": [ep.action[t] for t in order],
                "episode_index": e,
                "frame_index": order,
                "task_index": e,
            }
        ).to_parquet(root / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
    read, info = read_dataset(root)
    assert info["cameras"] == ["image"] and [r.instruction for r in read] == ["pick the can", "open it"]
    assert np.array_equal(read[0].images["image"], eps[0].images["agentview"])  # PNG is lossless
    assert np.array_equal(read[1].action, eps[1].action) and np.allclose(read[1].state, eps[1].state)
    features["observation.images.image"]["dtype"] = "video"
    (root / "meta" / "info.json").write_text(json.dumps({"fps": 10, "features": features}))
    with pytest.raises(ValueError, match="stored as video"):
        read_dataset(root)
