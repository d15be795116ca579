"""Log an evaluation to TensorBoard (`--track DIR`, `evaluate_suite(track=...)`, `asyncvla-train --eval-every`).

TensorBoard because every training stack the field uses can show it (and W&B and MLflow import its
logs); it writes local event files, needs no server and no network. What is logged, at the
given step (the training step, or 0):
- scalars `success/<suite>/<task>` with `ci_low/...` and `ci_high/...` (95 % Wilson), the same per
  suite under `success/<suite>` and the run's mean under `success/mean` (none for a task whose
  episodes all ended in errors: no NaN), and `errors`, the number of episodes recorded as errors;
- text `tables` (the run's Markdown tables) and `run.json` (the manifest);
- an animated image per task, `video/<suite>/<task>`, from the first recorded video of the task
  (TensorBoard shows videos as animated GIFs).
The run directory stays the source of truth: everything here is read from it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from evalsuite.evaluate import RunSummary

GIF_FRAME_EVERY = 2  # every other frame: a 300-step episode stays a few MB in the event file


def log_run(summary: RunSummary, log_dir: str | Path, step: int = 0) -> Path:
    """Write the summary's figures, tables, manifest and videos under `log_dir`; return it."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for row in summary.tables["per_task"].itertuples():
            _rate(writer, f"{row.suite}/{row.task}", row, step)
        for row in summary.tables["per_suite"].itertuples():
            _rate(writer, str(row.suite), row, step)
        rates = summary.tables["per_suite"]["success_rate"].dropna()
        if len(rates):
            writer.add_scalar("success/mean", float(rates.mean()), step)
        writer.add_scalar("errors", float(summary.errors), step)
        writer.add_text("tables", summary.markdown, step)
        manifest = (summary.run_dir / "run.json").read_text()
        writer.add_text("run.json", "```\n" + json.dumps(json.loads(manifest), indent=1) + "\n```", step)
        for (suite, task), video in _first_video_per_task(summary).items():
            _add_gif(writer, f"video/{suite}/{task}", summary.run_dir / video, step)
    finally:
        writer.close()
    return log_dir


def _rate(writer, name: str, row, step: int) -> None:
    if row.success_rate != row.success_rate:  # NaN: every episode an error, nothing measured
        return
    writer.add_scalar(f"success/{name}", float(row.success_rate), step)
    writer.add_scalar(f"ci_low/{name}", float(row.ci_low), step)
    writer.add_scalar(f"ci_high/{name}", float(row.ci_high), step)


def _first_video_per_task(summary: RunSummary) -> dict[tuple[str, str], str]:
    videos: dict[tuple[str, str], str] = {}
    for record in summary.records:
        if record.video and (record.suite, record.task) not in videos:
            videos[(record.suite, record.task)] = record.video
    return videos


def _add_gif(writer, tag: str, mp4: Path, step: int) -> None:
    """An mp4 of the run as the animated image TensorBoard shows as a video (what
    `SummaryWriter.add_video` makes, without its moviepy dependency)."""
    import imageio_ffmpeg
    import numpy as np
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    reader = imageio_ffmpeg.read_frames(str(mp4))
    width, height = next(reader)["size"]
    frames = [
        Image.fromarray(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
        for i, raw in enumerate(reader)
        if i % GIF_FRAME_EVERY == 0
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
