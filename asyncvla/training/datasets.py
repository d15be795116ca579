"""Training data: episodes from disk -> (observation, action chunk of L, pad mask) samples.

Two readers produce the same `Episode` record:
- `read_asyncvla_episodes(dir)`: the project's own "asyncvla-episodes" v1 format
  (docs/CONTRACTS.md), written by the tabletop recorder and the LIBERO converter;
- `read_lerobot(dir)`: the LeRobot dataset layout (meta/info.json + parquet under data/;
  image features stored in parquet as PNG/JPEG bytes; video features are not decoded here).
A chunk that runs past the episode's end is padded by repeating the last action and marked
in `action_pad`; steps where the demonstrator paused are marked in `action_pause` (paper Sec. 4.1:
pause intervals are excluded from the loss). Neither enters the policy's loss nor the rater's labels.

A pause is a step whose action does not move the arm (the norm of everything but the gripper below
`pause_threshold`) and keeps the previous step's gripper command: the no-op rule OpenVLA applied
to regenerate LIBERO (threshold 1e-4). It reads the actions, which for every suite here are
end-effector deltas; for absolute actions set the threshold to 0 (nothing is a pause).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asyncvla.normalize import NormStats

log = logging.getLogger(__name__)


@dataclass
class Episode:
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    state: np.ndarray  # (T, S) float32
    action: np.ndarray  # (T, A) float32
    instruction: str


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


def pause_steps(action: np.ndarray, threshold: float = PAUSE_THRESHOLD) -> np.ndarray:
    """(T,) bool: steps that neither move the arm nor change the gripper command."""
    still = np.linalg.norm(action[:, :-1], axis=1) < threshold
    gripper = action[:, -1]
    same_gripper = np.concatenate([[True], gripper[1:] == gripper[:-1]])
    return still & same_gripper


def read_asyncvla_episodes(path: str | Path) -> tuple[list[Episode], dict]:
    path = Path(path)
    info_path = path / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{info_path} is missing: not an asyncvla-episodes directory (docs/CONTRACTS.md)"
        )
    info = json.loads(info_path.read_text())
    if info.get("format") != "asyncvla-episodes" or info.get("version") != 1:
        raise ValueError(
            f"{info_path}: format {info.get('format')!r} v{info.get('version')}, expected asyncvla-episodes v1"
        )
    files = sorted((path / "episodes").glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{path / 'episodes'} holds no .npz episodes")
    episodes = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            missing = [
                k
                for k in [f"image.{c}" for c in info["cameras"]] + ["state", "action", "instruction"]
                if k not in z
            ]
            if missing:
                raise ValueError(
                    f"{f}: missing arrays {missing} (docs/CONTRACTS.md lists the episode arrays)"
                )
            ep = Episode(
                images={c: z[f"image.{c}"] for c in info["cameras"]},
                state=z["state"].astype(np.float32),
                action=z["action"].astype(np.float32),
                instruction=str(z["instruction"]),
            )
        if not len(ep.state) == len(ep.action) == len(next(iter(ep.images.values()))):
            raise ValueError(f"{f}: images, state and action have different lengths")
        episodes.append(ep)
    return episodes, info


def _decode_image(cell) -> np.ndarray:
    from PIL import Image

    data = cell["bytes"] if isinstance(cell, dict) else cell
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def read_lerobot(path: str | Path, cameras: dict[str, str] | None = None) -> tuple[list[Episode], dict]:
    """LeRobot layout. `cameras` maps model camera name -> feature key; default: every
    `observation.images.<name>` feature becomes camera `<name>`."""
    import pandas as pd

    path = Path(path)
    info_path = path / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} is missing: not a LeRobot dataset directory")
    info = json.loads(info_path.read_text())
    features = info.get("features", {})
    if cameras is None:
        cameras = {k.split(".", 2)[2]: k for k in features if k.startswith("observation.images.")}
    for cam, key in cameras.items():
        if features.get(key, {}).get("dtype") == "video":
            raise ValueError(
                f"{info_path}: camera {cam!r} ({key}) is stored as video; this reader needs image features in "
                "parquet (re-export the dataset with images, or decode the videos to frames first)"
            )
    tasks = {}
    if (path / "meta" / "tasks.jsonl").is_file():  # LeRobot v2.x
        for line in (path / "meta" / "tasks.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                tasks[int(row["task_index"])] = row["task"]
    elif (path / "meta" / "tasks.parquet").is_file():  # LeRobot v3: task string is the index
        df = pd.read_parquet(path / "meta" / "tasks.parquet")
        tasks = {int(i): str(t) for t, i in zip(df.index, df["task_index"])}
    files = sorted((path / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{path / 'data'} holds no parquet files")
    frames = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    for col in ["episode_index", "frame_index", "observation.state", "action", *cameras.values()]:
        if col not in frames:
            raise ValueError(f"{path}: parquet data has no column {col!r} (columns: {list(frames.columns)})")
    episodes = []
    for _, ep in frames.sort_values(["episode_index", "frame_index"]).groupby("episode_index", sort=True):
        task_index = int(ep["task_index"].iloc[0]) if "task_index" in ep else -1
        episodes.append(
            Episode(
                images={cam: np.stack([_decode_image(c) for c in ep[key]]) for cam, key in cameras.items()},
                state=np.stack(ep["observation.state"].to_numpy()).astype(np.float32),
                action=np.stack(ep["action"].to_numpy()).astype(np.float32),
                instruction=tasks.get(task_index, ""),
            )
        )
    return episodes, {"cameras": list(cameras), "fps": info.get("fps"), "source": str(path)}


def dataset_sha256(path: str | Path) -> str:
    """sha256 over the dataset's files' relative names and bytes, in order: what a checkpoint
    records as the data it was trained on (for asyncvla-episodes, the episode files)."""
    import hashlib

    path = Path(path)
    root = path / "episodes" if (path / "episodes").is_dir() else path
    pattern = "*.npz" if root.name == "episodes" else "**/*"
    h = hashlib.sha256()
    for f in sorted(p for p in root.glob(pattern) if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def read_dataset(path: str | Path) -> tuple[list[Episode], dict]:
    """Either format, recognised by its files."""
    path = Path(path)
    if (path / "info.json").is_file():
        return read_asyncvla_episodes(path)
    if (path / "meta" / "info.json").is_file():
        return read_lerobot(path)
    raise FileNotFoundError(
        f"{path}: neither an asyncvla-episodes directory (info.json) nor a LeRobot dataset (meta/info.json)"
    )


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
