"""How the training processes share the model: `ddp` (a full copy per process, gradients averaged)
or `fsdp` (torch's FSDP2, `fully_shard`: parameters, gradients and optimiser states split across
the processes, each decoder and vision block gathered only while it runs).

FSDP2 keeps the master weights and the optimiser states in fp32 and, on CUDA, computes in bf16
(`MixedPrecisionPolicy`); the rater stage's rater stays fp32 (as it is trained in fp32 everywhere).
Its saves are torch distributed checkpoints (`dcp`): every process writes its own shard of the
weights and of the optimiser, and a resume reads them back on any number of processes. The
checkpoint `asyncvla-eval` loads is written beside every sharded save: the shards merged on rank 0
(`merged_state`), so --out is always a loadable checkpoint of the step its state resumes from.

Why per-block units: one unit per decoder layer and vision block is what the field does (torchtitan,
accelerate's FSDP2 plugin): each gather is one layer's weights, overlapped with the previous
layer's compute, and the peak memory is one unsharded layer above the shards.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from asyncvla.training.errors import TrainError

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments (mixed precision adds bf16 copies)


def default_strategy(size: str) -> str:
    """FSDP for the 3B (a full AdamW copy per GPU is ~65 GB before activations); DDP for small models,
    where sharding buys nothing and costs a gather per block."""
    return "fsdp" if size != "tiny" else "ddp"


def sharded_dir(out: Path, stage: str) -> Path:
    """Where a stage's sharded save lives in --out (a torch distributed checkpoint directory)."""
    return Path(out) / f"sharded_{stage}"


# parameters of the named sizes, for refusing a launch before the model is built (the paper's
# 4.08 B: Qwen2.5-VL-3B with the action expert's projections, and the 308 M rater)
PARAMS = {"qwen2.5-vl-3b": 4.08e9}


def estimated_params(size: str) -> float | None:
    return PARAMS.get(size)


def check_fits(strategy: str, n_params: float, world: int, device: str) -> None:
    """Refuse a strategy whose weights, gradients and optimiser states alone cannot fit one GPU
    (activations come on top)."""
    if not device.startswith("cuda"):
        return
    need = BYTES_PER_PARAM * n_params / (world if strategy == "fsdp" else 1)
    have = torch.cuda.get_device_properties(torch.device(device)).total_memory
    if need > have:
        hint = "use --strategy fsdp" if strategy == "ddp" else "add processes (GPUs)"
        raise TrainError(
            f"--strategy {strategy} on {world} GPU(s): the {n_params / 1e9:.2f} B parameters need "
            f"{need / 2**30:.0f} GiB per GPU for weights, gradients and AdamW states before activations, "
            f"and one GPU has {have / 2**30:.0f} GiB; {hint}"
        )


def fully_shard_model(
    model: nn.Module,
    stage_net: nn.Module,
    stage: str,
    device: torch.device,
    mesh,
    reshard_after_forward: bool = False,
) -> nn.Module:
    """FSDP2 over `model`: one unit per vision block and decoder layer, the rater its own fp32 unit,
    the rest (embeddings, projections, the FM head) in the root unit, which is `stage_net`, so that
    its forward (the stage's loss) gathers them.

    `reshard_after_forward=False` (the default) keeps each block's gathered weights from its forward
    to its backward: ZeRO-2's memory (the paper trains with DeepSpeed ZeRO-2) for one all-gather a
    block and step instead of two; True frees them after the forward (ZeRO-3), for the case where
    the bf16 weights (8 GB at the 3B) do not fit beside the activations."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    bf16 = device.type == "cuda"
    mixed = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32 if bf16 else None
    )
    shard = functools.partial(fully_shard, mesh=mesh, reshard_after_forward=reshard_after_forward)
    for unit in [*model.vlm.model.visual.blocks, *model.vlm.model.language_model.layers]:
        shard(unit, mp_policy=mixed)
    if stage == "rater":
        shard(model.rater, mp_policy=MixedPrecisionPolicy())
    return shard(stage_net, mp_policy=mixed)


def local(p: torch.Tensor) -> torch.Tensor:
    """This process's shard of a parameter (FSDP2's are DTensors), or the parameter itself."""
    return p.to_local() if hasattr(p, "to_local") else p


def save_sharded(directory: Path, model: nn.Module, optim: torch.optim.Optimizer) -> None:
    """Every process writes its shard of the weights and the optimiser states (a collective)."""
    model_state, optim_state = get_state_dict(model, optim)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory))


def load_sharded(directory: Path, model: nn.Module, optim: torch.optim.Optimizer) -> None:
    """The weights and optimiser states of a sharded save, resharded to this run's processes."""
    if not (Path(directory) / ".metadata").is_file():
        raise TrainError(
            f"{directory}: no sharded save to resume from (its .metadata is missing); the training was "
            "saved with --strategy ddp or the directory is damaged"
        )
    model_state, optim_state = get_state_dict(model, optim)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (a collective: every process calls it; the others
    get an empty dict). What save_checkpoint writes as the checkpoint asyncvla-eval loads."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
