"""Training throughput of asyncvla-train's own loop: samples/s, step time, peak memory and MFU for
each --strategy (ddp, fsdp), with and without activation checkpointing, at the batches given or
at the largest that fits (--find-max-batch, CUDA), on synthetic LIBERO-shaped batches (two 224 px
cameras at the 3B, the model's own image size at tiny; random weights, so nothing is downloaded).

    python scripts/bench_train.py --size tiny --device cpu --workers 2 --batch-sizes 8
    python scripts/bench_train.py --size qwen2.5-vl-3b --device cuda --workers 1 --find-max-batch

Each row builds the model anew (the same seed), wraps it as the trainer does
(`train._stage_net`: DDP or FSDP2 with bf16 compute on CUDA), takes the trainer's optimizer and
`collate`, runs `--warmup` steps, then times `--steps` (each ended by a device sync). MFU counts
the model FLOPs of a forward and backward pass (torch's FlopCounterMode on the unwrapped model,
activation recomputation not counted, as MFU is defined) against the GPU's dense bf16 peak.
Writes results/bench/train_throughput_<size>_<device>.{json,md}, with the commit and whether the
tree was clean.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asyncvla.backbone import Preprocessor, build_tiny_tokenizer  # noqa: E402
from asyncvla.config import ModelConfig  # noqa: E402
from asyncvla.model import AsyncVLA  # noqa: E402
from asyncvla.normalize import NormStats  # noqa: E402
from asyncvla.training import train, workers  # noqa: E402
from asyncvla.training.datasets import Sample  # noqa: E402
from evalsuite.tree_state import tree_state  # noqa: E402

# dense bf16 peak FLOP/s by GPU name (vendor datasheets, SXM parts)
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12}
INSTRUCTION = "put both the alphabet soup and the tomato sauce in the basket"


def synthetic_batch(cfg: ModelConfig, batch: int, rng: np.random.Generator) -> list[Sample]:
    """LIBERO-shaped samples: each camera an image of the model's size, 8-D state, a 7-D chunk."""
    size = cfg.image_size
    return [
        Sample(
            {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cfg.cameras},
            rng.standard_normal(cfg.state_dim).astype(np.float32),
            INSTRUCTION,
            rng.standard_normal((cfg.chunk_length, cfg.action_dim)).astype(np.float32),
            np.zeros(cfg.chunk_length, bool),
            np.zeros(cfg.chunk_length, bool),
        )
        for _ in range(batch)
    ]


