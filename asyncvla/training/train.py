"""`asyncvla-train`: unified policy training (Alg. 2) and confidence-rater training, one or N workers.

    asyncvla-train DATASET --out ckpt/ --stage policy --objective unified --steps 2000
    asyncvla-train DATASET --out ckpt/ --stage rater --steps 500        # after the policy, backbone frozen
    asyncvla-train DATASET --out ckpt/ --steps 2000 --resume            # continue after a stop
    asyncvla-train DATASET --out ckpt/ --steps 2000 --num-workers 2     # torch DDP (gloo on CPU, nccl on GPU)

`--out` is a checkpoint directory (asyncvla.load reads it) that also holds the loss log
(`loss_<stage>.csv`) and the resume state (`train_state_<stage>.pt`, tensors only, loaded with
weights_only=True). A save is whole or absent (asyncvla/training/saves.py); a fresh training
refuses an --out that holds another training (--resume continues it, --overwrite replaces it), and
a resume refuses a state saved with other settings (asyncvla/training/provenance.py). Flags are
checked before anything is read (flags.py), the data before the model is built (datasets.py): a
bad value is one line and exit 2. A non-finite loss or weight stops the training, the last good
save kept. Ctrl-C / SIGTERM stop it with exit 130 / 143, the evaluation subprocess and the workers
stopped, and a line that says how to resume. Under `torchrun` the process group comes from the
environment, so the same command scales to several machines.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import logging
import math
import os
import shlex
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
from asyncvla.training import flags, saves, sharding, workers
from asyncvla.training.datasets import (
    PAUSE_THRESHOLD,
    ChunkDataset,
    Sample,
    dataset_sha256,
    read_dataset,
    training_sampler,
)
from asyncvla.training.errors import Diverged, TrainError, one_line
from asyncvla.training.provenance import (
    changed_phase,
    check_resume,
    phase_settings,
    run_settings,
    training_record,
)
from asyncvla.training.stopping import SIGNALS

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
    overwrite: bool = False  # replace the training --out holds (a fresh training refuses it otherwise)
    num_workers: int = 1
    strategy: str | None = None  # ddp | fsdp (asyncvla/training/sharding.py); default by --size
    activation_checkpointing: bool | None = None  # recompute each layer in backward; default on CUDA
    fsdp_reshard_after_forward: bool = False  # ZeRO-3's memory instead of ZeRO-2's (sharding.py)
    backend: str | None = None  # gloo | nccl; default by --device
    ray_address: str | None = None  # train on this Ray cluster through Ray Train (ray_launch.py)
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
    eval_keep_checkpoints: bool = False  # keep each evaluated checkpoint copy (deleted once evaluated)
    collective_timeout_s: float = 1800.0  # how long a worker waits for the others (torch's default)


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
    workers: tuple[int, int] = (0, 1),
    normalizer=None,
) -> torch.Tensor:
    """Rater stage: SFM actions from the frozen model, Eq. (6) pseudo labels, MSE to the rater's p,
    over the tokens that carry a label (`ignore` marks padding and pauses). `workers` and
    `normalizer` as in AsyncVLA.compute_loss."""
    valid = torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device)
    if ignore is not None:
        valid = ~ignore
    rank, world = workers
    with torch.no_grad():
        prefix = model.embed_prefix(inputs)
        encoded = model.encode_prefix(prefix)
        B, L, A = actions.shape
        noise = torch.randn(B * world, L, A, generator=generator)[rank::world].to(actions.device)
        sfm = model.integrate(encoded, noise, torch.ones(actions.shape[:2], device=actions.device))
        q = flow.pseudo_labels((sfm - actions).pow(2).mean(-1), valid)
    p = model.rater(encoded.hidden, prefix.valid, sfm)
    return flow.masked_mean((p - q).pow(2), valid, normalizer)


class _StageLoss(nn.Module):
    """What DDP or FSDP wraps: forward() is the stage's loss on this process's share of the batch."""

    def __init__(self, model: AsyncVLA, stage: str, objective: str, rank: int = 0, world: int = 1):
        super().__init__()
        self.model, self.stage, self.objective = model, stage, objective
        self.workers = (rank, world)

    def forward(self, inputs, actions, ignore, generator):
        normalizer = None if self.workers[1] == 1 else self._mean_count
        if self.stage == "rater":
            return rater_loss(self.model, inputs, actions, generator, ignore, self.workers, normalizer)
        return self.model.compute_loss(
            inputs, actions, ignore, self.objective, generator, self.workers, normalizer
        )

    def _mean_count(self, count: torch.Tensor) -> torch.Tensor:
        return workers.mean_over_workers(count.detach().float().clone(), self.workers[1])


def _freeze(model: AsyncVLA, stage: str) -> None:
    """The rater stage trains the rater alone on the frozen policy; the policy stage leaves the rater
    (trained after it) alone. Before any wrapping: FSDP shards what is trained and what is not alike."""
    if stage == "rater":
        for p in model.parameters():
            p.requires_grad_(False)
    for p in model.rater.parameters():
        p.requires_grad_(stage == "rater")


def _param_groups(model: AsyncVLA, cfg: TrainConfig) -> list[dict]:
    if cfg.stage == "rater":
        return [{"params": list(model.rater.parameters()), "lr": cfg.lr}]
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


def _build(
    cfg: TrainConfig, dataset: ChunkDataset, info: dict, device, resuming: bool | None = None
) -> tuple[AsyncVLA, object, NormStats]:
    """The model to train: loaded from --out when resuming a save (`resuming`, default cfg.resume),
    from --init or --out for the rater stage, else built new from the data's sizes."""
    out = Path(cfg.out)
    resuming = cfg.resume if resuming is None else resuming
    if resuming or cfg.stage == "rater":
        src = Path(cfg.out if resuming or not cfg.init else cfg.init)
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
    rank, world, device = workers.join_workers(rank, world, cfg)
    try:
        _train(rank, world, device, cfg)
    finally:  # FSDP forms a group for one process too: never left behind in the caller's process
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(rank: int, world: int, device: torch.device, cfg: TrainConfig) -> None:
    out = Path(cfg.out)
    episodes, info = read_dataset(cfg.dataset)  # refuses what cannot be trained on, naming the file
    with saves.claimed(out) if rank == 0 else contextlib.nullcontext() as started:
        plan = saves.plan(cfg) if rank == 0 else None  # again, now that an interrupted save is recovered
        if world > 1:
            plan = workers.broadcast(plan)  # the others wait here for rank 0's --out
        _train_in(rank, world, device, cfg, episodes, info, plan, started)


