"""Read LIBERO demonstrations so that training sees what `LiberoEnv` shows at evaluation.

Two layouts:
  - the original LIBERO HDF5 files (robomimic layout): `data/demo_<i>/actions` (T, 7),
    `data/demo_<i>/obs/{agentview_rgb, eye_in_hand_rgb}` (T, H, W, 3) as robosuite rendered them
    (upside down), `obs/{ee_pos, ee_ori, gripper_states}` with `ee_ori` written by robosuite's
    `quat2axisangle`, and the instruction in `data.attrs["problem_info"]`. Images are rotated
    180 degrees here, as the env does.
  - the LeRobot dataset layout the community converted LIBERO to (v2.x: one parquet per episode;
    v3: several episodes per parquet): `meta/info.json`, `meta/tasks.jsonl` or `meta/tasks.parquet`,
    `data/**/*.parquet` with images stored in the parquet as encoded PNG/JPEG. Those conversions
    (openpi's `physical-intelligence/libero`, `HuggingFaceVLA/libero`) were made from data that is
    already rotated, so no rotation by default; both its column namings are recognised. v2.x
    datasets whose cameras are stored as one mp4 per episode are read too; v3's shared videos not.
In both the state is the env's 8-D state (eef pos, axis-angle, gripper qpos) and actions keep
LIBERO's gripper convention (-1 open, +1 close). `write_episodes` stores demos in the project's
"asyncvla-episodes" v1 format (docs/CONTRACTS.md).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CAMERAS = ("agentview", "wrist")  # the names LiberoEnv uses in Observation.images
HDF5_IMAGES = {"agentview": "agentview_rgb", "wrist": "eye_in_hand_rgb"}
# LeRobot column names: HuggingFaceVLA/libero style, then openpi's physical-intelligence/libero style
LEROBOT_IMAGES = (
    {"agentview": "observation.images.image", "wrist": "observation.images.wrist_image"},
    {"agentview": "image", "wrist": "wrist_image"},
)
LEROBOT_STATE = ("observation.state", "state")
LEROBOT_ACTION = ("action", "actions")


class DatasetFormatError(ValueError):
    """A file that is not in the layout it was read as; the message names what is missing."""


@dataclass
class Demo:
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8, oriented as the env's observations
    state: np.ndarray  # (T, 8) float32
    action: np.ndarray  # (T, 7) float32
    instruction: str
    task: str

    def __post_init__(self) -> None:
        t = len(self.action)
        if self.action.shape != (t, 7) or self.state.shape != (t, 8):
            raise DatasetFormatError(
                f"demo {self.task!r}: action {self.action.shape} and state {self.state.shape} must be (T, 7) and (T, 8)"
            )
        for cam, frames in self.images.items():
            if frames.shape[0] != t or frames.ndim != 4 or frames.dtype != np.uint8:
                raise DatasetFormatError(
                    f"demo {self.task!r}: camera {cam} has {frames.shape} {frames.dtype}, expected ({t}, H, W, 3) uint8"
                )


def _rotate(frames: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frames[:, ::-1, ::-1])


def read_hdf5(path: str | Path, rotate_180: bool = True) -> Iterator[Demo]:
    """Demos of one original LIBERO HDF5 file, in demo order."""
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise DatasetFormatError(f"{path}: no 'data' group; not a LIBERO/robomimic HDF5 file")
        data = f["data"]
        info = json.loads(data.attrs.get("problem_info", "{}"))
        instruction = info.get("language_instruction", "")
        if isinstance(instruction, list):
            instruction = " ".join(instruction)
        task = path.name.removesuffix(".hdf5").removesuffix("_demo")
        names = sorted(data, key=lambda n: int(n.split("_")[-1]))
        for name in names:
            demo = data[name]
            obs = demo["obs"]
            missing = [
                k for k in (*HDF5_IMAGES.values(), "ee_pos", "ee_ori", "gripper_states") if k not in obs
            ]
            if missing or "actions" not in demo:
                raise DatasetFormatError(f"{path}:{name} lacks {missing or ['actions']}")
            images = {cam: np.asarray(obs[key], dtype=np.uint8) for cam, key in HDF5_IMAGES.items()}
            if rotate_180:
                images = {cam: _rotate(v) for cam, v in images.items()}
            state = np.concatenate([obs["ee_pos"][()], obs["ee_ori"][()], obs["gripper_states"][()]], axis=1)
            yield Demo(
                images, state.astype(np.float32), demo["actions"][()].astype(np.float32), instruction, task
            )


def _pick(columns, options: tuple[str, ...], what: str, root: Path) -> str:
    for name in options:
        if name in columns:
            return name
    raise DatasetFormatError(
        f"{root}: no {what} column (looked for {', '.join(options)}); columns: {sorted(columns)}"
    )


def _decode(cell) -> np.ndarray:
    from PIL import Image

    raw = cell["bytes"] if isinstance(cell, dict) else cell
    if raw is None:
        raise DatasetFormatError(
            "image cell without bytes: video-encoded LeRobot datasets are not read here; "
            "convert with images stored in the parquet files"
        )
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.uint8)


def _tasks(root: Path) -> dict[int, str]:
    if (root / "meta" / "tasks.jsonl").is_file():
        lines = (root / "meta" / "tasks.jsonl").read_text().splitlines()
        return {int(d["task_index"]): d["task"] for d in map(json.loads, filter(None, lines))}
    if (root / "meta" / "tasks.parquet").is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(root / "meta" / "tasks.parquet").to_pandas()
        if "task" not in table.columns:  # v3 keeps the task text as the index
            table = table.reset_index().rename(columns={"index": "task", "__index_level_0__": "task"})
        return dict(zip(table["task_index"].astype(int), table["task"]))
    raise DatasetFormatError(f"{root}: no meta/tasks.jsonl or meta/tasks.parquet; not a LeRobot dataset")


def _video_frames(root: Path, info: dict, key: str, episode: int) -> np.ndarray:
    """All frames of one episode's camera video (LeRobot v2.x: one mp4 per episode and camera)."""
    import imageio.v3 as iio

    template = info.get("video_path")
    if not template or "{episode_index" not in template:
        raise DatasetFormatError(
            f"{root}: images of {key!r} are videos without a per-episode video_path in meta/info.json "
            "(LeRobot v3 packs episodes into shared videos, not read here); use a v2.x or image-in-parquet copy"
        )
    chunk = episode // int(info.get("chunks_size", 1000))
    path = root / template.format(episode_chunk=chunk, video_key=key, episode_index=episode)
    if not path.is_file():
        raise DatasetFormatError(f"{path} is missing (video of {key!r}, episode {episode})")
    return np.asarray(iio.imread(path), dtype=np.uint8)  # bundled ffmpeg has h264 and AV1 (dav1d) decoders


