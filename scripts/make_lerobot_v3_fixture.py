"""Write tests/fixtures/lerobot_v3_video/ with the real lerobot's own writer (LeRobot v3, cameras as video).

Made with lerobot 0.6.1 (PyPI), torch 2.9.1, torchvision 0.24.1, Python 3.12, on x86_64 CPU.
lerobot needs torch < 2.12 and torchvision, which cannot share the project's venv, so it runs
in a venv of its own, outside the repository:

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/venvs/lerobot-fixture
    /work/venvs/lerobot-fixture/bin/pip install torch==2.9.1 torchvision==0.24.1
    /work/venvs/lerobot-fixture/bin/pip install 'lerobot[dataset]==0.6.1'
    HF_HUB_OFFLINE=1 /work/venvs/lerobot-fixture/bin/python scripts/make_lerobot_v3_fixture.py --overwrite

The dataset: 3 episodes (12, 15 and 10 frames at 10 fps) of two 64 x 64 cameras with LIBERO's
keys (`observation.images.image`, `observation.images.wrist_image`), an 8-D state, a 7-D action
and a task per episode, written by `LeRobotDataset.create(use_videos=True)` / `add_frame` /
`save_episode` / `finalize`, so every camera is one shared AV1 file (lerobot's default encoder:
libsvtav1, g=2, crf 30) holding all three episodes one after another. A frame's picture says
which frame it is, coarsely enough to survive the lossy codec: a background colour per episode
and camera, and a white 16 x 16 square at grid cell t (row t // 4, column t % 4).

Next to it, `lerobot_v3_video.source.npz` keeps for each episode and camera the exact frames given
to the writer (`source/<episode>/<key>`) and the frames lerobot's own reader decodes for them
(`lerobot/<episode>/<key>`, `LeRobotDataset(...)[i]` with the pyav backend), so the tests compare
the project's decoder with both. 64 x 64: SVT-AV1 refuses pictures under 64 pixels a side.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "lerobot_v3_video"
CAMERAS = ("observation.images.image", "observation.images.wrist_image")
LENGTHS = (12, 15, 10)
TASKS = ("put the bowl on the plate", "open the top drawer", "turn on the stove")
SIZE = 64
FPS = 10


def frame(episode: int, t: int, camera: int) -> np.ndarray:
    """The picture of frame t: flat colours a lossy codec keeps, one square cell per step."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[...] = (40 + 70 * episode, 200 - 70 * episode, 60 + 120 * camera)
    r, c = divmod(t, 4)
    img[16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = 255
    return img


def state(episode: int, t: int) -> np.ndarray:
    return np.array([episode, t, 0.1 * t, -0.1 * t, 0.0, 0.5, 0.02, -0.02], np.float32)


def action(episode: int, t: int) -> np.ndarray:
    return np.array(
        [0.01 * (t + 1), -0.01 * episode, 0.005, 0.0, 0.0, 0.1, 1.0 if t % 6 < 3 else -1.0], np.float32
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--overwrite", action="store_true", help="replace an existing fixture")
    args = p.parse_args()

    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out: Path = args.out
    source = out.with_name(out.name + ".source.npz")
    if out.exists():
        if not args.overwrite:
            raise SystemExit(f"{out} exists; --overwrite replaces it")
        shutil.rmtree(out)
    features = {
        key: {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
        for key in CAMERAS
    }
    features["observation.state"] = {"dtype": "float32", "shape": (8,), "names": [f"s{i}" for i in range(8)]}
    features["action"] = {"dtype": "float32", "shape": (7,), "names": [f"a{i}" for i in range(7)]}
    ds = LeRobotDataset.create(
        repo_id="asyncvla/lerobot_v3_video_fixture",
        fps=FPS,
        features=features,
        root=out,
        robot_type="panda",
        use_videos=True,
    )
    arrays = {}
    for e, T in enumerate(LENGTHS):
        for t in range(T):
            row = {key: frame(e, t, c) for c, key in enumerate(CAMERAS)}
            row |= {"observation.state": state(e, t), "action": action(e, t), "task": TASKS[e]}
            ds.add_frame(row)
        ds.save_episode(parallel_encoding=False)
        for c, key in enumerate(CAMERAS):
            arrays[f"source/{e}/{key}"] = np.stack([frame(e, t, c) for t in range(T)])
    ds.finalize()

    # what lerobot's own reader decodes for every frame: the reference the project's decoder meets
    read = LeRobotDataset("asyncvla/lerobot_v3_video_fixture", root=out, video_backend="pyav")
    start = 0
    for e, T in enumerate(LENGTHS):
        for key in CAMERAS:
            frames = [read[start + t][key] for t in range(T)]  # (3, H, W) float in [0, 1]
            arrays[f"lerobot/{e}/{key}"] = np.stack(
                [(f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in frames]
            )
        start += T
    np.savez_compressed(source, lerobot_version=np.array(lerobot.__version__), **arrays)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size} bytes) and {source} with lerobot {lerobot.__version__}")


if __name__ == "__main__":
    main()