def _train_in(rank, world, device, cfg: TrainConfig, episodes, info, plan: saves.Plan, started) -> None:
    out = Path(cfg.out)
    state_file = saves.state_path(out, cfg.stage)
    resuming = plan.resume
    model, tokenizer, stats = _build(cfg, ChunkDataset(episodes, 8), info, device, resuming)
    dataset = ChunkDataset(episodes, model.cfg.chunk_length, cfg.pause_threshold)
    data_sha256 = dataset_sha256(cfg.dataset)
    previous_record = model.training_record
    pre = Preprocessor(model.cfg, tokenizer)
    sampler, loader = _data_loader(dataset, cfg, rank, world)
    steps_per_epoch = len(loader)
    total = cfg.steps if cfg.steps else (cfg.epochs or 1) * steps_per_epoch
    if cfg.warmup_steps > total:
        raise TrainError(
            f"--warmup-steps {cfg.warmup_steps} is more than the {total} steps of the training: the learning "
            "rate would never reach --lr"
        )
    _check_data_fits(model, dataset, info, cfg)
    _freeze(model, cfg.stage)
    if flags.activation_checkpointing(cfg):
        model.vlm.gradient_checkpointing_enable()
    model.train()
    strategy = flags.strategy(cfg)
    net = _stage_net(model, cfg, strategy, rank, world, device)
    optim, sched = _optimizer(model, cfg, total)  # after FSDP made the parameters its shards
    settings = run_settings(cfg, data_sha256, world, device.type, previous_record)
    phases = [{"from_step": 0, **phase_settings(cfg, total)}]
    # one generator, the same on every process: each draws the whole global batch's noise and takes
    # its rows (AsyncVLA.compute_loss), so N processes draw what one would
    generator = torch.Generator().manual_seed(cfg.seed * 1000)
    step = 0
    if resuming:
        step, phases = _resume(out, cfg, model, optim, sched, generator, settings, previous_record, total)
    if rank == 0:
        log.info("training config: %s", asdict(cfg))
        log.info("%.1f%% of the recorded steps are pauses (no label)", 100 * dataset.pause_fraction())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    saved = step if resuming else None

    def write_checkpoint(directory: Path, step: int, weights: dict | None = None) -> None:
        model.training_record = training_record(
            previous_record,
            cfg,
            step,
            dataset,
            data_sha256,
            model.cfg.image_size,
            info,
            settings,
            phases,
            resuming,
        )
        save_checkpoint(directory, model, tokenizer, stats, weights)

    def save(step: int) -> None:
        """On every process (FSDP's saves are collectives); rank 0 writes all but the shards."""
        sharded = strategy == "fsdp"
        optimizer = "sharded" if sharded else optim.state_dict()  # FSDP's lives in sharding.sharded_dir
        state = {"step": step, "optimizer": optimizer, "scheduler": sched.state_dict()}
        state |= {"generator": [generator.get_state()], "settings": settings, "phases": phases}

        def write(staging: Path) -> None:
            write_checkpoint(staging, step, merged)
            torch.save(state, staging / state_file.name)

        with SIGNALS.deferred():  # a Ctrl-C waits for the save to be whole
            merged = sharding.merged_state(model) if sharded else None
            staging = saves.begin(out) if rank == 0 else None
            if sharded:
                workers.barrier()  # the staging directory is new before any shard goes in
                sharding.save_sharded(sharding.sharded_dir(saves.staging_path(out), cfg.stage), model, optim)
            if rank == 0:
                write(staging)
                saves.finish(out)
            workers.barrier()

    evaluator = _evaluator(cfg) if rank == 0 else None
    try:
        # FSDP's weights are merged by a collective, so every process takes part before rank 0 writes
        initial = sharding.merged_state(model) if strategy == "fsdp" and cfg.eval_every else None
        if evaluator is not None:
            evaluator.preflight(lambda directory: write_checkpoint(directory, step, initial))
        if rank == 0:
            started()  # from here on --out is this training's
            saves.apply(out, plan)
        if evaluator is not None and resuming:
            evaluator.resume_lost(step)
        if step >= total:
            log.info(
                "the %s stage is already trained to step %d of %d: nothing to train", cfg.stage, step, total
            )
        with _LossLog(saves.loss_path(out, cfg.stage), total, step, rank, resuming) as loss_log:
            epoch, skip = divmod(step, steps_per_epoch)
            while step < total:
                sampler.set_epoch(epoch)
                # a resumed epoch goes on with the batch after the last one trained on
                for samples in itertools.islice(loader, skip, None):
                    if step >= total:
                        break
                    inputs, actions, ignore = collate(samples, pre, stats, device)
                    with autocast:
                        loss = net(inputs, actions, ignore, generator)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    value = workers.mean_over_workers(loss.detach().float(), world).item()
                    if not math.isfinite(value):
                        raise Diverged(
                            f"the loss is {value} at step {step + 1}: training stopped, {_kept(out, saved)}; "
                            "lower --lr / --vision-lr (a --resume may change them) or check the data"
                        )
                    optim.step()
                    sched.step()
                    step += 1
                    loss_log.write(step, epoch, value, sched.get_last_lr()[-1])
                    evaluate = cfg.eval_every is not None and (step % cfg.eval_every == 0 or step == total)
                    if step % cfg.save_every == 0 or step == total or evaluate:
                        _check_finite_weights(model, step, out, saved)  # every rank stops
                        save(step)
                        if rank == 0 and evaluate:
                            evaluator.after_save(step)
                        saved = step
                    elif evaluator is not None:
                        evaluator.poll()
                skip = 0
                epoch += 1
        if dist.is_initialized():  # every worker is done; rank 0 evaluates alone, no collective waits for it
            dist.barrier()
            dist.destroy_process_group()
        if evaluator is not None:
            evaluator.close()  # the last evaluations finish before the command returns
    except BaseException:
        if evaluator is not None:
            evaluator.stop()
        raise


