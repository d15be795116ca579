"""LeRobot v3 cameras stored as video: frames decoded on demand, never the whole dataset up front.

LeRobot v3 packs many episodes of one camera into a shared file
(`videos/<key>/chunk-XXX/file-XXX.mp4`); `meta/episodes/...parquet` says which file holds an
episode (`videos/<key>/chunk_index`, `file_index`) and where in it the episode starts
(`videos/<key>/from_timestamp`). A frame's place in the file is that start plus the frame's own
`timestamp` column, the rule lerobot's `_query_videos` applies; the decoded frame nearest that time
is taken when it lies within `tolerance_s` (lerobot's default, 1e-4 s), else the read is refused.

`VideoFrames` stands where an episode's (T, H, W, 3) uint8 array stands (`len`, `shape`, `dtype`,
`frames[t]`), so `ChunkDataset` decodes one frame per camera per sample. Each process keeps a
few decoders open (`_DecoderCache`); PyAV seeks to the keyframe at or before the time and decodes
forward, so a sample costs at most one group of pictures per camera (lerobot writes g=2).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asyncvla.training.errors import DatasetError

log = logging.getLogger(__name__)

TOLERANCE_S = 1e-4  # lerobot's LeRobotDataset(tolerance_s=1e-4)
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


@dataclass
class DecodeCounter:
    """What this process has decoded: `requests` frames asked for, `frames` pictures decoded to
    reach them (the keyframe before each request included)."""

    requests: int = 0
    frames: int = 0


COUNTER = DecodeCounter()


class _DecoderCache:
    """The last few opened video files of this process. Keyed by process id too: a container
    opened before a DataLoader worker forked is not used from the child."""

    def __init__(self, size: int = 8):
        self.size = size
        self.open: OrderedDict[tuple[int, str], object] = OrderedDict()

    def get(self, path: str):
        import av

        key = (os.getpid(), path)
        container = self.open.pop(key, None)
        if container is None:
            try:
                container = av.open(path)
            except FileNotFoundError as e:
                raise DatasetError(
                    f"{path}: video file missing (deleted since the dataset was read?); restore the "
                    "dataset's videos/ folder"
                ) from e
            except av.FFmpegError as e:
                raise DatasetError(f"{path}: not a readable video ({e}); re-download or re-encode it") from e
        self.open[key] = container
        while len(self.open) > self.size:
            (pid, _), old = self.open.popitem(last=False)
            if pid == os.getpid():
                old.close()
        return container

    def clear(self) -> None:
        for (pid, _), container in self.open.items():
            if pid == os.getpid():
                container.close()
        self.open.clear()


DECODERS = _DecoderCache()


def decode_frame(path: str, t: float, tolerance_s: float = TOLERANCE_S) -> np.ndarray:
    """The (H, W, 3) uint8 frame of `path` shown at `t` seconds, or a DatasetError naming the file
    and the nearest frames decoded."""
    import av

    container = DECODERS.get(path)
    stream = container.streams.video[0]
    COUNTER.requests += 1
    # the keyframe at or before the latest time within tolerance: the wanted frame is never before
    # it, and when the wanted frame is itself a keyframe decoding starts there
    container.seek(int((t + tolerance_s) / stream.time_base), backward=True, any_frame=False, stream=stream)
    best, best_time, seen = None, np.inf, []
    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            COUNTER.frames += 1
            ft = float(frame.pts * stream.time_base)
            seen.append(ft)
            if abs(ft - t) < abs(best_time - t):
                best, best_time = frame, ft
            if ft > t - tolerance_s:  # frames are further apart than the tolerance: none comes closer
                break
    except av.FFmpegError as e:
        raise DatasetError(f"{path}: decoding failed near {t:.4f} s ({e}); re-encode the video") from e
    if best is None or abs(best_time - t) >= tolerance_s:
        end = f"; the video ends at {seen[-1]:.4f} s" if seen and seen[-1] < t else ""
        nearest = f"nearest decoded frame at {best_time:.4f} s" if best is not None else "no frame decoded"
        raise DatasetError(
            f"{path}: no frame within {tolerance_s:g} s of {t:.4f} s ({nearest}{end}); the episode's "
            "from_timestamp or timestamps in meta/episodes and data/ do not match the video"
        )
    return _rgb(best)


_RGB_THREADS = True


def _rgb(frame) -> np.ndarray:
    """The frame as (H, W, 3) RGB. PyAV >= 16's colour conversion runs on a thread pool, which a
    DataLoader worker forked after the parent converted a frame inherits without its threads
    (the worker hangs): one thread each, the workers being the parallelism."""
    global _RGB_THREADS
    if _RGB_THREADS:
        try:
            return frame.to_ndarray(format="rgb24", threads=1)
        except TypeError:  # PyAV < 16 takes no threads argument and converts on the calling thread
            _RGB_THREADS = False
    return frame.to_ndarray(format="rgb24")


class VideoFrames:
    """One camera's frames of one episode in a (shared) video: a lazy (T, H, W, 3) uint8 array.
    `times[t]` is frame t's time in the file (the episode's from_timestamp + its timestamp)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self, path: str | Path, times: np.ndarray, frame_shape: tuple[int, int, int], tolerance_s: float
    ):
        self.path = str(path)
        self.times = np.asarray(times, dtype=np.float64)
        self.frame_shape = tuple(frame_shape)
        self.tolerance_s = tolerance_s

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.times), *self.frame_shape)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def last(self) -> float:
        return float(self.times.max())

    def __getitem__(self, t) -> np.ndarray:
        if isinstance(t, slice):
            return np.stack([self[i] for i in range(*t.indices(len(self)))])
        frame = decode_frame(self.path, float(self.times[t]), self.tolerance_s)
        if frame.shape != self.frame_shape:
            raise DatasetError(
                f"{self.path}: frames are {frame.shape}, meta/info.json says {self.frame_shape}; fix the "
                "feature's shape in meta/info.json or re-encode the video"
            )
        return frame

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]  # every frame: for conversions, not for training
        return frames if dtype is None else frames.astype(dtype)

    def __repr__(self) -> str:
        return f"VideoFrames({self.path!r}, {len(self)} frames from {self.times[0]:.4f} s)"


