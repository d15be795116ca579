"""Training data: episodes from disk -> (observation, action chunk of L, pad mask) samples.

Two readers produce the same `Episode` record:
- `read_asyncvla_episodes(dir)`: the project's own "asyncvla-episodes" v1 format
  (docs/CONTRACTS.md), written by the tabletop recorder and the LIBERO converter;
- `read_lerobot(dir)`: the LeRobot dataset layout (meta/info.json + parquet under data/;
  image features stored in parquet as PNG/JPEG bytes, or v3 video features in shared mp4 files,
  decoded a frame at a time when a sample asks for it: lerobot_video.py).
A mixture file lists datasets with weights (mixture.py); `read_dataset` reads it as one.
A chunk that runs past the episode's end is padded by repeating the last action and marked
in `action_pad`; steps where the demonstrator paused are marked in `action_pause` (paper Sec. 4.1:
pause intervals are excluded from the loss). Neither enters the policy's loss nor the rater's labels.

A pause is a step whose action does not move the arm (the norm of everything but the gripper below
`pause_threshold`) and keeps the previous step's gripper command: the no-op rule OpenVLA applied
to regenerate LIBERO (threshold 1e-4). It reads the actions, which for every suite here are
end-effector deltas; for absolute actions set the threshold to 0 (nothing is a pause).

Both readers refuse, naming the file (and episode, field and step), what cannot be trained on: an
unreadable or truncated file, a missing array, arrays of different lengths or of the wrong size,
a NaN, an infinity or a value beyond +-MAX_ABS in a state or action, an empty instruction
(`check_episode`).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asyncvla.normalize import NormStats
from asyncvla.training import lerobot_video, mixture
from asyncvla.training.errors import DatasetError
from asyncvla.training.lerobot_video import TOLERANCE_S, VideoFrames

log = logging.getLogger(__name__)


@dataclass
class Episode:
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8, or VideoFrames decoding on demand
    state: np.ndarray  # (T, S) float32
    action: np.ndarray  # (T, A) float32
    instruction: str
    sampling_weight: float = 1.0  # relative chance of each of its steps being drawn (mixture.py)


@dataclass
class Sample:
    images: dict[str, np.ndarray]  # camera -> (H, W, 3) uint8
    state: np.ndarray  # (S,)
    instruction: str
    actions: np.ndarray  # (L, A), the chunk starting at this step
    action_pad: np.ndarray  # (L,) bool, True where the chunk ran past the episode's end
    action_pause: np.ndarray  # (L,) bool, True where the demonstrator paused (module docstring)

    @property
    def ignore(self) -> np.ndarray:
        """Action tokens that carry no label: padding and pauses."""
        return self.action_pad | self.action_pause


PAUSE_THRESHOLD = 1e-4  # OpenVLA's LIBERO no-op threshold
# a state or action value beyond this is a recording or units error (robot states and actions are
# metres, radians and gripper commands); it would also overflow the float32 statistics
MAX_ABS = 1e6


def check_episode(
    name: str, ep: Episode, cameras: list[str], state_dim: int | None, action_dim: int | None
) -> None:
    """Refuse an episode that cannot be trained on, naming it (`name`: its file, and episode index
    where a file holds several), the field and, for a bad value, the step and dimension."""
    T = len(ep.action)
    if T == 0:
        raise DatasetError(f"{name}: the episode has no steps")
    for field, array, size, what in (
        ("state", ep.state, state_dim, "state_dim"),
        ("action", ep.action, action_dim, "action_dim"),
    ):
        if array.ndim != 2:
            raise DatasetError(f"{name}: {field} has shape {array.shape}, expected (steps, {what})")
        if size is not None and array.shape[1] != size:
            raise DatasetError(
                f"{name}: {field} has {array.shape[1]} values per step, the dataset's {what} is {size}"
            )
        bad = ~np.isfinite(array) | (np.abs(np.nan_to_num(array)) > MAX_ABS)
        if bad.any():
            t, d = (int(i) for i in np.argwhere(bad)[0])
            raise DatasetError(
                f"{name}: {field}[{t}, {d}] is {array[t, d]} ({int(bad.sum())} value(s) of {field} are "
                f"NaN, infinite or beyond +-{MAX_ABS:g}); fix or remove this episode"
            )
    for cam in cameras:
        frames = ep.images.get(cam)
        if frames is None:
            raise DatasetError(f"{name}: no images of camera {cam!r}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DatasetError(
                f"{name}: image.{cam} is {frames.dtype} {frames.shape}, expected uint8 (steps, H, W, 3)"
            )
        if len(frames) != T:
            raise DatasetError(f"{name}: {len(frames)} image.{cam} frames for {T} actions")
    if len(ep.state) != T:
        raise DatasetError(f"{name}: {len(ep.state)} states for {T} actions")
    if not ep.instruction.strip():
        raise DatasetError(
            f"{name}: the instruction is empty; the policy is language-conditioned, so every episode "
            "needs the instruction it was recorded for"
        )


def pause_steps(action: np.ndarray, threshold: float = PAUSE_THRESHOLD) -> np.ndarray:
    """(T,) bool: steps that neither move the arm nor change the gripper command."""
    still = np.linalg.norm(action[:, :-1], axis=1) < threshold
    gripper = action[:, -1]
    same_gripper = np.concatenate([[True], gripper[1:] == gripper[:-1]])
    return still & same_gripper


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: holds a JSON {type(data).__name__}, expected an object")
    return data


def read_asyncvla_episodes(path: str | Path) -> tuple[list[Episode], dict]:
    path = Path(path)
    info_path = path / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{info_path} is missing: not an asyncvla-episodes directory (docs/CONTRACTS.md)"
        )
    info = _read_json(info_path)
    if info.get("format") != "asyncvla-episodes" or info.get("version") != 1:
        raise ValueError(
            f"{info_path}: format {info.get('format')!r} v{info.get('version')}, expected asyncvla-episodes v1"
        )
    files = sorted((path / "episodes").glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{path / 'episodes'} holds no .npz episodes")
    cameras = list(info.get("cameras") or [])
    if not cameras:
        raise DatasetError(f"{info_path}: lists no cameras")
    episodes = []
    for f in files:
        ep = _read_episode_file(f, cameras)
        check_episode(str(f), ep, cameras, info.get("state_dim"), info.get("action_dim"))
        if episodes and ep.state.shape[1] != episodes[0].state.shape[1]:
            raise DatasetError(
                f"{f}: state has {ep.state.shape[1]} values per step, {files[0].name} has "
                f"{episodes[0].state.shape[1]}"
            )
        if episodes and ep.action.shape[1] != episodes[0].action.shape[1]:
            raise DatasetError(
                f"{f}: action has {ep.action.shape[1]} values per step, {files[0].name} has "
                f"{episodes[0].action.shape[1]}"
            )
        episodes.append(ep)
    return episodes, info


def _read_episode_file(f: Path, cameras: list[str]) -> Episode:
    """One episode file, or a DatasetError naming it and what is wrong with it."""
    try:
        z = np.load(f, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DatasetError(f"{f}: unreadable or truncated episode file ({e}); re-record or remove it") from e
    except ValueError as e:  # neither a zip archive nor a NumPy array file: np.load takes it for a pickle
        raise DatasetError(f"{f}: not an episode archive (an .npz of arrays); re-record or remove it") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DatasetError(f"{f}: holds a single array, not an episode archive (an .npz of arrays)")
    with z:
        names = [f"image.{c}" for c in cameras] + ["state", "action", "instruction"]
        missing = [k for k in names if k not in z]
        if missing:
            raise DatasetError(f"{f}: missing arrays {missing} (docs/CONTRACTS.md lists the episode arrays)")
        try:
            arrays = {k: z[k] for k in names}
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
            raise DatasetError(
                f"{f}: unreadable or truncated episode file ({e}); re-record or remove it"
            ) from e
    for key in ("state", "action"):
        if not np.issubdtype(arrays[key].dtype, np.number):
            raise DatasetError(f"{f}: {key} holds {arrays[key].dtype} values, expected numbers")
    return Episode(
        images={c: arrays[f"image.{c}"] for c in cameras},
        state=arrays["state"].astype(np.float32),
        action=arrays["action"].astype(np.float32),
        instruction=str(arrays["instruction"]),
    )


def _decode_image(cell) -> np.ndarray:
    from PIL import Image

    data = cell["bytes"] if isinstance(cell, dict) else cell
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def read_lerobot(path: str | Path, cameras: dict[str, str] | None = None) -> tuple[list[Episode], dict]:
    """LeRobot layout. `cameras` maps model camera name -> feature key; default: every
    `observation.images.<name>` feature becomes camera `<name>`. Every episode's instruction is
    its task (`task_index` in the data, its text in meta/tasks.jsonl or meta/tasks.parquet): a
    dataset without them is refused, never trained on empty instructions."""
    import pandas as pd

    path = Path(path)
    info_path = path / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} is missing: not a LeRobot dataset directory")
    info = _read_json(info_path)
    features = info.get("features", {})
    if cameras is None:
        cameras = {k.split(".", 2)[2]: k for k in features if k.startswith("observation.images.")}
    if not cameras:
        raise DatasetError(f"{info_path}: no image features (observation.images.<camera>) among its features")
    videos = [key for key in cameras.values() if features.get(key, {}).get("dtype") == "video"]
    places = lerobot_video.episode_videos(path, info, videos) if videos else {}
    tasks = _lerobot_tasks(path)
    files = sorted((path / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{path / 'data'} holds no parquet files")
    parts = []
    for f in files:
        try:
            parts.append(pd.read_parquet(f).assign(_file=f.name))
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DatasetError(f"{f}: not a readable parquet file ({e})") from e
    frames = pd.concat(parts, ignore_index=True)
    images = [key for key in cameras.values() if key not in videos]
    times = ["timestamp"] if videos else []  # a video frame's place within its episode
    for col in ["episode_index", "frame_index", "task_index", "observation.state", "action", *images, *times]:
        if col not in frames:
            hint = (
                ": without it the episodes have no instruction (meta/tasks.jsonl maps task_index to the text)"
                if col == "task_index"
                else ""
            )
            raise DatasetError(
                f"{path}: parquet data has no column {col!r}{hint} (columns: {list(frames.columns)[:12]})"
            )
    episodes = []
    for index, ep in frames.sort_values(["episode_index", "frame_index"]).groupby("episode_index", sort=True):
        name = f"{path} episode {index} ({', '.join(sorted(set(ep['_file'])))})"
        task_index = int(ep["task_index"].iloc[0])
        if task_index not in tasks:
            raise DatasetError(
                f"{name}: task_index {task_index} is not in the dataset's tasks ({sorted(tasks)[:10]}), so "
                "the episode has no instruction"
            )
        try:
            episode = Episode(
                images={
                    cam: _video_frames(path, features, key, places, int(index), ep["timestamp"])
                    if key in videos
                    else np.stack([_decode_image(c) for c in ep[key]])
                    for cam, key in cameras.items()
                },
                state=np.stack(ep["observation.state"].to_numpy()).astype(np.float32),
                action=np.stack(ep["action"].to_numpy()).astype(np.float32),
                instruction=tasks[task_index],
            )
        except (OSError, ValueError, TypeError, KeyError) as e:  # undecodable image, ragged rows
            raise DatasetError(f"{name}: unreadable images, states or actions ({e})") from e
        check_episode(name, episode, list(cameras), None, None)
        if episodes and episode.state.shape[1] != episodes[0].state.shape[1]:
            raise DatasetError(
                f"{name}: state has {episode.state.shape[1]} values per step, episode 0 has {episodes[0].state.shape[1]}"
            )
        if episodes and episode.action.shape[1] != episodes[0].action.shape[1]:
            raise DatasetError(
                f"{name}: action has {episode.action.shape[1]} values per step, episode 0 has {episodes[0].action.shape[1]}"
            )
        episodes.append(episode)
    _check_videos(episodes, cameras, videos)
    return episodes, {"cameras": list(cameras), "fps": info.get("fps"), "source": str(path)}


def _video_frames(path: Path, features: dict, key: str, places: dict, index: int, timestamps) -> VideoFrames:
    """Episode `index`'s frames of video feature `key`, to be decoded when a sample asks for them."""
    if index not in places:
        raise DatasetError(
            f"{path} episode {index}: not in meta/episodes, so its place in the {key} videos is unknown"
        )
    video, start = places[index][key]
    return VideoFrames(
        video, start + timestamps.to_numpy(np.float64), _frame_shape(path, features, key), TOLERANCE_S
    )