def _kept(out: Path, saved: int | None) -> str:
    return f"{out} keeps the last good save (step {saved})" if saved else "nothing was saved"


def _check_finite_weights(model: AsyncVLA, step: int, out: Path, saved: int | None) -> None:
    """Never save a non-finite weight: stop, keeping the last good save. Every process stops (FSDP's
    shards differ, so one process may see it alone)."""
    bad = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not torch.isfinite(sharding.local(p)).all()
    ]
    name = workers.first_of_any(bad[0] if bad else None)
    if name is not None:
        raise Diverged(
            f"weight {name} became non-finite at step {step}: training stopped without saving it, "
            f"{_kept(out, saved)}; lower --lr / --vision-lr (a --resume may change them) or check the data"
        )


def _check_data_fits(model: AsyncVLA, dataset: ChunkDataset, info: dict, cfg: TrainConfig) -> None:
    """A loaded model (rater stage, resume) reads the states, actions and cameras of this dataset."""
    ep = dataset.episodes[0]
    have = (ep.state.shape[1], ep.action.shape[1])
    want = (model.cfg.state_dim, model.cfg.action_dim)
    missing = [c for c in model.cfg.cameras if c not in info["cameras"]]
    if have != want or missing:
        raise TrainError(
            f"{cfg.dataset}: states of {have[0]} and actions of {have[1]} values from cameras {list(info['cameras'])}, "
            f"but the model in {cfg.init or cfg.out} reads states of {want[0]} and actions of {want[1]} from "
            f"{list(model.cfg.cameras)}"
        )


