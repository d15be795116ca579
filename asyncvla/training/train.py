"""`asyncvla-train`: unified policy training (Alg. 2) and confidence-rater training, one or N workers.

    asyncvla-train DATASET --out ckpt/ --stage policy --objective unified --steps 2000
    asyncvla-train DATASET --out ckpt/ --stage rater --steps 500        # after the policy, backbone frozen
    asyncvla-train DATASET --out ckpt/ --steps 2000 --num-workers 2     # torch DDP (gloo on CPU, nccl on GPU)

`--out` is a checkpoint directory (asyncvla.load reads it) that also holds the loss log
(`loss_<stage>.csv`) and the resume state (`train_state_<stage>.pt`, tensors only, loaded with
weights_only=True). Under `torchrun` the process group comes from the environment, so the same
command scales to several machines.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from asyncvla import flow
from asyncvla.backbone import Preprocessor, VLInputs, build_tiny_tokenizer, load_tokenizer
from asyncvla.checkpoint import load_checkpoint, save_checkpoint
from asyncvla.config import OBJECTIVES, ModelConfig
from asyncvla.model import AsyncVLA
from asyncvla.normalize import NormStats
from asyncvla.training.datasets import PAUSE_THRESHOLD, ChunkDataset, Sample, dataset_sha256, read_dataset

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    dataset: str
    out: str
    stage: str = "policy"  # policy | rater
    objective: str = "unified"  # unified | sfm (the w/o-unified-training ablation)
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 16
    lr: float = 1e-4  # language model, projections and FM head (paper Sec. 4)
    vision_lr: float = 2e-5  # vision tower
    warmup_steps: int = 0
    seed: int = 0
    size: str = "tiny"
    backbone_dir: str | None = None  # local Qwen2.5-VL directory (qwen2.5-vl-3b)
    init: str | None = None  # rater stage: the policy checkpoint (default: --out)
    resume: bool = False
    num_workers: int = 1
    save_every: int = 500
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads per worker (default: torch's, cores / workers under DDP)
    pause_threshold: float = PAUSE_THRESHOLD  # asyncvla.training.datasets: pauses carry no label; 0 = none
    # evaluate while training (asyncvla/training/periodic_eval.py): every eval_every steps and at the end
    eval_every: int | None = None
    eval_suite: str = "tabletop"
    eval_episodes: int = 1  # per task
    eval_track: str | None = None  # TensorBoard directory (asyncvla-eval --track)
    eval_args: str = ""  # any other asyncvla-eval options, e.g. "--tasks 0,1 --workers 2"


def training_record(
    previous: dict | None,
    cfg: TrainConfig,
    steps: int,
    dataset: ChunkDataset,
    data_sha256: str,
    image_size: int,
    data_info: dict | None = None,
) -> dict:
    """What config.json says of how the checkpoint was trained: the objective, the image size the
    model reads, and per stage its step count and data (hash, native image size, the renderer's
    settings where the dataset names them, pauses), so a rater trained on other data never
    replaces what the policy was trained on. The top-level `data_image_size` and `data_render` are
    the policy stage's (what the policy saw: the harness compares the env's images with them).
    The policy stage starts a record (a policy retrained from scratch drops the rater's); the rater
    stage adds itself to the policy's."""
    record = dict(previous or {}) if (cfg.stage == "rater" or cfg.resume) else {}
    for key in ("data_sha256", "pause_threshold", "pause_fraction"):  # records before per-stage data
        record.pop(key, None)
    stages = dict(record.get("stages", {}))
    frames = next(iter(dataset.episodes[0].images.values()))
    data = {
        "data_sha256": data_sha256,
        "data_image_size": list(frames.shape[1:3]),
        "data_render": (data_info or {}).get("render"),
        "pause_threshold": cfg.pause_threshold,
        "pause_fraction": round(dataset.pause_fraction(), 4),
    }
    if cfg.stage == "policy":
        stages.pop("rater", None)  # the rater was trained on another policy's SFM actions
        record.update(
            objective=cfg.objective, data_image_size=data["data_image_size"], data_render=data["data_render"]
        )
    stages[cfg.stage] = {"steps": steps, **data}
    record.update(stages=stages, image_size=image_size)
    return record


def collate(
    samples: list[Sample], pre: Preprocessor, stats: NormStats, device
) -> tuple[VLInputs, torch.Tensor, torch.Tensor]:
    states = np.stack([stats.normalize_state(s.state) for s in samples])
    inputs = pre([s.images for s in samples], [s.instruction for s in samples], states)
    actions = torch.from_numpy(np.stack([stats.normalize_action(s.actions) for s in samples]))
    ignore = torch.from_numpy(np.stack([s.ignore for s in samples]))  # padding and pauses
    return inputs.to(device), actions.to(device), ignore.to(device)


def rater_loss(
    model: AsyncVLA,
    inputs: VLInputs,
    actions: torch.Tensor,
    generator: torch.Generator,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rater stage: SFM actions from the frozen model, Eq. (6) pseudo labels, MSE to the rater's p,
    over the tokens that carry a label (`ignore` marks padding and pauses)."""
    valid = torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device)
    if ignore is not None:
        valid = ~ignore
    with torch.no_grad():
        prefix = model.embed_prefix(inputs)
        encoded = model.encode_prefix(prefix)
        noise = torch.randn(actions.shape, generator=generator).to(actions.device)
        sfm = model.integrate(encoded, noise, torch.ones(actions.shape[:2], device=actions.device))
        q = flow.pseudo_labels((sfm - actions).pow(2).mean(-1), valid)
    p = model.rater(encoded.hidden, prefix.valid, sfm)
    return ((p - q).pow(2) * valid).sum() / valid.sum().clamp(min=1)


class _StageLoss(nn.Module):
    """What DDP wraps: forward() is the stage's loss."""

    def __init__(self, model: AsyncVLA, stage: str, objective: str):
        super().__init__()
        self.model, self.stage, self.objective = model, stage, objective

    def forward(self, inputs, actions, ignore, generator):
        if self.stage == "rater":
            return rater_loss(self.model, inputs, actions, generator, ignore)
        return self.model.compute_loss(inputs, actions, ignore, self.objective, generator)


def _param_groups(model: AsyncVLA, cfg: TrainConfig) -> list[dict]:
    if cfg.stage == "rater":  # backbone frozen, rater only
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.rater.parameters():
            p.requires_grad_(True)
        return [{"params": list(model.rater.parameters()), "lr": cfg.lr}]
    for p in model.rater.parameters():  # trained after the policy
        p.requires_grad_(False)
    vision = list(model.vlm.model.visual.parameters())
    ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": vision, "lr": cfg.vision_lr}, {"params": rest, "lr": cfg.lr}]


def _cosine(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def _build(cfg: TrainConfig, dataset: ChunkDataset, info: dict, device) -> tuple[AsyncVLA, object, NormStats]:
    out = Path(cfg.out)
    if cfg.resume or cfg.stage == "rater":
        src = Path(cfg.out if cfg.resume or not cfg.init else cfg.init)
        return load_checkpoint(src, device=device)
    sample = dataset[0]
    model_cfg = ModelConfig.named(
        cfg.size,
        cameras=list(info["cameras"]),
        state_dim=int(sample.state.shape[0]),
        action_dim=int(sample.actions.shape[1]),
        backbone_dir=cfg.backbone_dir,
    )
    tokenizer = (
        load_tokenizer(cfg.backbone_dir)
        if cfg.backbone_dir
        else build_tiny_tokenizer(model_cfg.text.vocab_size)
    )
    torch.manual_seed(cfg.seed)
    model = AsyncVLA(model_cfg, tokenizer).to(device)
    stats = dataset.norm_stats()
    out.mkdir(parents=True, exist_ok=True)
    return model, tokenizer, stats


def train_worker(rank: int, world: int, cfg: TrainConfig) -> None:
    """One training process (rank `rank` of `world`): build or load the model, then run the stage's
    steps, logging the loss and saving the checkpoint and the resume state every `save_every`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rank, world, device = _join_workers(rank, world, cfg)
    episodes, info = read_dataset(cfg.dataset)
    model, tokenizer, stats = _build(cfg, ChunkDataset(episodes, 8), info, device)
    dataset = ChunkDataset(episodes, model.cfg.chunk_length, cfg.pause_threshold)
    data_sha256 = dataset_sha256(cfg.dataset)
    previous_record = model.training_record
    log.info("%.1f%% of the recorded steps are pauses (no label)", 100 * dataset.pause_fraction())
    pre = Preprocessor(model.cfg, tokenizer)
    steps_per_epoch = max(1, len(dataset) // (cfg.batch_size * world))
    total = cfg.steps if cfg.steps else (cfg.epochs or 1) * steps_per_epoch
    optim, sched = _optimizer(model, cfg, total)
    if device.type == "cuda":
        model.vlm.gradient_checkpointing_enable()
    model.train()
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    out, state_path = Path(cfg.out), Path(cfg.out) / f"train_state_{cfg.stage}.pt"
    step = _restore(state_path, optim, sched, generator, rank, cfg) if cfg.resume else 0
    net = _stage_net(model, cfg, world)
    sampler, loader = _data_loader(dataset, cfg, rank, world)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    evaluator = _evaluator(cfg) if rank == 0 else None

    def save(step: int, generators: list[torch.Tensor]) -> None:
        model.training_record = training_record(
            previous_record, cfg, step, dataset, data_sha256, model.cfg.image_size, info
        )
        save_checkpoint(out, model, tokenizer, stats)
        state = {"step": step, "optimizer": optim.state_dict(), "scheduler": sched.state_dict()}
        torch.save({**state, "generator": generators}, state_path)

    with _LossLog(out / f"loss_{cfg.stage}.csv", cfg, total, step, rank) as loss_log:
        epoch = step // steps_per_epoch
        while step < total:
            sampler.set_epoch(epoch)
            for samples in loader:
                if step >= total:
                    break
                inputs, actions, ignore = collate(samples, pre, stats, device)
                with autocast:
                    loss = net(inputs, actions, ignore, generator)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sched.step()
                step += 1
                loss_log.write(step, epoch, _mean_over_workers(loss.detach(), world), sched.get_last_lr()[-1])
                generators = _gather_generators(generator, world)  # every rank takes part
                evaluate = evaluator is not None and (step % evaluator.every == 0 or step == total)
                if (step % cfg.save_every == 0 or step == total or evaluate) and rank == 0:
                    save(step, generators)
                    if evaluate:
                        evaluator.after_save(step)
            epoch += 1
    if evaluator is not None:
        evaluator.close()  # the last evaluations finish before the command returns
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _evaluator(cfg: TrainConfig):
    if not cfg.eval_every:
        return None
    import shlex

    from asyncvla.training.periodic_eval import PeriodicEvaluator

    return PeriodicEvaluator(
        Path(cfg.out),
        cfg.eval_suite,
        every=cfg.eval_every,
        episodes_per_task=cfg.eval_episodes,
        mode="sfm" if cfg.stage == "policy" else "asyncvla",
        track=cfg.eval_track,
        extra_args=shlex.split(cfg.eval_args),
    )


def _join_workers(rank: int, world: int, cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """This process's rank, the number of processes and its device; with several processes, joins
    their group (spawned here on one machine, or by torchrun) and shares the CPU threads."""
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world > 1:
        if "RANK" not in os.environ:  # spawned by us on one machine
            os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
            torch.cuda.set_device(device)
    return rank, world, device


def _optimizer(model: AsyncVLA, cfg: TrainConfig, total: int):
    """AdamW (weight decay 0) over the stage's parameters, with a warm-up then cosine schedule."""
    optim = torch.optim.AdamW(_param_groups(model, cfg), betas=(0.9, 0.999), weight_decay=0.0)
    return optim, torch.optim.lr_scheduler.LambdaLR(optim, _cosine(total, cfg.warmup_steps))


def _stage_net(model: AsyncVLA, cfg: TrainConfig, world: int) -> nn.Module:
    """The stage's loss as a module, wrapped in DDP when there are several processes."""
    net = _StageLoss(model, cfg.stage, cfg.objective)
    if world == 1:
        return net
    tied = model.vlm.config.get_text_config().tie_word_embeddings
    return nn.parallel.DistributedDataParallel(net, find_unused_parameters=not tied)


def _restore(state_path: Path, optim, sched, generator: torch.Generator, rank: int, cfg: TrainConfig) -> int:
    """--resume: the optimizer, schedule and this rank's generator as saved; the step to go on from
    (0 when nothing was saved yet)."""
    if not state_path.is_file():
        return 0
    state = torch.load(state_path, weights_only=True)  # tensors and numbers only, never arbitrary pickles
    optim.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"][rank % len(state["generator"])])
    step = int(state["step"])
    log.info("resuming %s training at step %d", cfg.stage, step)
    return step


def _data_loader(dataset: ChunkDataset, cfg: TrainConfig, rank: int, world: int):
    """This rank's share of the shuffled chunks, in batches of `batch_size` samples."""
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=list,
        drop_last=len(dataset) >= cfg.batch_size * world,
    )
    return sampler, loader


def _mean_over_workers(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return value


class _LossLog:
    """The loss per step: `loss_<stage>.csv` (appended to on --resume) and the progress bar, both
    kept by rank 0 only."""

    def __init__(self, path: Path, cfg: TrainConfig, total: int, step: int, rank: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=step, desc=f"{cfg.stage}", disable=rank != 0, dynamic_ncols=True)
        self.file = None
        if rank == 0:
            new = not (cfg.resume and path.is_file())
            self.file = open(path, "w" if new else "a", newline="")  # noqa: SIM115 (kept open for the loop)
            self.writer = csv.writer(self.file)
            if new:
                self.writer.writerow(["step", "epoch", "loss", "lr"])

    def write(self, step: int, epoch: int, loss: torch.Tensor, lr: float) -> None:
        if self.file is not None:
            self.writer.writerow([step, epoch, f"{loss.item():.6g}", f"{lr:.3g}"])
            self.file.flush()
            self.bar.set_postfix(loss=f"{loss.item():.4f}")
        self.bar.update(1)

    def __enter__(self) -> _LossLog:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()


def _gather_generators(generator: torch.Generator, world: int) -> list[torch.Tensor]:
    """Every rank's generator state (so a resumed run draws what it would have drawn)."""
    state = generator.get_state()
    if world == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather(states, state)
    return states


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cfg: TrainConfig) -> Path:
    """Train as configured; returns the checkpoint directory."""
    if cfg.stage not in ("policy", "rater"):
        raise ValueError(f"unknown stage {cfg.stage!r}; expected policy or rater")
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r}; expected one of {OBJECTIVES}")
    if cfg.num_workers < 1:
        raise ValueError("--num-workers must be >= 1")
    if cfg.steps is not None and cfg.steps < 1 or cfg.epochs is not None and cfg.epochs < 1:
        raise ValueError("--steps / --epochs must be >= 1")
    if cfg.eval_every is not None and (cfg.eval_every < 1 or cfg.eval_episodes < 1):
        raise ValueError("--eval-every and --eval-episodes must be >= 1")
    log.info("training config: %s", asdict(cfg))
    if "WORLD_SIZE" in os.environ:  # launched by torchrun (one or several machines)
        train_worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), cfg)
    elif cfg.num_workers == 1:
        train_worker(0, 1, cfg)
    else:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        torch.multiprocessing.spawn(
            train_worker, args=(cfg.num_workers, cfg), nprocs=cfg.num_workers, join=True
        )
    return Path(cfg.out)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(
        prog="asyncvla-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "dataset", help="asyncvla-episodes directory (info.json) or LeRobot dataset (meta/info.json)"
    )
    p.add_argument("--out", required=True, help="checkpoint directory to write (and resume from)")
    p.add_argument("--stage", choices=["policy", "rater"], default="policy")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="unified")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int)
    g.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--vision-lr", type=float, default=2e-5)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["tiny", "qwen2.5-vl-3b"], default="tiny")
    p.add_argument("--backbone-dir", help="local Qwen2.5-VL-3B-Instruct directory (weights + tokenizer)")
    p.add_argument("--init", help="rater stage: policy checkpoint to start from (default: --out)")
    p.add_argument("--resume", action="store_true", help="continue from --out's training state")
    p.add_argument("--num-workers", type=int, default=1, help="data-parallel workers (torch DDP)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument(
        "--threads", type=int, help="torch CPU threads per worker (on a shared machine, 1 is often fastest)"
    )
    p.add_argument(
        "--pause-threshold",
        type=float,
        default=PAUSE_THRESHOLD,
        help="a step whose arm action's norm is below this, gripper unchanged, is a pause and has no label "
        "(default 1e-4, OpenVLA's LIBERO no-op rule; 0 disables)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e = p.add_argument_group("evaluate while training (docs/tracking.md)")
    e.add_argument("--eval-every", type=int, help="evaluate the checkpoint every N steps and at the end")
    e.add_argument("--eval-suite", default="tabletop", help="asyncvla-eval suite or family")
    e.add_argument("--eval-episodes", type=int, default=1, help="episodes per task")
    e.add_argument("--eval-track", help="log each evaluation to this TensorBoard directory")
    e.add_argument(
        "--eval-args", default="", help='other asyncvla-eval options, e.g. "--tasks 0,1 --workers 2"'
    )
    a = p.parse_args(argv)
    return TrainConfig(**{k: v for k, v in vars(a).items()})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
        run(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"asyncvla-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
