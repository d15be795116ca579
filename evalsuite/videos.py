"""Rollout videos: cameras side by side, instruction and outcome written on every frame, H.264 mp4."""

from __future__ import annotations

import os
import tempfile

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

BANNER = 28  # pixels of caption above the cameras


def caption_frames(frames: list[np.ndarray], instruction: str, outcome: str) -> list[np.ndarray]:
    """Add a banner with the instruction (left) and the outcome (right) above each frame."""
    font = ImageFont.load_default()
    h, w = frames[0].shape[:2]
    banner = Image.new("RGB", (w, BANNER), (20, 20, 20))
    draw = ImageDraw.Draw(banner)
    draw.text((4, 2), instruction, fill=(255, 255, 255), font=font)
    color = (80, 220, 80) if outcome.startswith("success") else (240, 80, 80)
    draw.text((4, BANNER // 2), outcome, fill=color, font=font)
    top = np.asarray(banner)
    return [np.concatenate([top, f], axis=0) for f in frames]


def encode_mp4(frames: list[np.ndarray], fps: int = 20) -> bytes:
    """Encode frames (HxWx3 uint8) to mp4 bytes, so a worker on another node can ship them back."""
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))  # H.264 with yuv420p needs even sides
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(np.pad(frame, pad))
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def read_mp4(path: str) -> np.ndarray:
    """All frames of a video, [T, H, W, 3] (for tests and reports)."""
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    w, h = meta["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(h, w, 3) for frame in reader])