def read_lerobot(root: str | Path, rotate_180: bool = False) -> Iterator[Demo]:
    """Demos of a LeRobot-format LIBERO dataset directory, file by file (v2.x: one episode per
    file; v3: whole episodes per file), so a full dataset never sits in memory at once. Camera
    images are read from the parquet (encoded PNG/JPEG) or, for v2.x video datasets, from the
    episode's mp4 (lossy: what a model trained on that copy saw)."""
    import pyarrow.parquet as pq

    root = Path(root)
    files = sorted((root / "data").glob("**/*.parquet"))
    if not (root / "meta" / "info.json").is_file() or not files:
        raise DatasetFormatError(f"{root}: expected meta/info.json and data/**/*.parquet (LeRobot layout)")
    info = json.loads((root / "meta" / "info.json").read_text())
    features = info.get("features", {})
    tasks = _tasks(root)
    for file in files:
        frames = pq.read_table(file).to_pandas()
        available = set(frames.columns) | {k for k, f in features.items() if f.get("dtype") == "video"}
        cams = next((m for m in LEROBOT_IMAGES if set(m.values()) <= available), None)
        if cams is None:
            options = " or ".join(str(sorted(m.values())) for m in LEROBOT_IMAGES)
            raise DatasetFormatError(
                f"{file}: image columns {options} not found; columns: {sorted(frames.columns)}"
            )
        state_key = _pick(frames.columns, LEROBOT_STATE, "state", file)
        action_key = _pick(frames.columns, LEROBOT_ACTION, "action", file)
        ordered = frames.sort_values(["episode_index", "frame_index"])
        for episode, group in ordered.groupby("episode_index", sort=True):
            images = {}
            for cam, key in cams.items():
                if key in group.columns:
                    images[cam] = np.stack([_decode(c) for c in group[key]])
                else:
                    images[cam] = _video_frames(root, info, key, int(episode))[: len(group)]
            if rotate_180:
                images = {cam: _rotate(v) for cam, v in images.items()}
            instruction = tasks.get(int(group["task_index"].iloc[0]), "")
            yield Demo(
                images,
                np.stack(group[state_key].to_numpy()).astype(np.float32),
                np.stack(group[action_key].to_numpy()).astype(np.float32),
                instruction,
                instruction.replace(" ", "_"),
            )


def write_episodes(demos: Iterator[Demo], out: str | Path, source: str, fps: int = 20) -> int:
    """Write demos as "asyncvla-episodes" v1; returns the number of episodes."""
    out = Path(out)
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    n = 0
    for n, demo in enumerate(demos, start=1):
        arrays = {f"image.{cam}": demo.images[cam] for cam in CAMERAS}
        np.savez(
            out / "episodes" / f"{n - 1:06d}.npz",
            **arrays,
            state=demo.state,
            action=demo.action,
            instruction=np.array(demo.instruction),
            task=np.array(demo.task),
        )
    info = {
        "format": "asyncvla-episodes",
        "version": 1,
        "cameras": list(CAMERAS),
        "state_dim": 8,
        "action_dim": 7,
        "fps": fps,  # LIBERO's control frequency
        "num_episodes": n,
        "source": source,
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return n
