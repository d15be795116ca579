"""Rollout videos a person can watch: cameras side by side at a size where the gripper and the
objects can be seen, the whole instruction, the outcome and a step counter on every frame, and for
AsyncVLA a strip that marks each policy call and how many tokens of its chunk AFM regenerated.

The frames are the observation images the env rendered for the policy (never rendered again), so a
suite that renders at 56 px makes 56 px frames; they are scaled up here by an integer factor to at
least `MIN_CAMERA_PX` per camera with nearest-neighbour sampling: every pixel the policy saw stays
one visible block of identical pixels, and nothing is invented between them (bilinear scaling would
blur a block's edges into colours the policy never saw, which reads as detail that is not there).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_CAMERA_PX = 256  # the smallest camera width in a video
LINE_PX = 14  # one text line of the banner
STRIP_PX = 14  # the policy-call strip under the cameras


@dataclass
class PolicyCall:
    """One call of an episode: the step it was made at and, for AsyncVLA, how many of its chunk's
    tokens AFM regenerated (None: the policy does not say)."""

    step: int
    regenerated: int | None = None
    tokens: int | None = None


def wrap(text: str, width_px: int, font) -> list[str]:
    """`text` in lines no wider than `width_px` in `font`, broken at spaces (a word longer than a
    line is broken inside); every character of `text` is on some line."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width_px:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width_px and len(word) > 1:  # a word wider than the frame
            cut = max(1, max(i for i in range(1, len(word) + 1) if font.getlength(word[:i]) <= width_px))
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    return [*lines, line] if line else lines or [""]


def video_frames(
    frames: list[np.ndarray],
    cameras: int,
    instruction: str,
    outcome: str,
    calls: list[PolicyCall] = (),
) -> tuple[list[np.ndarray], list[str]]:
    """Frames a person can watch (module docstring), and the banner's instruction lines. `frames`:
    the episode's frames, `cameras` images side by side; frame t shows step t."""
    font = ImageFont.load_default()
    h, w = frames[0].shape[:2]
    scale = max(1, math.ceil(MIN_CAMERA_PX / (w // cameras)))
    width = w * scale
    lines = wrap(instruction, width - 8, font)
    banner_px = LINE_PX * (len(lines) + 2) + 4  # the instruction, the outcome, the step counter
    strip = any(c.regenerated is not None for c in calls)
    out = []
    for t, frame in enumerate(frames):
        big = frame.repeat(scale, axis=0).repeat(scale, axis=1)
        canvas = Image.new(
            "RGB", (width, banner_px + big.shape[0] + (STRIP_PX if strip else 0)), (20, 20, 20)
        )
        canvas.paste(Image.fromarray(big), (0, banner_px))
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(lines):
            draw.text((4, 2 + LINE_PX * i), line, fill=(255, 255, 255), font=font)
        colour = (80, 220, 80) if outcome.startswith("success") else (240, 80, 80)
        draw.text((4, 2 + LINE_PX * len(lines)), outcome, fill=colour, font=font)
        current = _current_call(calls, t)
        counter = f"step {t} / {len(frames) - 1}"
        if current is not None and current.regenerated is not None:
            counter += (
                f"   chunk at step {current.step}: AFM regenerated {current.regenerated}/{current.tokens}"
            )
        draw.text((4, 2 + LINE_PX * (len(lines) + 1)), counter, fill=(200, 200, 200), font=font)
        if strip:
            _draw_strip(draw, calls, t, len(frames), width, canvas.height - STRIP_PX)
        out.append(np.asarray(canvas))
    return out, lines


def _current_call(calls, t: int) -> PolicyCall | None:
    made = [c for c in calls if c.step <= t]
    return made[-1] if made else None


def _draw_strip(draw, calls, t: int, n_frames: int, width: int, top: int) -> None:
    """A timeline of the episode: a bar at each call, as tall as the share of its chunk AFM
    regenerated (a 2 px tick when it regenerated none), and a cursor at the current step."""
    x_of = lambda step: int(round(step * (width - 1) / max(1, n_frames - 1)))  # noqa: E731
    draw.rectangle((0, top, width, top + STRIP_PX), fill=(45, 45, 45))
    for c in calls:
        share = (c.regenerated or 0) / max(1, c.tokens or 1)
        height = max(2, round(share * (STRIP_PX - 2)))
        x = x_of(c.step)
        draw.rectangle((x, top + STRIP_PX - height, x + 1, top + STRIP_PX), fill=(250, 180, 40))
    x = x_of(t)
    draw.line((x, top, x, top + STRIP_PX), fill=(255, 255, 255))


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
