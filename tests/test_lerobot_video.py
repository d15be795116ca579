"""LeRobot v3 datasets whose cameras are shared videos, read a frame at a time.

The fixture tests/fixtures/lerobot_v3_video/ was written by lerobot 0.6.1's own writer
(`LeRobotDataset.create(use_videos=True)`, `add_frame`, `save_episode`, `finalize`) through
scripts/make_lerobot_v3_fixture.py, in a venv of its own, not by hand: 3 episodes (12, 15, 10
frames) of two 64 x 64 cameras, each camera one AV1 file holding all three episodes (lerobot's
default encoder, g=2, crf 30). Beside it, lerobot_v3_video.source.npz keeps the frames given to
the writer and the frames lerobot's own reader decodes for them.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from asyncvla.training import lerobot_video
from asyncvla.training.datasets import ChunkDataset, read_dataset
from asyncvla.training.errors import DatasetError

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_video"
SOURCE = FIXTURE.with_name(FIXTURE.name + ".source.npz")
KEYS = {"image": "observation.images.image", "wrist_image": "observation.images.wrist_image"}
LENGTHS = (12, 15, 10)
# AV1 at crf 30 on flat 16 px blocks: measured max 14, mean <= 1.7 per value against the source
# frames; a 3x margin on the mean still tells apart frames that differ by one 16 x 16 white cell
# (mean difference 255 * 256 / 4096 * 3 channels / 3 = 16)
LOSSY_MEAN = 5.0


@pytest.fixture
def source():
    with np.load(SOURCE) as z:
        return {k: z[k] for k in z.files}


def test_the_fixture_was_written_by_lerobot_as_shared_v3_videos(source):
    info = json.loads((FIXTURE / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and str(source["lerobot_version"]) == "0.6.1"
    assert all(info["features"][k]["dtype"] == "video" for k in KEYS.values())
    assert sorted(p.name for p in (FIXTURE / "videos").rglob("*.mp4")) == ["file-000.mp4"] * 2
    assert sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file()) < 200_000


def test_decoded_frames_equal_lerobots_own_decoding_and_match_the_source(source):
    episodes, info = read_dataset(FIXTURE)
    assert info["cameras"] == ["image", "wrist_image"] and [len(e.action) for e in episodes] == list(LENGTHS)
    for e, ep in enumerate(episodes):
        for cam, key in KEYS.items():
            ours = np.stack([ep.images[cam][t] for t in range(len(ep.action))])
            src, theirs = source[f"source/{e}/{key}"], source[f"lerobot/{e}/{key}"]
            assert ours.shape == src.shape == (LENGTHS[e], 64, 64, 3) and ours.dtype == np.uint8
            # the same frames lerobot's reader returns (both decode with ffmpeg's dav1d to rgb24; 2 levels
            # leave room for another PyAV's colour conversion rounding)
            assert np.abs(ours.astype(int) - theirs).max() <= 2, (e, cam)
            assert np.abs(ours.astype(int) - src).mean() < LOSSY_MEAN, (e, cam)
    assert np.array_equal(np.asarray(ep.images[cam]), ours)  # a whole episode, for conversions


def test_each_frame_is_the_one_at_its_episodes_offset_in_the_shared_file(source):
    """Episode 1 starts 1.2 s into each file: its frame t is the file's frame 12 + t, nearest to
    its own source frame among all 37 of the file (without the offset it would be episode 0's)."""
    episodes, _ = read_dataset(FIXTURE)
    frames = episodes[1].images["image"]
    assert frames.path == episodes[0].images["image"].path  # one file for all episodes
    assert frames.times[0] == pytest.approx(1.2) and frames.times[-1] == pytest.approx(2.6)
    every = np.concatenate([source[f"source/{e}/{KEYS['image']}"] for e in range(3)]).astype(int)
    for t in (0, 5, 14):
        distance = np.abs(every - frames[t]).mean(axis=(1, 2, 3))
        assert distance.argmin() == 12 + t, (t, distance.argmin())
    # frame 0 of episode 1 vs frame 0 of episode 0: different pictures, each decoded from its place
    assert np.abs(frames[0].astype(int) - episodes[0].images["image"][0]).mean() > 20


def test_only_the_frames_a_sample_needs_are_decoded():
    lerobot_video.DECODERS.clear()
    before = lerobot_video.DecodeCounter(**vars(lerobot_video.COUNTER))
    episodes, _ = read_dataset(FIXTURE)
    read = lerobot_video.COUNTER.frames - before.frames
    assert read == 2 and lerobot_video.COUNTER.requests == before.requests  # one frame a file, checked
    ds = ChunkDataset(episodes, chunk_length=4)
    assert lerobot_video.COUNTER.frames - before.frames == 2  # chunking decodes nothing
    mark = lerobot_video.DecodeCounter(**vars(lerobot_video.COUNTER))
    sample = ds[12 + 7]  # episode 1, step 7: file time 1.9 s
    assert lerobot_video.COUNTER.requests - mark.requests == 2  # one frame per camera
    # at most a group of pictures (g=2) per camera, of the 74 frames in the two files
    assert lerobot_video.COUNTER.frames - mark.frames <= 4
    assert sample.images["image"].shape == (64, 64, 3) and sample.instruction == "open the top drawer"
    assert sample.state.tolist()[:2] == [1.0, 7.0]  # the writer's state: (episode, step, ...)
    assert sample.actions[:, 0].tolist() == pytest.approx([0.08, 0.09, 0.10, 0.11])


def _copy(tmp_path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(FIXTURE, root)
    return root


def test_a_missing_video_is_refused_naming_the_file(tmp_path):
    root = _copy(tmp_path)
    video = root / "videos" / KEYS["wrist_image"] / "chunk-000" / "file-000.mp4"
    video.unlink()
    with pytest.raises(DatasetError, match=rf"{video}: video file of {KEYS['wrist_image']} missing"):
        read_dataset(root)


def test_an_episode_beyond_the_end_of_its_video_is_refused(tmp_path):
    root = _copy(tmp_path)
    meta = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pd.read_parquet(meta)
    table.loc[2, f"videos/{KEYS['image']}/from_timestamp"] += 0.5
    table.to_parquet(meta)
    with pytest.raises(DatasetError, match=r"up to 4.1000 s but the video ends at 3.6000 s"):
        read_dataset(root)
    # a frame asked for between two frames, or past the end, is refused when decoded
    path = str(root / "videos" / KEYS["image"] / "chunk-000" / "file-000.mp4")
    with pytest.raises(
        DatasetError, match=r"no frame within 0.0001 s of 0.0500 s \(nearest decoded frame at 0"
    ):
        lerobot_video.decode_frame(path, 0.05)
    with pytest.raises(DatasetError, match=r"of 3.9000 s .*the video ends at 3.6000 s"):
        lerobot_video.decode_frame(path, 3.9)


def test_an_undecodable_video_is_refused(tmp_path):
    root = _copy(tmp_path)
    video = root / "videos" / KEYS["image"] / "chunk-000" / "file-000.mp4"
    video.write_bytes(b"not a video" * 100)
    with pytest.raises(DatasetError, match=rf"{video}: not a readable video .*re-download or re-encode"):
        read_dataset(root)


def test_v2_per_episode_videos_are_refused_with_the_conversion(tmp_path):
    root = _copy(tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["codebase_version"] = "v2.1"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="v3 shared videos only.*convert_dataset_v21_to_v30"):
        read_dataset(root)


def test_asyncvla_train_runs_on_the_video_fixture(tmp_path):
    """The command as a user runs it: a few steps of the tiny model on the lerobot-written dataset;
    the checkpoint records the data's hash and its 64 px frames."""
    from asyncvla.checkpoint import read_training_record
    from asyncvla.training.datasets import dataset_sha256

    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "asyncvla.training.train", str(FIXTURE), "--out", str(out)]
    cmd += ["--steps", "3", "--batch-size", "4", "--threads", "1", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = read_training_record(out)
    policy = record["stages"]["policy"]
    assert policy["steps"] == 3 and policy["data_sha256"] == dataset_sha256(FIXTURE)
    assert policy["data_image_size"] == [64, 64]
    rows = (out / "loss_policy.csv").read_text().splitlines()
    assert len(rows) == 4 and all(np.isfinite(float(r.split(",")[2])) for r in rows[1:])


def test_dataloader_workers_decode_the_same_frames_with_their_own_decoders():
    """Frames decoded in two DataLoader worker processes (forked after the main process opened
    the files) equal those decoded in the main process."""
    import torch

    episodes, _ = read_dataset(FIXTURE)
    ds = ChunkDataset(episodes, chunk_length=4)
    picks = [0, 13, 20, 36]
    here = [ds[i].images["wrist_image"] for i in picks]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, picks), batch_size=1, num_workers=2, collate_fn=list, timeout=60
    )
    there = [batch[0].images["wrist_image"] for batch in loader]
    assert all(np.array_equal(x, y) for x, y in zip(here, there))


