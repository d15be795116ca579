"""Checkpoint directories: save and load without unpickling, with errors that name the bad file.

Layout:
    config.json          ModelConfig (asyncvla.config), plus a format tag
    model.safetensors    backbone + state/action projections + FM head (not the tied lm_head)
    rater.safetensors    the confidence rater
    norm_stats.json      state/action mean and std (asyncvla.normalize)
    tokenizer.json, tokenizer_config.json, ...   tokenizer files (save_pretrained)

Every file is written under a temporary name in the same directory, flushed to disk and renamed
over the old one (`atomic_write`), config.json last: a save killed part-way leaves each file
either whole and old or whole and new, never torn.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from asyncvla.backbone import load_tokenizer
from asyncvla.config import ModelConfig
from asyncvla.model import AsyncVLA
from asyncvla.normalize import NormStats

log = logging.getLogger(__name__)

FORMAT = "asyncvla-checkpoint"
VERSION = 1
TIED = "vlm.lm_head.weight"  # tied to the token embeddings, never used for actions
FILES = ("config.json", "model.safetensors", "rater.safetensors", "norm_stats.json", "tokenizer.json")


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file, or a file is truncated or does not match config.json."""


def _split_state(
    model: AsyncVLA, state: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    main, rater = {}, {}
    for key, value in (model.state_dict() if state is None else state).items():
        if key == TIED:
            continue
        (rater if key.startswith("rater.") else main)[key] = value.detach().contiguous().cpu()
    return main, rater


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` to a temporary name beside `path`, flushed to disk, then renamed over `path`:
    readers (and a later resume) see the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def save_checkpoint(
    path: str | Path, model: AsyncVLA, tokenizer, stats: NormStats, state: dict | None = None
) -> Path:
    """Write the checkpoint, each file atomically (`atomic_write`); config.json carries
    `model.training` (how it was trained: see `asyncvla.training.train.training_record`) when the
    model has one. `state`: the weights to write instead of `model.state_dict()` (a sharded model's,
    merged: asyncvla.training.sharding.merged_state)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    main, rater = _split_state(model, state)
    cfg = model.cfg.to_dict()
    cfg["backbone_dir"] = None  # the weights are all here now; never reload the base model
    meta = {"format": FORMAT, "version": VERSION}
    tags = {k: str(v) for k, v in meta.items()}
    atomic_write(path / "model.safetensors", lambda tmp: save_file(main, str(tmp), metadata=tags))
    atomic_write(path / "rater.safetensors", lambda tmp: save_file(rater, str(tmp), metadata=tags))
    atomic_write(path / "norm_stats.json", stats.save)
    _save_tokenizer(path, tokenizer)
    config = {**meta, "model": cfg}
    if isinstance(model.training_record, dict):
        config["training"] = model.training_record
    text = json.dumps(config, indent=1)
    atomic_write(path / "config.json", lambda tmp: tmp.write_text(text))  # last: marks it complete
    log.info("saved checkpoint to %s", path)
    return path


def _save_tokenizer(path: Path, tokenizer) -> None:
    """`save_pretrained` into a temporary directory beside the checkpoint's files, then each file
    moved into place atomically."""
    staging = path / f".tokenizer.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tokenizer.save_pretrained(str(staging))
        for f in sorted(staging.iterdir()):
            atomic_write(path / f.name, lambda tmp, f=f: os.replace(f, tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_training_record(path: str | Path) -> dict | None:
    """How a checkpoint was trained (config.json `training`), or None for one saved before records
    existed. Keys: objective, image_size, stages {policy: {...}, rater: {...}} where each stage holds
    steps, data_sha256, data_image_size, data_render, pause_threshold, pause_fraction; and the
    policy stage's data_image_size and data_render at the top level."""
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / 'config.json'}: not readable JSON ({e})") from e
    record = data.get("training") if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


def _read_config(path: Path) -> ModelConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not readable JSON ({e}); expected the config.json written by save_checkpoint"
        ) from e
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: holds a JSON {type(data).__name__}, expected the object written by save_checkpoint"
        )
    if data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: format is {data.get('format')!r}, expected {FORMAT!r} (not an AsyncVLA checkpoint)"
        )
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: version {data.get('version')!r} is not supported; expected {VERSION}")
    try:
        return ModelConfig.from_dict(data["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: invalid model config ({type(e).__name__}: {e})") from e


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable, truncated or not a safetensors file ({e})") from e


def _check_header(path: Path, expected: dict[str, torch.Tensor], optional: set[str] = frozenset()) -> None:
    shapes = _header_shapes(path)
    missing = sorted(set(expected) - set(shapes) - optional)
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: does not match config.json: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for key, shape in shapes.items():
        if shape != tuple(expected[key].shape):
            raise CheckpointError(
                f"{path}: tensor {key} has shape {shape}, config.json expects {tuple(expected[key].shape)}"
            )


def check_mode(path: str | Path, record: dict | None, mode: str) -> None:
    """Refuse an inference mode the checkpoint was not trained for: `asyncvla` runs the rater, which
    a checkpoint whose rater stage never ran has only at its random initialisation."""
    if record is None:
        log.warning(
            "%s has no training record (saved before config.json recorded one): cannot check that its "
            "rater was trained",
            path,
        )
        return
    if mode in ("asyncvla", "rater-resample") and "rater" not in record.get("stages", {}):
        raise CheckpointError(
            f"{path}: its rater was never trained (stages run: {', '.join(record.get('stages', {})) or 'none'}), "
            "so --mode asyncvla would mask tokens with a random rater; train it with "
            f"`asyncvla-train DATA --out {path} --stage rater --steps 500`, or evaluate with --mode sfm"
        )


def check_checkpoint(path: str | Path) -> tuple[ModelConfig, object, NormStats]:
    """Everything `load_checkpoint` would refuse, found without building the model's weights: the
    files, config.json, the tokenizer, the normalisation statistics, and every tensor's name and
    shape in the safetensors headers against the model config.json describes (built on the meta
    device, so a config with a huge layer size costs nothing here). Returns (config, tokenizer,
    statistics). The evaluation driver calls it before it starts anything."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no such checkpoint directory (expected one holding {', '.join(FILES)})"
        )
    for name in FILES:
        if not (path / name).is_file():
            raise CheckpointError(
                f"{path / name} is missing; a checkpoint directory holds {', '.join(FILES)}"
            )
        if not os.access(path / name, os.R_OK):
            raise CheckpointError(f"{path / name} is not readable (permissions)")
    cfg = _read_config(path / "config.json")
    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'tokenizer.json'}: cannot load the tokenizer ({e})") from e
    try:
        stats = NormStats.load(path / "norm_stats.json", cfg.state_dim, cfg.action_dim)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / 'norm_stats.json'}: {e}") from e
    try:
        with torch.device("meta"):
            expected = AsyncVLA(cfg, tokenizer, device="meta").state_dict()
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: the model it describes cannot be built ({e})") from e
    _check_header(
        path / "model.safetensors", {k: v for k, v in expected.items() if not k.startswith("rater.")}, {TIED}
    )
    _check_header(path / "rater.safetensors", {k: v for k, v in expected.items() if k.startswith("rater.")})
    return cfg, tokenizer, stats


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a file whose header `check_checkpoint` has already matched to the config."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from e


def _non_finite(key: str, tensor: torch.Tensor, path: Path) -> CheckpointError | None:
    """The error naming `tensor` if it holds a NaN or an infinity. Summed in float64 a piece at a
    time (no overflow from finite float32/bf16 weights; NaN and Inf survive the sum; no full-size
    temporary): about 3 s per GB on a loaded 2-core CPU."""
    if not tensor.is_floating_point():
        return None
    flat = tensor.reshape(-1)
    if all(math.isfinite(float(piece.sum(dtype=torch.float64))) for piece in flat.split(1 << 22)):
        return None
    bad = flat[~torch.isfinite(flat)]
    kinds = " and ".join(k for k, found in (("NaN", bad.isnan().any()), ("Inf", bad.isinf().any())) if found)
    return CheckpointError(
        f"{path}: tensor {key} holds {bad.numel()} non-finite value(s) ({kinds}) of {flat.numel()}; the "
        "weights are damaged or training diverged: use an earlier checkpoint"
    )


def check_weights_finite(
    path: str | Path, files: tuple[str, ...] = ("model.safetensors", "rater.safetensors")
) -> None:
    """Every weight in `files` of the checkpoint is finite, read one tensor at a time (memory-mapped)
    so that the driver can check before anything starts without holding the model. A NaN in the
    rater is the silent failure: its confidence is NaN, never below the threshold, so no token is
    masked and `--mode asyncvla` runs as SFM; the evaluation driver checks that file (the model's
    own weights are checked where it is loaded, `load_checkpoint`, and NaN actions at every step)."""
    path = Path(path)
    for name in files:
        try:
            with safe_open(str(path / name), framework="pt") as f:
                for key in f.keys():
                    error = _non_finite(key, f.get_tensor(key), path / name)
                    if error:
                        raise error
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path / name}: unreadable or truncated safetensors file ({e})") from e


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[AsyncVLA, object, NormStats]:
    """(model in eval mode, tokenizer, normalisation statistics) from a checkpoint directory."""
    path = Path(path)
    cfg, tokenizer, stats = check_checkpoint(path)
    model = AsyncVLA(cfg, tokenizer, dtype=dtype)
    expected = model.state_dict()
    main = _read_tensors(path / "model.safetensors")
    rater = _read_tensors(path / "rater.safetensors")
    for name, tensors in (("model.safetensors", main), ("rater.safetensors", rater)):
        for key, tensor in tensors.items():
            error = _non_finite(key, tensor, path / name)
            if error:
                raise error
    model.load_state_dict({**main, **rater}, strict=False)
    model.training_record = read_training_record(path)
    if TIED in expected and not model.vlm.config.get_text_config().tie_word_embeddings:
        log.warning("lm_head is not tied; it was not saved and keeps its random init (unused for actions)")
    return model.to(device).eval(), tokenizer, stats
