"""LIBERO demonstration readers on small files the tests write in each layout.

The HDF5 files follow LIBERO's `scripts/create_dataset.py` layout; the LeRobot directories follow
the v2.1 layout (meta/info.json, meta/tasks.jsonl, one parquet per episode, PNG bytes in the
parquet) with both community column namings. `test_libero_env.py` checks the HDF5 reader against
the real env's observations.
"""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from envs.libero.dataset import DatasetFormatError, read_hdf5, read_lerobot, write_episodes


def write_libero_hdf5(path, demos: list[dict], instruction: str) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": instruction})
        for i, d in enumerate(demos):
            g = data.create_group(f"demo_{i}")
            g["actions"] = d["actions"]
            obs = g.create_group("obs")
            for key in ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "gripper_states"):
                obs[key] = d[key]


def _demo(rng, t: int, size: int = 8) -> dict:
    ee = rng.normal(size=(t, 6))
    return {
        "actions": rng.uniform(-1, 1, (t, 7)),
        "agentview_rgb": rng.integers(0, 255, (t, size, size, 3), dtype=np.uint8),
        "eye_in_hand_rgb": rng.integers(0, 255, (t, size, size, 3), dtype=np.uint8),
        "ee_pos": ee[:, :3],
        "ee_ori": ee[:, 3:],
        "gripper_states": rng.normal(size=(t, 2)),
    }


def test_hdf5_demos_are_rotated_and_state_is_pos_axis_angle_gripper(tmp_path):
    rng = np.random.default_rng(0)
    raw = [_demo(rng, 5), _demo(rng, 3)]
    path = tmp_path / "pick_up_the_bowl_demo.hdf5"
    write_libero_hdf5(path, raw, "pick up the bowl")
    demos = list(read_hdf5(path))
    assert [len(d.action) for d in demos] == [5, 3]
    d = demos[0]
    assert d.instruction == "pick up the bowl" and d.task == "pick_up_the_bowl"
    np.testing.assert_array_equal(d.images["agentview"][2], raw[0]["agentview_rgb"][2][::-1, ::-1])
    np.testing.assert_array_equal(d.images["wrist"][4], raw[0]["eye_in_hand_rgb"][4][::-1, ::-1])
    np.testing.assert_allclose(
        d.state[1], np.r_[raw[0]["ee_pos"][1], raw[0]["ee_ori"][1], raw[0]["gripper_states"][1]], rtol=1e-6
    )
    np.testing.assert_allclose(d.action, raw[0]["actions"], rtol=1e-6)
    unrotated = next(read_hdf5(path, rotate_180=False))
    np.testing.assert_array_equal(unrotated.images["agentview"], raw[0]["agentview_rgb"])


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_lerobot(root, episodes: list[dict], names: dict[str, str]) -> None:
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 10}))
    tasks = sorted({e["task"] for e in episodes})
    (root / "meta" / "tasks.jsonl").write_text(
        "\n".join(json.dumps({"task_index": i, "task": t}) for i, t in enumerate(tasks)) + "\n"
    )
    for ep, e in enumerate(episodes):
        t = len(e["action"])
        table = {
            names["agentview"]: [{"bytes": _png(im), "path": None} for im in e["agentview"]],
            names["wrist"]: [{"bytes": _png(im), "path": None} for im in e["wrist"]],
            names["state"]: list(e["state"].astype(np.float32)),
            names["action"]: list(e["action"].astype(np.float32)),
            "frame_index": list(range(t))[::-1],  # stored out of order: the reader sorts
            "episode_index": [ep] * t,
            "task_index": [tasks.index(e["task"])] * t,
        }
        for key in ("agentview", "wrist", "state", "action"):
            table[names[key]] = table[names[key]][::-1]
        path = root / "data" / "chunk-000" / f"episode_{ep:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(table), path)


NAMINGS = [
    {
        "agentview": "observation.images.image",
        "wrist": "observation.images.wrist_image",
        "state": "observation.state",
        "action": "action",
    },
    {"agentview": "image", "wrist": "wrist_image", "state": "state", "action": "actions"},
]