def _frame_shape(path: Path, features: dict, key: str) -> tuple[int, int, int]:
    """(H, W, 3) of a video feature; LeRobot names the axes of its shape."""
    shape, names = features[key].get("shape"), features[key].get("names")
    if isinstance(names, list) and len(names) == 3 and shape and len(shape) == 3 and "channels" in names:
        by_name = dict(zip(names, shape))
        if {"height", "width"} <= set(by_name):
            return int(by_name["height"]), int(by_name["width"]), 3
    if shape and len(shape) == 3 and shape[-1] == 3:
        return int(shape[0]), int(shape[1]), 3
    raise DatasetError(
        f"{path / 'meta' / 'info.json'}: feature {key} has shape {shape} (names {names}), expected "
        "[height, width, 3]"
    )


def _check_videos(episodes: list[Episode], cameras: dict[str, str], videos: list[str]) -> None:
    """Each video file the episodes use, once: present, decodable, as large and as long as they need."""
    needed: dict[tuple[str, str], VideoFrames] = {}  # (key, file) -> the frames reaching furthest into it
    for ep in episodes:
        for cam, key in cameras.items():
            frames = ep.images[cam]
            if key in videos and frames.times.max() > getattr(needed.get((key, frames.path)), "last", -1.0):
                needed[key, frames.path] = frames
    for (key, video), frames in needed.items():
        lerobot_video.check_video(Path(video), key, frames.last, frames.frame_shape, frames.tolerance_s)


