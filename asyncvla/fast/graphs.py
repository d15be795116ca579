"""CUDA graph capture, and the batch and prompt padding that lets a few graphs serve any batch."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16)
PREFIX_MULTIPLE = 32  # prefix lengths are padded to a multiple of this (fewer graphs)


def batch_bucket(batch: int) -> int:
    """The smallest bucket that holds `batch` (multiples of 16 beyond 16)."""
    for b in BATCH_BUCKETS:
        if batch <= b:
            return b
    return -(-batch // 16) * 16


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Fill a batch up to `rows` with copies of its last row (the copies' results are dropped)."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])


class CapturedCall:
    """`fn(*tensors)` captured once as a CUDA graph. A call copies its tensors into the captured
    inputs, replays the graph and returns the captured outputs (valid until the next call)."""

    def __init__(self, fn, example_inputs: tuple[torch.Tensor, ...]):
        self.inputs = tuple(t.clone() for t in example_inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the capture: lazy inits, kernel choices
            for _ in range(2):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)
        log.info("captured a CUDA graph for inputs of shapes %s", [tuple(t.shape) for t in self.inputs])

    def __call__(self, *inputs: torch.Tensor):
        for captured, new in zip(self.inputs, inputs):
            captured.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.outputs