@pytest.mark.parametrize("names", NAMINGS, ids=["huggingfacevla", "openpi"])
def test_lerobot_layout_reads_frames_in_order_without_rotation(tmp_path, names):
    rng = np.random.default_rng(1)
    episodes = [
        {
            "agentview": rng.integers(0, 255, (t, 6, 6, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 255, (t, 6, 6, 3), dtype=np.uint8),
            "state": rng.normal(size=(t, 8)),
            "action": rng.uniform(-1, 1, (t, 7)),
            "task": task,
        }
        for t, task in ((4, "open the drawer"), (2, "put the bowl on the plate"))
    ]
    write_lerobot(tmp_path, episodes, names)
    demos = list(read_lerobot(tmp_path))
    assert [d.instruction for d in demos] == ["open the drawer", "put the bowl on the plate"]
    for demo, ep in zip(demos, episodes):
        np.testing.assert_array_equal(demo.images["agentview"], ep["agentview"])  # PNG is lossless
        np.testing.assert_array_equal(demo.images["wrist"], ep["wrist"])
        np.testing.assert_allclose(demo.state, ep["state"], rtol=1e-6)
        np.testing.assert_allclose(demo.action, ep["action"], rtol=1e-6)
    rotated = next(read_lerobot(tmp_path, rotate_180=True))
    np.testing.assert_array_equal(rotated.images["wrist"][0], episodes[0]["wrist"][0][::-1, ::-1])


def test_write_episodes_in_asyncvla_format(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "task_demo.hdf5"
    write_libero_hdf5(path, [_demo(rng, 4), _demo(rng, 6)], "stack the blocks")
    n = write_episodes(read_hdf5(path), tmp_path / "out", source="test")
    assert n == 2
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert info["format"] == "asyncvla-episodes" and info["num_episodes"] == 2
    assert info["cameras"] == ["agentview", "wrist"] and info["state_dim"] == 8
    ep = np.load(tmp_path / "out" / "episodes" / "000001.npz")
    assert ep["image.agentview"].shape == (6, 8, 8, 3) and ep["state"].dtype == np.float32
    assert ep["action"].shape == (6, 7) and str(ep["instruction"]) == "stack the blocks"


def test_wrong_layouts_say_what_is_missing(tmp_path):
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(DatasetFormatError, match="no 'data' group"):
        list(read_hdf5(tmp_path / "x.hdf5"))
    with pytest.raises(DatasetFormatError, match="meta/info.json"):
        list(read_lerobot(tmp_path))


def test_lerobot_v3_layout_with_several_episodes_per_file(tmp_path):
    """v3: meta/tasks.parquet (task text as the index) and whole episodes packed in one file."""
    import pandas as pd

    rng = np.random.default_rng(4)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0"}))
    pd.DataFrame({"task_index": [0, 1]}, index=["open the drawer", "close the drawer"]).to_parquet(
        tmp_path / "meta" / "tasks.parquet"
    )
    rows = []
    for ep, (t, task_index) in enumerate(((3, 1), (2, 0))):
        for f in range(t):
            rows.append(
                {
                    "observation.images.image": {"bytes": _png(np.full((4, 4, 3), 10 * ep + f, np.uint8))},
                    "observation.images.wrist_image": {"bytes": _png(np.zeros((4, 4, 3), np.uint8))},
                    "observation.state": rng.normal(size=8).astype(np.float32),
                    "action": rng.uniform(-1, 1, 7).astype(np.float32),
                    "frame_index": f,
                    "episode_index": ep,
                    "task_index": task_index,
                }
            )
    path = tmp_path / "data" / "chunk-000" / "file-000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    demos = list(read_lerobot(tmp_path))
    assert [d.instruction for d in demos] == ["close the drawer", "open the drawer"]
    assert [len(d.action) for d in demos] == [3, 2]
    assert [int(im[0, 0, 0]) for im in demos[1].images["agentview"]] == [10, 11]


def test_lerobot_v2_video_layout_decodes_each_episode_mp4(tmp_path):
    """v2.1 with cameras as videos: meta/info.json's video_path names one mp4 per episode and camera."""
    import imageio.v3 as iio

    info = {
        "codebase_version": "v2.1",
        "chunks_size": 1000,
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.images.image": {"dtype": "video"},
            "observation.images.wrist_image": {"dtype": "video"},
        },
    }
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps(info))
    (tmp_path / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "open it"}) + "\n")
    t = 6
    grey = np.repeat(np.linspace(20, 220, t).astype(np.uint8), 16 * 16 * 3).reshape(t, 16, 16, 3)
    for key in info["features"]:
        path = tmp_path / "videos" / "chunk-000" / key / "episode_000000.mp4"
        path.parent.mkdir(parents=True)
        iio.imwrite(path, grey, fps=10, codec="libx264")
    table = {
        "observation.state": list(np.zeros((t, 8), np.float32)),
        "action": list(np.ones((t, 7), np.float32)),
        "frame_index": list(range(t)),
        "episode_index": [0] * t,
        "task_index": [0] * t,
    }
    (tmp_path / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(table), tmp_path / "data" / "chunk-000" / "episode_000000.parquet")
    demo = next(read_lerobot(tmp_path))
    assert demo.images["agentview"].shape == (t, 16, 16, 3) and demo.instruction == "open it"
    # h264 is lossy: each frame keeps its grey level to within a few levels
    levels = demo.images["wrist"].reshape(t, -1).mean(axis=1)
    np.testing.assert_allclose(levels, grey.reshape(t, -1).mean(axis=1), atol=4)