def test_a_frame_missing_from_its_video_stops_the_training_in_one_line(tmp_path, capsys):
    """A timestamp between two frames passes the read (the file is long enough) and is refused
    when a sample asks for it: asyncvla-train stops with exit 2 naming the file and the time."""
    from asyncvla.training.train import main

    root = _copy(tmp_path)
    data = root / "data" / "chunk-000" / "file-000.parquet"
    table = pd.read_parquet(data)
    table.loc[12 + 5, "timestamp"] = np.float32(0.55)  # episode 1, frame 5: file time 1.75 s
    table.to_parquet(data)
    episodes, _ = read_dataset(root)
    with pytest.raises(DatasetError, match=r"file-000.mp4: no frame within 0.0001 s of 1.7500 s"):
        ChunkDataset(episodes, chunk_length=4)[12 + 5]
    out = tmp_path / "ckpt"
    argv = [str(root), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--threads", "1"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("policy:")]
    assert len(err) == 1 and err[0].startswith("asyncvla-train: error: "), err
    assert "file-000.mp4: no frame within 0.0001 s of 1.7500 s" in err[0]


def test_frames_of_another_size_than_info_json_says_are_refused(tmp_path):
    root = _copy(tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"][KEYS["image"]]["shape"] = [32, 32, 3]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(
        DatasetError, match=r"frames are \(64, 64, 3\), meta/info.json gives .* \(32, 32, 3\)"
    ):
        read_dataset(root)