def _resume(out, cfg, model, optim, sched, generator, settings, record, total) -> tuple[int, list[dict]]:
    """--resume: the optimizer, schedule and generator as saved (FSDP's weights and optimizer from
    their shards), once the state is checked to be this training's; changed learning rates or step
    count apply from here, recorded as a new phase. Returns (the step to go on from, the phases)."""
    state_file = saves.state_path(out, cfg.stage)
    state = saves.read_state(out, cfg.stage)
    check_resume(state, settings, state_file, record, cfg.stage)
    if isinstance(state["optimizer"], str):  # "sharded"
        sharding.load_sharded(sharding.sharded_dir(out, cfg.stage), model, optim)
    else:
        optim.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"][0])
    step = int(state["step"])
    phases = [dict(p) for p in state["phases"]]
    phase = phase_settings(cfg, total)
    change = changed_phase(phases, phase)
    if change:
        if total < step:
            raise TrainError(f"--steps {total}: the {cfg.stage} stage was already trained to step {step}")
        log.warning(
            "resuming the %s stage at step %d with %s: applied from here, recorded as phase %d in config.json",
            cfg.stage,
            step,
            change,
            len(phases) + 1,
        )
        phases.append({"from_step": step, **phase})
        lrs = [cfg.lr] if cfg.stage == "rater" else [cfg.vision_lr, cfg.lr]
        factor = _cosine(total, cfg.warmup_steps)
        sched.base_lrs = list(lrs)
        for group, base in zip(optim.param_groups, lrs, strict=True):
            group["initial_lr"], group["lr"] = base, base * factor(step)
        sched._last_lr = [group["lr"] for group in optim.param_groups]
    log.info("resuming %s training at step %d", cfg.stage, step)
    return step, phases


def _evaluator(cfg: TrainConfig):
    if not cfg.eval_every:
        return None
    from asyncvla.training.periodic_eval import PeriodicEvaluator

    args = flags.eval_args(cfg)
    return PeriodicEvaluator(
        Path(cfg.out),
        cfg.eval_suite,
        every=cfg.eval_every,
        episodes_per_task=cfg.eval_episodes,
        mode=flags.eval_mode(cfg.stage, args),
        track=cfg.eval_track,
        extra_args=args,
        stage=cfg.stage,
        keep_checkpoints=cfg.eval_keep_checkpoints,
    )


def _optimizer(model: AsyncVLA, cfg: TrainConfig, total: int):
    """AdamW (weight decay 0) over the stage's parameters, with a warm-up then cosine schedule.
    Fused (one kernel for all parameters, as transformers' Trainer defaults to): the for-each
    implementation dispatches every elementwise op of every parameter, which FSDP's DTensor
    parameters make several times slower than the step's compute at small sizes."""
    groups = _param_groups(model, cfg)
    optim = torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=0.0, fused=True)
    return optim, torch.optim.lr_scheduler.LambdaLR(optim, _cosine(total, cfg.warmup_steps))