def model_flops_per_sample(model: AsyncVLA, pre, stats, cfg, device) -> float:
    """Forward + backward FLOPs of one sample's policy loss (no recomputation counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs, actions, ignore = train.collate(
        synthetic_batch(cfg, 1, np.random.default_rng(0)), pre, stats, device
    )
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model.compute_loss(inputs, actions, ignore, "unified", torch.Generator().manual_seed(0))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(args, strategy: str, checkpointing: bool, batch: int, rank: int, world: int, device) -> dict:
    """One row: a fresh model wrapped as the trainer wraps it, --warmup then --steps timed steps."""
    cfg = ModelConfig.named(args.size)
    tok = build_tiny_tokenizer(512)  # ids only need to exist: random weights
    torch.manual_seed(0)
    model = AsyncVLA(cfg, tok, device=device)
    stats = NormStats.identity(cfg.state_dim, cfg.action_dim)
    pre = Preprocessor(cfg, tok)
    flops = model_flops_per_sample(model, pre, stats, cfg, device) if rank == 0 else 0.0
    tcfg = train.TrainConfig(
        dataset="",
        out="",
        size=args.size,
        strategy=strategy,
        activation_checkpointing=checkpointing,
        batch_size=batch,
        device=str(device),
        lr=1e-5,
        vision_lr=1e-5,
    )
    train._freeze(model, "policy")
    if checkpointing:
        model.vlm.gradient_checkpointing_enable()
    model.train()
    net = train._stage_net(model, tcfg, strategy, rank, world, device)
    optim, _ = train._optimizer(model, tcfg, args.warmup + args.steps)
    generator = torch.Generator().manual_seed(0)
    batches = [
        train.collate(synthetic_batch(cfg, batch, np.random.default_rng(rank * 100 + i)), pre, stats, device)
        for i in range(2)
    ]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i in range(args.warmup + args.steps):
        inputs, actions, ignore = batches[i % 2]
        sync()
        t0 = time.perf_counter()
        with autocast:
            loss = net(inputs, actions, ignore, generator)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    row = {
        "strategy": strategy,
        "activation_checkpointing": checkpointing,
        "batch_per_process": batch,
        "processes": world,
        "step_s": step_s,
        "step_s_all": times,
        "samples_per_s": world * batch / step_s,
        "peak_memory_gib": None if peak is None else peak / 2**30,
        "model_flops_per_sample": flops,
    }
    peak_flops = next(
        (
            v
            for k, v in PEAK_BF16.items()
            if k in (torch.cuda.get_device_name(device) if device.type == "cuda" else "")
        ),
        None,
    )
    row["mfu"] = flops * row["samples_per_s"] / (peak_flops * world) if peak_flops else None
    del net, optim, model, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _agree(failed: bool, world: int) -> bool:
    """Whether any process failed (so that they all leave a batch search together)."""
    if world == 1:
        return failed
    flag = torch.tensor([int(failed)])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _measured_or_oom(args, strategy, checkpointing, batch, rank, world, device) -> dict:
    try:
        row, failed = measure(args, strategy, checkpointing, batch, rank, world, device), False
    except torch.OutOfMemoryError:
        row, failed = None, True
    if failed:  # outside the handler: its traceback no longer holds the row's model
        gc.collect()
        torch.cuda.empty_cache()
    if _agree(failed, world):
        return {
            "strategy": strategy,
            "activation_checkpointing": checkpointing,
            "batch_per_process": batch,
            "oom": True,
        }
    if rank == 0:
        print(json.dumps({k: v for k, v in row.items() if k != "step_s_all"}), file=sys.stderr, flush=True)
    return row


def bench_process(rank: int, world: int, args, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rows = []
    if args.find_max_batch:
        for strategy in args.strategies:
            for checkpointing in args.activation_checkpointing:
                for batch in [args.batch_sizes[0] * 2**k for k in range(12)]:  # from the first given
                    row = _measured_or_oom(args, strategy, checkpointing, batch, rank, world, device)
                    rows.append(row)
                    if row.get("oom"):
                        break
    else:
        # every configuration once per round, --repeats rounds: a shared machine's load drifts, and
        # alternating puts each configuration's rounds under the same drift
        configs = [
            (strategy, checkpointing, batch)
            for batch in args.batch_sizes
            for checkpointing in args.activation_checkpointing
            for strategy in args.strategies
        ]
        rounds = [
            [_measured_or_oom(args, *c, rank, world, device) for c in configs] for _ in range(args.repeats)
        ]
        for i in range(len(configs)):
            runs = [r[i] for r in rounds]
            row = dict(runs[0])
            if not row.get("oom"):
                row["step_s_rounds"] = [r["step_s"] for r in runs]
                row["step_s"] = statistics.median(row["step_s_rounds"])
                row["samples_per_s"] = world * row["batch_per_process"] / row["step_s"]
                if row["mfu"] is not None:
                    row["mfu"] = statistics.median(r["mfu"] for r in runs)
            rows.append(row)
    if rank == 0:
        results.put(rows)
    dist.destroy_process_group()


def render(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"# asyncvla-train throughput: {meta['size']} on {meta['device']} x {meta['processes']}",
        "",
        f"`{meta['command']}` at commit {(meta['commit'] or '?')[:12]} (clean tree: {meta['clean_tree']}); "
        f"torch {meta['torch']}; {meta['note']}",
        "",
        "| strategy | activation ckpt | batch / process | step (s) | samples/s | peak memory (GiB) | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("oom"):
            lines.append(
                f"| {r['strategy']} | {r['activation_checkpointing']} | {r['batch_per_process']} | out of memory | | | |"
            )
            continue
        peak = "" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        lines.append(
            f"| {r['strategy']} | {r['activation_checkpointing']} | {r['batch_per_process']} | {r['step_s']:.3f} | "
            f"{r['samples_per_s']:.1f} | {peak} | {mfu} |"
        )
    ddp = {
        (r["activation_checkpointing"], r["batch_per_process"]): r
        for r in rows
        if r["strategy"] == "ddp" and not r.get("oom")
    }
    ratios = [
        f"fsdp / ddp step time at batch {r['batch_per_process']}, activation ckpt {r['activation_checkpointing']}: "
        f"{r['step_s'] / ddp[(r['activation_checkpointing'], r['batch_per_process'])]['step_s']:.2f}"
        for r in rows
        if r["strategy"] == "fsdp"
        and not r.get("oom")
        and (r["activation_checkpointing"], r["batch_per_process"]) in ddp
    ]
    if ratios:
        lines += ["", *[f"- {line}" for line in ratios]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "qwen2.5-vl-3b"], default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--workers", type=int, default=2, help="processes (one GPU each on CUDA)")
    p.add_argument("--strategies", nargs="+", choices=["ddp", "fsdp"], default=["ddp", "fsdp"])
    p.add_argument(
        "--activation-checkpointing",
        nargs="+",
        choices=["off", "on"],
        default=["off"],
        help="rows without and/or with activation checkpointing",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    p.add_argument(
        "--find-max-batch", action="store_true", help="double the batch until it runs out of memory (CUDA)"
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="rounds over the configurations (median)")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = p.parse_args(argv)
    args.activation_checkpointing = [v == "on" for v in args.activation_checkpointing]
    if args.device == "cuda" and torch.cuda.device_count() < args.workers:
        p.error(f"--workers {args.workers} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    with workers.rendezvous():  # in the processes' environment only: main() may run inside a program
        torch.multiprocessing.start_processes(
            bench_process, args=(args.workers, args, results), nprocs=args.workers, start_method="spawn"
        )
    rows = results.get()
    meta = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "size": args.size,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else (platform.processor() or "cpu"),
        "processes": args.workers,
        "torch": torch.__version__,
        "threads_per_process": args.threads,
        "load_average": os.getloadavg(),
        "note": "random weights, synthetic batches; step: the median over --repeats rounds of each round's "
        "median timed step, the configurations alternating within a round; every row measured in this run",
        **tree_state(),  # the commit measured, and whether the tree was exactly it
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"train_throughput_{args.size}_{args.device}"
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / f"{name}.md").write_text(render(meta, rows))
    print(render(meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