def _lerobot_tasks(path: Path) -> dict[int, str]:
    """task_index -> instruction, from meta/tasks.jsonl (LeRobot v2.x) or meta/tasks.parquet (v3)."""
    import pandas as pd

    jsonl, table = path / "meta" / "tasks.jsonl", path / "meta" / "tasks.parquet"
    tasks = {}
    if jsonl.is_file():
        for number, line in enumerate(jsonl.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    tasks[int(row["task_index"])] = str(row["task"])
                except (ValueError, KeyError, TypeError) as e:
                    raise DatasetError(
                        f'{jsonl}:{number}: expected {{"task_index": N, "task": TEXT}} ({e!r})'
                    ) from e
    elif table.is_file():  # the task string is the index
        try:
            df = pd.read_parquet(table)
            tasks = {int(i): str(t) for t, i in zip(df.index, df["task_index"])}
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{table}: unreadable task table ({e!r})") from e
    else:
        raise DatasetError(
            f"{path / 'meta'} has neither tasks.jsonl nor tasks.parquet, so the episodes have no "
            'instruction; add the task texts (LeRobot\'s meta/tasks.jsonl: one {"task_index", "task"} per line)'
        )
    if not tasks:
        raise DatasetError(f"{jsonl if jsonl.is_file() else table}: lists no tasks")
    return tasks


def dataset_sha256(path: str | Path) -> str:
    """sha256 over the dataset's files' relative names and bytes, in order: what a checkpoint
    records as the data it was trained on (for asyncvla-episodes, the episode files; for a
    mixture, its members' hashes and weights)."""
    import hashlib

    path = Path(path)
    if mixture.is_mixture(path):
        return mixture.mixture_sha256(path, dataset_sha256)
    root = path / "episodes" if (path / "episodes").is_dir() else path
    pattern = "*.npz" if root.name == "episodes" else "**/*"
    h = hashlib.sha256()
    for f in sorted(p for p in root.glob(pattern) if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def read_dataset(path: str | Path) -> tuple[list[Episode], dict]:
    """Either format, recognised by its files, or a mixture file of them (mixture.py)."""
    path = Path(path)
    if mixture.is_mixture(path):
        return mixture.read_mixture(path, read_dataset)
    if (path / "info.json").is_file():
        return read_asyncvla_episodes(path)
    if (path / "meta" / "info.json").is_file():
        return read_lerobot(path)
    raise FileNotFoundError(
        f"{path}: neither an asyncvla-episodes directory (info.json) nor a LeRobot dataset (meta/info.json) "
        "nor a mixture file (.json / .yaml)"
    )


def dataset_roots(path: str | Path) -> list[Path]:
    """The directories a DATASET argument reads: itself, or a mixture's members."""
    if mixture.is_mixture(path):
        return [m.path for m in mixture.read_mixture_file(path)]
    return [Path(path)]


def training_sampler(dataset: ChunkDataset, rank: int, world: int, seed: int) -> torch.utils.data.Sampler:
    """This rank's sampler: every chunk once an epoch, shuffled, or for a mixture draws that
    follow its weights (mixture.WeightedDistributedSampler)."""
    weights = np.array([dataset.episodes[e].sampling_weight for e, _ in dataset.index])
    if len(weights) and np.all(weights == weights[0]):
        return torch.utils.data.DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
    return mixture.WeightedDistributedSampler(weights, num_replicas=world, rank=rank, seed=seed)


class ChunkDataset(torch.utils.data.Dataset):
    """Every (episode, step) as a sample with the next L actions; raw (unnormalised) values."""

    def __init__(self, episodes: list[Episode], chunk_length: int, pause_threshold: float = PAUSE_THRESHOLD):
        self.episodes = episodes
        self.chunk_length = chunk_length
        self.index = [(e, t) for e, ep in enumerate(episodes) for t in range(len(ep.action))]
        self.pauses = [pause_steps(ep.action, pause_threshold) for ep in episodes]

    def pause_fraction(self) -> float:
        """Share of recorded steps that are pauses (logged when training starts)."""
        return float(np.concatenate(self.pauses).mean()) if self.pauses else 0.0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        e, t = self.index[i]
        ep = self.episodes[e]
        T, L = len(ep.action), self.chunk_length
        steps = np.minimum(np.arange(t, t + L), T - 1)  # past the end: repeat the last action
        return Sample(
            images={c: frames[t] for c, frames in ep.images.items()},
            state=ep.state[t],
            instruction=ep.instruction,
            actions=ep.action[steps],
            action_pad=np.arange(t, t + L) >= T,
            action_pause=self.pauses[e][steps] & (np.arange(t, t + L) < T),
        )

    def norm_stats(self) -> NormStats:
        """Statistics over every recorded step (computed once, saved with the checkpoint)."""
        return NormStats.from_arrays(
            np.concatenate([ep.state for ep in self.episodes]),
            np.concatenate([ep.action for ep in self.episodes]),
        )


def write_asyncvla_episodes(
    path: str | Path, episodes: list[Episode], fps: int, source: str, tasks: list[str] | None = None
) -> Path:
    """Write episodes in the asyncvla-episodes v1 format (docs/CONTRACTS.md)."""
    path = Path(path)
    (path / "episodes").mkdir(parents=True, exist_ok=True)
    cameras = list(episodes[0].images)
    for i, ep in enumerate(episodes):
        arrays = {f"image.{c}": ep.images[c] for c in cameras}
        task = tasks[i] if tasks else ep.instruction
        np.savez_compressed(
            path / "episodes" / f"{i:06d}.npz",
            state=ep.state.astype(np.float32),
            action=ep.action.astype(np.float32),
            instruction=np.array(ep.instruction),
            task=np.array(task),
            **arrays,
        )
    info = {
        "format": "asyncvla-episodes",
        "version": 1,
        "cameras": cameras,
        "state_dim": int(episodes[0].state.shape[1]),
        "action_dim": int(episodes[0].action.shape[1]),
        "fps": fps,
        "num_episodes": len(episodes),
        "source": source,
    }
    (path / "info.json").write_text(json.dumps(info, indent=1))
    return path