def _stage_net(
    model: AsyncVLA, cfg: TrainConfig, strategy: str, rank: int, world: int, device: torch.device
) -> nn.Module:
    """The stage's loss as a module: sharded by FSDP2, or wrapped in DDP when there are several
    processes."""
    net = _StageLoss(model, cfg.stage, cfg.objective, rank, world)
    if strategy == "fsdp":
        mesh = workers.mesh(device, world)
        return sharding.fully_shard_model(model, net, cfg.stage, device, mesh, cfg.fsdp_reshard_after_forward)
    if world == 1:
        return net
    tied = model.vlm.config.get_text_config().tie_word_embeddings
    return nn.parallel.DistributedDataParallel(net, find_unused_parameters=not tied)


def _data_loader(dataset: ChunkDataset, cfg: TrainConfig, rank: int, world: int):
    """This rank's share of the shuffled chunks (a mixture's: drawn by its weights), in batches of
    `batch_size` samples."""
    sampler = training_sampler(dataset, rank, world, cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=list,
        drop_last=len(dataset) >= cfg.batch_size * world,
    )
    return sampler, loader


class _LossLog:
    """The loss per step: `loss_<stage>.csv` and the progress bar, both kept by rank 0 only. A
    resumed training keeps the rows up to its save and appends from there."""

    def __init__(self, path: Path, total: int, step: int, rank: int, resuming: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=step, desc=path.stem[5:], disable=rank != 0, dynamic_ncols=True)
        self.file = None
        if rank == 0:
            if resuming:
                saves.truncate_log(path, step)
            new = not (resuming and path.is_file())
            self.file = open(path, "w" if new else "a", newline="")  # noqa: SIM115 (kept open for the loop)
            self.writer = csv.writer(self.file)
            if new:
                self.writer.writerow(["step", "epoch", "loss", "lr"])

    def write(self, step: int, epoch: int, loss: float, lr: float) -> None:
        if self.file is not None:
            self.writer.writerow([step, epoch, f"{loss:.6g}", f"{lr:.3g}"])
            self.file.flush()
            self.bar.set_postfix(loss=f"{loss:.4f}")
        self.bar.update(1)

    def __enter__(self) -> _LossLog:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()


