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
from asyncvla.training.errors import DatasetError


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


FEATURES = {
    "observation.images.image": {"dtype": "image", "shape": [32, 32, 3]},
    "observation.state": {"dtype": "float32", "shape": [8]},
    "action": {"dtype": "float32", "shape": [7]},
}


def _write_lerobot(root, eps, task_index=True, tasks=True):
    """A LeRobot v2.1 dataset of `eps`; without the task_index column or meta/tasks.jsonl on request."""
    import pandas as pd

    (root / "meta").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(
        json.dumps({"codebase_version": "v2.1", "fps": 10, "features": FEATURES})
    )
    if tasks:
        (root / "meta" / "tasks.jsonl").write_text(
            '{"task_index": 0, "task": "pick the can"}\n{"task_index": 1, "task": "open it"}\n'
        )
    for e, ep in enumerate(eps):
        T = len(ep.action)
        order = np.arange(T)[::-1]  # rows out of order: the reader sorts by frame_index
        columns = {
            "observation.images.image": [
                {"bytes": _png(ep.images["agentview"][t]), "path": None} for t in order
            ],
            "observation.state": [ep.state[t] for t in order],
            "action": [ep.action[t] for t in order],
            "episode_index": e,
            "frame_index": order,
        }
        if task_index:
            columns["task_index"] = e
        pd.DataFrame(columns).to_parquet(root / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
    return root


def test_lerobot_layout_with_parquet_images(tmp_path):
    root = tmp_path / "lerobot"
    features = json.loads(json.dumps(FEATURES))  # changed below
    eps = [_episode(0, 4), _episode(1, 3)]
    _write_lerobot(root, eps)
    read, info = read_dataset(root)
    assert info["cameras"] == ["image"] and [r.instruction for r in read] == ["pick the can", "open it"]
    assert np.array_equal(read[0].images["image"], eps[0].images["agentview"])  # PNG is lossless
    assert np.array_equal(read[1].action, eps[1].action) and np.allclose(read[1].state, eps[1].state)
    features["observation.images.image"]["dtype"] = "video"
    (root / "meta" / "info.json").write_text(json.dumps({"fps": 10, "features": features}))
    with pytest.raises(
        ValueError,
        match="stores observation.images.image as video; this reader decodes LeRobot v3 shared videos only",
    ):
        read_dataset(root)


# issue 35: what cannot be trained on is refused, naming the file (and episode, field, step) --------


def test_a_lerobot_dataset_without_tasks_is_refused_not_trained_on_empty_instructions(tmp_path):
    """Item 4: without task_index, or without meta/tasks.jsonl, the episodes have no instruction."""
    eps = [_episode(0, 4), _episode(1, 3)]
    with pytest.raises(
        DatasetError, match="parquet data has no column 'task_index': without it the episodes"
    ):
        read_dataset(_write_lerobot(tmp_path / "no_index", eps, task_index=False))
    with pytest.raises(DatasetError, match="meta has neither tasks.jsonl nor tasks.parquet"):
        read_dataset(_write_lerobot(tmp_path / "no_tasks", eps, tasks=False))


def test_a_nan_in_a_lerobot_episode_is_refused_naming_the_episode_and_field(tmp_path):
    eps = [_episode(0, 4), _episode(1, 3)]
    eps[1].action[2, 5] = np.nan
    with pytest.raises(DatasetError, match=r"episode 1 \(episode_000001.parquet\): action\[2, 5\] is nan"):
        read_dataset(_write_lerobot(tmp_path / "ds", eps))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", r"000001.npz: unreadable or truncated episode file"),
        ("garbage", r"000001.npz: not an episode archive \(an .npz of arrays\)"),
        ("state_size", r"000001.npz: state has 9 values per step, the dataset's state_dim is 8"),
        ("inf_state", r"000001.npz: state\[1, 0\] is inf"),
        ("huge_action", r"000001.npz: action\[0, 0\] is 1000000000.0 .*beyond \+-1e\+06"),
        ("empty_instruction", r"000001.npz: the instruction is empty"),
        ("no_steps", r"000001.npz: the episode has no steps"),
        ("short_images", r"000001.npz: 2 image.agentview frames for 3 actions"),
    ],
)
def test_a_damaged_episode_file_is_refused_naming_it_and_what_is_wrong(tmp_path, damage, message):
    """Item 12 (and item 1 for values): a truncated file, a file of garbage, one episode with a wrong
    state size, a non-finite or absurd value, an empty instruction."""
    eps = [_episode(0, 3), _episode(1, 3)]
    if damage == "state_size":
        eps[1].state = np.zeros((3, 9), np.float32)
    elif damage == "inf_state":
        eps[1].state[1, 0] = np.inf
    elif damage == "huge_action":
        eps[1].action[0, 0] = 1e9
    elif damage == "empty_instruction":
        eps[1].instruction = " "
    elif damage == "no_steps":
        eps[1] = Episode(
            {c: v[:0] for c, v in eps[1].images.items()}, eps[1].state[:0], eps[1].action[:0], "x"
        )
    elif damage == "short_images":
        eps[1].images["agentview"] = eps[1].images["agentview"][:2]
    ds = write_asyncvla_episodes(tmp_path / "ds", eps, fps=10, source="test")
    f = ds / "episodes" / "000001.npz"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "garbage":
        f.write_bytes(b"these are not the arrays you are looking for" * 10)
    with pytest.raises(DatasetError, match=message):
        read_dataset(ds)
