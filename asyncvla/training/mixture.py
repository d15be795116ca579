"""A weighted mixture of datasets, given as a small file, trained on as one dataset.

    # mixture.yaml (or the same as JSON); paths relative to this file
    datasets:
      - {path: libero_lerobot, weight: 0.7}
      - {path: bridge_lerobot, weight: 0.3}

Each member is any dataset `read_dataset` reads (not another mixture). Their episodes are
concatenated; a sample's chance of being drawn is its member's normalised weight shared equally
among the member's steps (`Episode.sampling_weight`), so 0.7 / 0.3 draws 70 % / 30 % of the
chunks from each whatever their sizes, and 7 / 3 is the same mixture. An epoch draws as many
chunks as the mixture holds, with replacement (`WeightedDistributedSampler`). The normalisation
statistics are over every step of every member. The data hash covers each member's files and
its normalised weight, in the file's order.

Refused with one line (exit 2 from asyncvla-train): a file that is not such a list, a member that
is missing or is itself a mixture, a weight that is not a positive finite number, members whose
cameras, state or action sizes disagree.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asyncvla.training.errors import DatasetError

SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class Member:
    path: Path
    weight: float  # normalised: the members' weights sum to 1


def is_mixture(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in SUFFIXES


def read_mixture_file(path: str | Path) -> list[Member]:
    """The members of a mixture file, their paths resolved against its folder, weights normalised."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: not a readable mixture file ({' '.join(str(e).split())})") from e
    usage = 'expected {"datasets": [{"path": DIR, "weight": W}, ...]} (docs/model.md, mixtures)'
    rows = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f"{path}: {usage}")
    members = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != {"path", "weight"} or not isinstance(row["path"], str):
            raise DatasetError(f"{path}: datasets[{i}] is {row!r}; {usage}")
        weight = row["weight"]
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise DatasetError(
                f"{path}: datasets[{i}] ({row['path']}) has weight {weight!r}; a weight is a positive finite "
                "number (leave a dataset out rather than give it 0)"
            )
        member = (path.parent / row["path"]).resolve()
        if not member.exists():
            raise DatasetError(
                f"{path}: datasets[{i}]: {member} does not exist (paths are relative to the file)"
            )
        if is_mixture(member):
            raise DatasetError(
                f"{path}: datasets[{i}]: {member} is a mixture file; list its datasets here instead"
            )
        members.append(Member(member, float(weight)))
    paths = [m.path for m in members]
    if len(set(paths)) != len(paths):
        raise DatasetError(f"{path}: lists a dataset twice; give it one entry with the summed weight")
    total = sum(m.weight for m in members)
    return [Member(m.path, m.weight / total) for m in members]


def read_mixture(path: str | Path, read_member) -> tuple[list, dict]:
    """Every member's episodes, concatenated, each with its sampling weight; `read_member` reads
    one dataset (datasets.read_dataset)."""
    path = Path(path)
    members = read_mixture_file(path)
    episodes, parts, first = [], [], None
    for m in members:
        eps, info = read_member(m.path)
        shape = {
            "cameras": sorted(info["cameras"]),
            "state size": eps[0].state.shape[1],
            "action size": eps[0].action.shape[1],
        }
        if first is None:
            first = (m.path, shape, info)
        for what, value in shape.items():
            if value != first[1][what]:
                raise DatasetError(
                    f"{path}: {m.path} has {what} {value}, {first[0]} has {first[1][what]}; the members of a "
                    "mixture share cameras, state and action sizes"
                )
        steps = sum(len(e.action) for e in eps)
        for e in eps:
            e.sampling_weight = m.weight / steps
        episodes += eps
        parts.append({"path": str(m.path), "weight": m.weight, "episodes": len(eps), "info": info})
    info = {"cameras": first[2]["cameras"], "source": str(path)}
    # the fps and renderer settings describe the mixture only where every member shares them
    for key in ("fps", "render"):
        values = [p["info"].get(key) for p in parts]
        info[key] = values[0] if all(v == values[0] for v in values) else None
    info["mixture"] = [{k: v for k, v in p.items() if k != "info"} for p in parts]
    return episodes, info


def mixture_sha256(path: str | Path, member_sha256) -> str:
    """sha256 over each member's data hash and normalised weight, in the file's order."""
    h = hashlib.sha256(b"asyncvla-mixture v1\n")
    for m in read_mixture_file(path):
        h.update(f"{member_sha256(m.path)} {m.weight!r}\n".encode())
    return h.hexdigest()


class WeightedDistributedSampler(torch.utils.data.Sampler[int]):
    """Indices drawn with replacement by `weights` (one per sample), split among `num_replicas`
    ranks; `set_epoch` gives each epoch its own draw, the same on every rank and on a resume. A
    draw picks an episode group by weight, then a sample in it uniformly, so it scales to more
    samples than torch.multinomial takes (2^24)."""

    def __init__(self, weights: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        weights = np.asarray(weights, dtype=np.float64)
        # samples of equal weight form a group (a mixture: one per member), drawn from uniformly
        values, group = np.unique(weights, return_inverse=True)
        self.order = np.argsort(group, kind="stable")  # the samples, group after group
        self.sizes = np.bincount(group, minlength=len(values))
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.group_weight = torch.from_numpy(values * self.sizes)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = self.num_samples * self.num_replicas
        groups = torch.multinomial(self.group_weight, n, replacement=True, generator=g).numpy()
        within = torch.rand(n, generator=g, dtype=torch.float64).numpy()
        picks = np.minimum((within * self.sizes[groups]).astype(np.int64), self.sizes[groups] - 1)
        indices = self.order[self.starts[groups] + picks]
        return iter(indices[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
