"""The training's own errors. `asyncvla-train` prints any of them as one line and exits with code 2."""

from __future__ import annotations


class TrainError(ValueError):
    """Bad input (a flag, the dataset, --out) or a training that cannot go on; the message says what
    was wrong and how to fix it."""


class DatasetError(TrainError):
    """An episode file or a dataset's metadata that cannot be trained on; the message names the file
    (and the episode, field and step where one value is wrong)."""


class Diverged(TrainError):
    """The loss or the weights became non-finite: training stopped without saving them."""


def one_line(e: BaseException) -> str:
    """The message the command prints for one of our errors or the file system's."""
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)
