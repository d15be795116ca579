"""Per-chunk latency of AsyncVLA's inference modes, as ratios measured in one run.

    python scripts/bench_model.py --size tiny                       # CPU, writes results/bench/model_latency_cpu.{json,md}
    python scripts/bench_model.py --size qwen2.5-vl-3b --device cuda --dtype bfloat16

Weights are random (built from the named config, nothing is downloaded): latency does not
depend on the weights, except through how many tokens the rater masks (reported). Measured:
- the prefix pass (vision + language model, once per chunk, into the KV-cache),
- SFM with the cached prefix (10 suffix passes), the rater, AFM (10 suffix passes),
- each mode end to end (`sfm`, `asyncvla`, `random-mask`) and paper-style SFM that
  recomputes the whole prefix at every Euler step (Appendix B),
- the policy's act() (preprocessing included) at each batch size.
Medians over --repeats after --warmup calls; ratios are to cached SFM of the same batch size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers

from asyncvla import flow
from asyncvla.backbone import Preprocessor, build_tiny_tokenizer
from asyncvla.config import ModelConfig
from asyncvla.model import AsyncVLA
from asyncvla.normalize import NormStats
from asyncvla.policy import AsyncVLAPolicy


def timed(fn, repeats: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000.0


def bench_batch(model, policy, pre, cfg, B: int, rng, args, device, sync) -> dict:
    """Every measurement at batch size B."""
    obs = [
        SimpleNamespace(
            images={
                c: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
                for c in cfg.cameras
            },
            state=rng.normal(size=cfg.state_dim).astype(np.float32),
            instruction="put the red cube in the bowl and close the drawer",
        )
        for _ in range(B)
    ]
    inputs = pre([o.images for o in obs], [o.instruction for o in obs], np.stack([o.state for o in obs])).to(
        device
    )
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(B)]  # noqa: E731
    ones = torch.ones(B, cfg.chunk_length, device=device)
    noise = torch.randn(B, cfg.chunk_length, cfg.action_dim).to(device)
    with torch.no_grad():
        prefix = model.embed_prefix(inputs)
        cache, hidden = model.encode_prefix(prefix)
        sfm = model.integrate(cache, prefix, noise, ones)
        conf = model.rater(hidden, prefix.valid, sfm)
        m = (
            (torch.rand(B, cfg.chunk_length, generator=torch.Generator().manual_seed(0)) < 0.5)
            .float()
            .to(device)
        )

        def prefix_pass():
            model.encode_prefix(model.embed_prefix(inputs))

        r = {
            "batch": B,
            "prefix_tokens": int(prefix.embeds.shape[1]),
            "prefix_ms": timed(prefix_pass, args.repeats, args.warmup, sync),
            "sfm_steps_cached_ms": timed(
                lambda: model.integrate(cache, prefix, noise, ones), args.repeats, args.warmup, sync
            ),
            "rater_ms": timed(
                lambda: model.rater(hidden, prefix.valid, sfm), args.repeats, args.warmup, sync
            ),
            "afm_steps_cached_ms": timed(
                lambda: model.integrate(cache, prefix, flow.afm_start(sfm, noise, m), m),
                args.repeats,
                args.warmup,
                sync,
            ),
            "rater_masked_fraction": float((conf < cfg.threshold).float().mean()),
        }
        for mode in ("sfm", "asyncvla", "random-mask"):
            r[f"chunk_{mode}_ms"] = timed(
                lambda mode=mode: model.sample_actions(inputs, gens(), mode),
                args.repeats,
                args.warmup,
                sync,
            )
        r["chunk_sfm_recompute_prefix_ms"] = timed(
            lambda: model.sample_actions_recompute(inputs, gens()), args.repeats, args.warmup, sync
        )
    r["act_asyncvla_ms"] = timed(
        lambda: policy.act(obs, [f"e{i}@0" for i in range(B)]), args.repeats, args.warmup, sync
    )
    base = r["chunk_sfm_ms"]
    for key in ("chunk_asyncvla_ms", "chunk_random-mask_ms", "chunk_sfm_recompute_prefix_ms"):
        r["ratio_" + key[6:-3] + "_to_sfm"] = r[key] / base
    r["ratio_act_asyncvla_per_obs_ms"] = r["act_asyncvla_ms"] / B
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "qwen2.5-vl-3b"], default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    cfg = ModelConfig.named(args.size)
    # The tiny BPE stands in for the Qwen tokenizer at 3B (random weights: ids only need to exist);
    # its prompts are a few tokens longer than the real vocabulary's.
    tok = build_tiny_tokenizer(512)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = AsyncVLA(cfg, tok, dtype=dtype, device=device).eval()
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    rater_params = sum(p.numel() for p in model.rater.parameters())
    policy = AsyncVLAPolicy(model, tok, NormStats.identity(cfg.state_dim, cfg.action_dim), mode="asyncvla")
    pre = Preprocessor(cfg, tok)
    rng = np.random.default_rng(0)

    rows = []
    for B in args.batch_sizes:
        rows.append(bench_batch(model, policy, pre, cfg, B, rng, args, device, sync))
        print(json.dumps(rows[-1]), file=sys.stderr)

    tag = "cpu" if device.type == "cpu" else device.type
    name = f"model_latency_{tag}" if args.size == "tiny" else f"model_latency_{args.size}_{tag}"
    meta = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "size": args.size,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "params": params,
        "rater_params": rater_params,
        "build_s": build_s,
        "chunk_length": cfg.chunk_length,
        "flow_steps": cfg.flow_steps,
        "cameras": cfg.cameras,
        "image_size": cfg.image_size,
        "repeats": args.repeats,
        "note": "random weights; medians; ratios measured in this run; the machine may be shared (see load)",
        "loadavg_1min": Path("/proc/loadavg").read_text().split()[0]
        if Path("/proc/loadavg").exists()
        else None,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    cols = [
        ("batch", "B"),
        ("prefix_tokens", "prefix tok"),
        ("prefix_ms", "prefix ms"),
        ("sfm_steps_cached_ms", "SFM steps ms"),
        ("rater_ms", "rater ms"),
        ("afm_steps_cached_ms", "AFM steps ms"),
        ("chunk_sfm_ms", "sfm chunk ms"),
        ("chunk_asyncvla_ms", "asyncvla chunk ms"),
        ("chunk_random-mask_ms", "random-mask chunk ms"),
        ("chunk_sfm_recompute_prefix_ms", "paper-style SFM ms"),
        ("ratio_asyncvla_to_sfm", "asyncvla / sfm"),
        ("ratio_sfm_recompute_prefix_to_sfm", "paper-style / cached SFM"),
        ("act_asyncvla_ms", "act() ms"),
    ]
    lines = [
        f"# AsyncVLA per-chunk latency: {args.size}, {meta['device']}, {args.dtype}",
        "",
        f"`{meta['command']}`; torch {meta['torch']}, transformers {meta['transformers']}, {meta['threads']} threads, "
        f"{params / 1e6:.2f} M parameters (rater {rater_params / 1e6:.2f} M), L = {cfg.chunk_length}, "
        f"{cfg.flow_steps} Euler steps, {len(cfg.cameras)} cameras at {cfg.image_size}px. Random weights; medians of "
        f"{args.repeats}; 1-min load average at the end {meta['loadavg_1min']}.",
        "",
        "| " + " | ".join(c[1] for c in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k, _ in cols) + " |"
        )
    lines += [
        "",
        "asyncvla = prefix once + SFM + rater + AFM (all reusing the prefix KV-cache); paper-style SFM recomputes",
        "the prefix (vision included) at each of the 10 steps. act() includes image preprocessing and tokenization.",
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