def run(cfg: TrainConfig) -> Path:
    """Train as configured; returns the checkpoint directory. A refusal raises TrainError (a
    ValueError) before anything is written: the flags, then --out (`saves.plan`, read only), then
    the data; rank 0 then locks --out and clears what the training replaces."""
    flags.check_config(cfg)
    saves.plan(cfg)
    if cfg.ray_address:
        from asyncvla.training.ray_launch import train_on_ray

        train_on_ray(cfg, train_worker)
    elif "WORLD_SIZE" in os.environ:  # launched by torchrun (one or several machines)
        train_worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), cfg)
    elif cfg.num_workers == 1:
        train_worker(0, 1, cfg)
    else:
        workers.spawn(cfg, train_worker)
    return Path(cfg.out)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (a missing or malformed argument) are one line and exit 2."""

    def error(self, message: str):
        raise TrainError(f"{message} (see asyncvla-train --help)")


# options that do nothing in some configuration: refused there, so they are never silently ignored
EVAL_OPTIONS = {"eval_suite": "tabletop", "eval_episodes": 1, "eval_track": None, "eval_args": ""}
EVAL_OPTIONS |= {"eval_keep_checkpoints": False}
POLICY_OPTIONS = {"objective": "unified", "vision_lr": 2e-5, "size": "tiny", "backbone_dir": None}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = _Parser(
        prog="asyncvla-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "dataset",
        help="asyncvla-episodes directory (info.json), LeRobot dataset (meta/info.json) or a mixture file "
        "of them with weights (.json / .yaml, docs/model.md)",
    )
    p.add_argument("--out", required=True, help="checkpoint directory to write (and resume from)")
    p.add_argument("--stage", choices=["policy", "rater"], default="policy")
    p.add_argument("--objective", choices=list(OBJECTIVES))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int)
    g.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--vision-lr", type=float)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["tiny", "qwen2.5-vl-3b"])
    p.add_argument("--backbone-dir", help="local Qwen2.5-VL-3B-Instruct directory (weights + tokenizer)")
    p.add_argument("--init", help="rater stage: policy checkpoint to start from (default: --out)")
    r = p.add_mutually_exclusive_group()
    r.add_argument("--resume", action="store_true", help="continue the training --out holds (same settings)")
    r.add_argument(
        "--overwrite", action="store_true", help="replace the training --out holds (refused without it)"
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=1,
        help="data-parallel processes on this machine (or Ray Train workers with --ray-address); "
        "--batch-size is per process",
    )
    d = p.add_argument_group("distributed training (docs/distributed.md)")
    d.add_argument(
        "--strategy",
        choices=sharding.STRATEGIES,
        help="ddp: a full copy per process; fsdp: FSDP2 sharding of weights, gradients and optimizer "
        "(default: fsdp for qwen2.5-vl-3b, ddp for tiny)",
    )
    d.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="recompute each decoder layer in backward (default: on CUDA)",
    )
    d.add_argument(
        "--fsdp-reshard-after-forward",
        action="store_true",
        help="free each block's gathered weights after its forward (ZeRO-3: less memory, one more "
        "all-gather a block); default: keep them to the backward (ZeRO-2, as the paper trains)",
    )
    d.add_argument("--backend", choices=["gloo", "nccl"], help="process group backend (default by --device)")
    d.add_argument(
        "--ray-address",
        help="train on this Ray cluster with Ray Train ('local' starts one here); --num-workers workers",
    )
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
    e.add_argument("--eval-suite", help="asyncvla-eval suite or family (default tabletop)")
    e.add_argument("--eval-episodes", type=int, help="episodes per task (default 1)")
    e.add_argument("--eval-track", help="log each evaluation to this TensorBoard directory")
    e.add_argument("--eval-args", help='other asyncvla-eval options, e.g. "--tasks 0,1 --workers 2"')
    e.add_argument(
        "--eval-keep-checkpoints",
        action="store_true",
        default=None,
        help="keep each evaluated checkpoint copy (deleted once evaluated)",
    )
    a = vars(p.parse_args(argv))
    given = {k for k, v in a.items() if v is not None}
    if a["eval_every"] is None and given & set(EVAL_OPTIONS):
        flag = "--" + sorted(given & set(EVAL_OPTIONS))[0].replace("_", "-")
        raise TrainError(f"{flag} does nothing without --eval-every N (evaluate every N steps)")
    if a["stage"] == "rater" and given & set(POLICY_OPTIONS):
        flag = "--" + sorted(given & set(POLICY_OPTIONS))[0].replace("_", "-")
        raise TrainError(
            f"{flag}: the rater stage trains only the rater, on the policy checkpoint as it is; leave it out"
        )
    if a["resume"] and a["backbone_dir"] is not None:
        raise TrainError(
            "--backbone-dir with --resume: the weights come from --out's checkpoint; leave it out"
        )
    for defaults in (EVAL_OPTIONS, POLICY_OPTIONS):
        a |= {k: v for k, v in defaults.items() if a[k] is None}
    return TrainConfig(**a)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signals = SIGNALS.install()
    cfg = None
    try:
        cfg = parse_args(argv)
        run(cfg)
    except KeyboardInterrupt:
        print(f"asyncvla-train: interrupted; {_how_to_resume(cfg, argv)}", file=sys.stderr)
        return signals.exit_code()
    except (ValueError, OSError) as e:  # ours (TrainError, CheckpointError, a missing dataset) and the disk's
        print(f"asyncvla-train: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        signals.restore()
    return 0


def _how_to_resume(cfg: TrainConfig | None, argv: list[str]) -> str:
    if cfg is None:
        return "nothing was started"
    steps = saves.inspect(Path(cfg.out)).stage_steps(cfg.stage)
    saved = f"the last save is of step {steps}" if steps else "nothing was saved yet"
    args = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    return f"{saved}; resume with: asyncvla-train {shlex.join(args)}"


if __name__ == "__main__":
    sys.exit(main())