def check_video(path: Path, key: str, last_time: float, frame_shape: tuple, tolerance_s: float) -> None:
    """Refuse, before training, a video that is missing, whose codec this PyAV cannot decode, whose
    frames are not the size meta/info.json gives, or that ends before `last_time` (the latest
    frame any episode asks of it)."""
    import av

    if not path.is_file():
        raise DatasetError(
            f"{path}: video file of {key} missing; copy the dataset's videos/ folder with it (LeRobot v3 "
            "keeps camera frames there, not in the parquet)"
        )
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: holds no video stream; re-encode it from the source frames")
            stream = container.streams.video[0]
            name = stream.codec_context.name
            try:
                frame = next(container.decode(stream))
                COUNTER.frames += 1
            except (av.FFmpegError, StopIteration) as e:
                raise DatasetError(
                    f"{path}: its {name} video cannot be decoded by this PyAV (av {av.__version__}: {e or 'no frame'}); "
                    "re-encode it (ffmpeg -i IN -c:v libx264 -g 2 -pix_fmt yuv420p OUT) or install a PyAV built "
                    f"with a {name} decoder"
                ) from e
            duration = _duration(container, stream)
    except av.FFmpegError as e:
        raise DatasetError(f"{path}: not a readable video ({e}); re-download or re-encode it") from e
    shape = (frame.height, frame.width, 3)
    if shape != tuple(frame_shape):
        raise DatasetError(
            f"{path}: frames are {shape}, meta/info.json gives {key} the shape {tuple(frame_shape)}; "
            "fix meta/info.json or re-encode the video"
        )
    if duration is not None and last_time > duration + tolerance_s:
        raise DatasetError(
            f"{path}: episodes ask for frames up to {last_time:.4f} s but the video ends at {duration:.4f} s; "
            "meta/episodes' videos/<key>/from_timestamp or the data's timestamps do not match this file"
        )


def _duration(container, stream) -> float | None:
    """Time of the last frame's start, from the container (None where it does not say)."""
    if stream.duration is not None and stream.time_base is not None:
        end = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        end = container.duration / 1_000_000
    else:
        return None
    rate = stream.average_rate
    return end - (1 / float(rate) if rate else 0.0)


def episode_videos(root: Path, info: dict, keys: list[str]) -> dict[int, dict[str, tuple[Path, float]]]:
    """episode index -> video key -> (its file, the episode's from_timestamp in it), from LeRobot
    v3's meta/episodes parquet files."""
    import pandas as pd

    info_path = root / "meta" / "info.json"
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(
            f"{info_path}: codebase_version {version!r} stores {keys[0]} as video; this reader decodes "
            "LeRobot v3 shared videos only; convert it with lerobot's "
            "`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`, or use envs/libero/dataset.py's "
            "reader for v2.x per-episode videos"
        )
    template = info.get("video_path") or V3_VIDEO_PATH
    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    if not files:
        raise DatasetError(
            f"{root / 'meta' / 'episodes'} holds no parquet files: without them the episodes' places in the "
            "shared videos are unknown (re-download meta/episodes/ with the dataset)"
        )
    columns = ["episode_index"]
    for key in keys:
        columns += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
    out: dict[int, dict[str, tuple[Path, float]]] = {}
    for f in files:
        try:
            table = pd.read_parquet(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{f}: not a readable parquet file ({e})") from e
        missing = [c for c in columns if c not in table]
        if missing:
            raise DatasetError(f"{f}: no column {missing[0]!r}, so the episodes' videos are unknown")
        for row in table[columns].itertuples(index=False):
            ep = int(row[0])
            out[ep] = {}
            for i, key in enumerate(keys):
                chunk, file, start = row[1 + 3 * i : 4 + 3 * i]
                relative = template.format(video_key=key, chunk_index=int(chunk), file_index=int(file))
                out[ep][key] = (root / relative, float(start))
    return out
