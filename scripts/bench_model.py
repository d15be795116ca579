"""Per-chunk latency of AsyncVLA's inference paths, each optimisation as its own row, one run.

    python scripts/bench_model.py --size tiny --threads 1          # CPU: results/bench/model_latency_cpu.{json,md}
    python scripts/bench_model.py --size qwen2.5-vl-3b --device cuda --dtype bfloat16 --batch-sizes 1 16 --fuse

Weights are random (built from the named config, nothing is downloaded): latency does not
depend on the weights, except through how many tokens the rater masks (reported). At each batch
size, medians over --repeats after --warmup calls (the terms of each ratio, the chunk rows and
act(), or sfm and paper-style, called in turn in one loop, so that a shared machine's drifting load
hits them alike), for the asyncvla chunk (prefix, SFM, rater, AFM) computed by:
- `eager`: the reference, `AsyncVLA.sample_actions` (DynamicCache grown and cropped at every
  step, layout and time embedding rebuilt at every step, transformers' text model per step);
- `hf_static`: the same steps through transformers' own `StaticCache` API (the prefix written
  once, the suffix's slot overwritten in place, the layout built once per chunk; the text
  model's per-call machinery kept). Measured to decide between it and driving the layers;
- `fast_no_graphs`: `asyncvla.fast.FastSampler` without graphs (static buffers, layout and time
  embeddings per chunk, the decoder layers driven through their weights): the CPU default;
- `fast_no_grad`: the same under `torch.no_grad` instead of `torch.inference_mode`, as it ran
  before (inference mode spares every small op its autograd bookkeeping);
- `fast`: the same with CUDA graphs (CUDA only): the GPU default;
- `fast_fused`: a `torch.compile`d decoder layer, inside the graphs on CUDA (--fuse; the compile
  time is reported as its own figure). The CUDA default; on CPU measured to show what compiling
  would buy there, and not the default;
- `compiled_chunk`: the whole chunk after the host's preparation torch.compile'd, without graphs
  (--compile-chunk; a CPU experiment with its compile time, not a path the policy takes).
Also: the eager stages (prefix, SFM steps, rater, AFM steps), the sfm chunk eager and fast, the
paper-style pipeline (prefix recomputed at every step) eager and with the fast path's
optimisations, image preprocessing + tokenisation alone, and act() end to end, eager and fast.
With --profile, the floor: on CPU the fast chunk's time in arithmetic alone (matrix products,
attention, convolution), the least any path doing the same maths could take; on CUDA its kernels'
time without graphs, what removing launch gaps alone could reach (fusing kernels goes below it).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers

from asyncvla import flow
from asyncvla.backbone import Preprocessor, build_tiny_tokenizer
from asyncvla.config import ModelConfig
from asyncvla.fast.graphs import PREFIX_MULTIPLE, CapturedCall, batch_bucket, pad_rows, round_up
from asyncvla.fast.sampler import FastSampler
from asyncvla.model import AsyncVLA, Prefix, additive_mask, make_attention_mask
from asyncvla.normalize import NormStats
from asyncvla.policy import AsyncVLAPolicy
from evalsuite.tree_state import tree_state


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


def timed_together(fns: dict, repeats: int, warmup: int, sync) -> dict:
    """Medians (ms) of several functions called in turn, one call each per round: the terms of a
    ratio then share the machine's load, which on a shared machine drifts between separate loops."""
    times: dict = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            out = fn()
            sync()
            if i >= warmup:
                # a function that returns a float reports its own time: the profiled floor
                times[name].append(out if isinstance(out, float) else time.perf_counter() - t)
    return {name: statistics.median(ts) * 1000.0 for name, ts in times.items()}


class HFStaticCacheChunk:
    """The asyncvla chunk through transformers' StaticCache (the `hf_static` row; benchmark only)."""

    def __init__(self, model: AsyncVLA):
        self.model = model

    @torch.inference_mode()  # as the reference's and the fast path's sample_actions
    def sample_actions(self, inputs, generators, mode="asyncvla", threshold=None):
        from transformers import StaticCache

        m, L = self.model, self.model.cfg.chunk_length
        threshold = m.cfg.threshold if threshold is None else threshold
        n_sfm, n_afm, _ = m._draw_noise(generators)
        prefix = m.embed_prefix(inputs)
        B, P = prefix.valid.shape
        cache = StaticCache(config=m.lm.config, max_cache_len=P + L)
        causal = make_attention_mask(prefix.valid, torch.ones(P, dtype=torch.bool, device=m.device))
        full = torch.zeros(B, 1, P, P + L, dtype=m.dtype, device=m.device) + torch.finfo(m.dtype).min
        full[..., :P] = additive_mask(causal, m.dtype)
        hidden = m.lm(
            inputs_embeds=prefix.embeds,
            attention_mask=full,
            position_ids=prefix.positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        allowed, positions, _ = m._suffix_layout(prefix, L)
        mask = additive_mask(allowed[:, -L:], m.dtype)
        taus = flow.time_grid(m.cfg.flow_steps)

        def integrate(a, mm):
            for k in range(m.cfg.flow_steps):
                for layer in cache.layers:  # the API appends: rewind it onto the suffix's slot
                    layer.cumulative_length.fill_(P)
                out = m.lm(
                    inputs_embeds=m.embed_suffix(a, float(taus[k]) * mm),
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                )
                v = m.action_out_proj(out.last_hidden_state).float()
                a = flow.euler_step(a, v, float(taus[k] - taus[k + 1]), mm)
            return a

        sfm = integrate(n_sfm, torch.ones(B, L, device=m.device))
        mm = flow.rater_mask(m.rater(hidden, prefix.valid, sfm), threshold)
        return integrate(flow.afm_start(sfm, n_afm, mm), mm)


def bench_batch(model, samplers, policies, pre, cfg, B: int, rng, args, sync) -> dict:
    """Every measurement at batch size B."""
    device = model.device
    obs = _observations(cfg, B, rng)
    states = np.stack([o.state for o in obs])
    inputs = pre([o.images for o in obs], [o.instruction for o in obs], states, device=device).to(device)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(B)]  # noqa: E731
    run = lambda fn: timed(fn, args.repeats, args.warmup, sync)  # noqa: E731
    r: dict = {"batch": B}
    r["preprocess_ms"] = run(
        lambda: pre([o.images for o in obs], [o.instruction for o in obs], states, device=device)
    )
    r.update(eager_stages(model, inputs, run))
    plain = samplers["fast_no_graphs"]
    # compiles first (they may take minutes), so that every chunk row is timed in the loop below
    compiled = compile_rows(samplers, inputs, gens, args, sync, r)
    # each path sets its own grad mode, as a user's call would meet it
    chunks = {"eager_ms": lambda: model.sample_actions(inputs, gens(), "asyncvla")}
    for name, sampler in samplers.items():
        if name != "fast_fused":
            chunks[f"{name}_ms"] = lambda s=sampler: s.sample_actions(inputs, gens(), "asyncvla")
    chunks.update(compiled)
    # the default path as it ran before sample_actions moved to torch.inference_mode
    chunks["fast_no_grad_ms"] = lambda: torch.no_grad()(FastSampler.sample_actions.__wrapped__)(
        plain, inputs, gens(), "asyncvla"
    )
    keys = [f"e{i}@0" for i in range(B)]
    for name, policy in policies.items():
        chunks[f"act_{name}_ms"] = lambda p=policy: p.act(obs, keys)
    r.update(timed_together(chunks, args.repeats, args.warmup, sync))
    # which path each fast row and act() actually ran: a compile or capture that failed falls back
    # to a slower path, and its row must not pass for the optimised one
    for name, sampler in samplers.items():
        if isinstance(sampler, FastSampler):
            r[f"{name}_path"] = sampler.fast_path
            if sampler.fallbacks:
                r[f"{name}_fallbacks"] = list(sampler.fallbacks)
    r["act_fast_path"] = policies["fast"].fast_path
    if policies["fast"].sampler.fallbacks:
        r["act_fast_fallbacks"] = list(policies["fast"].sampler.fallbacks)
    best = samplers["fast"] if "fast" in samplers else plain
    pairs = {
        "eager_sfm_ms": lambda: model.sample_actions(inputs, gens(), "sfm"),
        "fast_sfm_ms": lambda: best.sample_actions(inputs, gens(), "sfm"),
        "eager_paper_style_ms": lambda: model.sample_actions_recompute(inputs, gens()),
        "fast_paper_style_ms": lambda: best.sample_actions_recompute(inputs, gens()),
    }
    r.update(timed_together(pairs, args.repeats, args.warmup, sync))
    if args.profile:
        # the floor as a share of the chunk it profiles, the two timed side by side, then applied
        # to the main loop's chunk row: in that loop the profiler slowed the rows after it
        floor = timed_together(
            {
                "chunk": lambda: plain.sample_actions(inputs, gens(), "asyncvla"),
                "floor": lambda: profiled_chunk(plain, inputs, gens)[0],
            },
            args.repeats,
            args.warmup,
            sync,
        )
        r["floor_ms"] = r["fast_no_graphs_ms"] * floor["floor"] / floor["chunk"]
    # the default path, what act() runs (on CUDA graphs with the compiled layer, on CPU the fast
    # path neither compiled nor graphed): the chunk row that ran the path act() ran, by the paths
    # recorded, not by which rows raised nothing
    r["default_row"] = default_row(r)
    default = r["default_row"].removesuffix("_ms")
    try:
        r.update(fast_stages(samplers[default], inputs, gens, run))
    except Exception as e:  # optional rows: say why they are missing, keep the others
        r["fast_stages_error"] = f"{type(e).__name__}: {e}"[:300]
    if args.profile:
        events = profiled_chunk(plain, inputs, gens)[1]
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        r["profile_table"] = "fast path without graphs\n" + events.table(sort_by=sort, row_limit=30)
    return derive(r)


def _observations(cfg, B: int, rng) -> list[SimpleNamespace]:
    """B observations with random images and states and one long instruction."""
    return [
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


@torch.inference_mode()  # as sample_actions runs them
def eager_stages(model, inputs, run) -> dict:
    """The reference path's stages, each timed alone: vision and embeddings, the prefix pass, ten
    SFM steps, the rater, ten AFM steps over a random half of the tokens."""
    cfg, device = model.cfg, model.device
    B = inputs.input_ids.shape[0]
    ones = torch.ones(B, cfg.chunk_length, device=device)
    noise = torch.randn(B, cfg.chunk_length, cfg.action_dim).to(device)
    prefix = model.embed_prefix(inputs)
    encoded = model.encode_prefix(prefix)
    sfm = model.integrate(encoded, noise, ones)
    conf = model.rater(encoded.hidden, prefix.valid, sfm)
    m = (torch.rand(B, cfg.chunk_length, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    m = m.to(device)
    return {
        "prefix_tokens": int(prefix.embeds.shape[1]),
        "rater_masked_fraction": float((conf < cfg.threshold).float().mean()),
        "vision_ms": run(lambda: model.embed_prefix(inputs)),
        "prefix_ms": run(lambda: model.encode_prefix(model.embed_prefix(inputs))),
        "sfm_steps_ms": run(lambda: model.integrate(encoded, noise, ones)),
        "rater_ms": run(lambda: model.rater(encoded.hidden, prefix.valid, sfm)),
        "afm_steps_ms": run(lambda: model.integrate(encoded, flow.afm_start(sfm, noise, m), m)),
    }


def default_row(r: dict) -> str:
    """The chunk row (column name) that ran the path act() took; a row without such a path, where
    none matches (act() fell back to a path no row measured), named in `default_row_note`."""
    rows = ("fast_fused", "fast", "fast_no_graphs")
    for name in rows:
        if f"{name}_ms" in r and r.get(f"{name}_path") == r["act_fast_path"]:
            return f"{name}_ms"
    r["default_row_note"] = (
        f"no chunk row ran act()'s path ({r['act_fast_path']}); the fastest fast row stands in"
    )
    return next(f"{k}_ms" for k in rows if f"{k}_ms" in r)


def compile_rows(samplers, inputs, gens, args, sync, r: dict) -> dict:
    """Compile (and on CUDA capture) the compiled rows before any timing; their compile times and
    errors go into `r`; returns the rows to time, by column."""
    compiled = {}
    if "fast_fused" in samplers:
        fused = samplers["fast_fused"]
        t = time.perf_counter()
        try:
            fused.sample_actions(inputs, gens(), "asyncvla")  # compiles, and captures on CUDA
            sync()
            r["fast_fused_compile_s"] = time.perf_counter() - t
            compiled["fast_fused_ms"] = lambda: fused.sample_actions(inputs, gens(), "asyncvla")
        except Exception as e:  # an optional row: say why it is missing, keep the others
            r["fast_fused_error"] = f"{type(e).__name__}: {e}"[:300]
    if args.compile_chunk:
        info, sample = compile_chunk(samplers["fast_no_graphs"], inputs, gens)
        r.update(info)
        if sample:
            compiled["compiled_chunk_ms"] = sample
    return compiled


def fast_stages(sampler: FastSampler, inputs, gens, run) -> dict:
    """The default path's chunk in stages, each timed alone (on CUDA each its own graph, with the
    batch and prompt padded as `sample_actions` pads them): the prefix (vision tower, embeddings,
    language-model pass), 10 suffix steps and the rater. Where the chunk's time goes once host
    overhead is gone, which the eager stage columns cannot say."""
    graphs = sampler.graphs_enabled
    B = len(gens())
    rows = batch_bucket(B) if graphs else None
    length = round_up(inputs.input_ids.shape[1], PREFIX_MULTIPLE) if graphs else None
    host = sampler.host_prefix(inputs, rows, length)
    n_sfm, _, _ = (pad_rows(t, rows or B) for t in sampler.model._draw_noise(gens()))
    ones = torch.ones(n_sfm.shape[:2], device=n_sfm.device)

    def prefix_pass(input_ids, pixel_values, state, image_slots, valid, positions, next_position):
        embeds = sampler.embed(host.plan, input_ids, pixel_values, state, image_slots)
        return sampler.encode_prefix(Prefix(embeds, valid, positions, next_position))

    def stage(fn, *args):
        call = CapturedCall(fn, args) if graphs else None
        return lambda: call(*args) if call else fn(*args)

    with torch.inference_mode():
        state = prefix_pass(*host.tensors())
        stages = {
            "fast_prefix_ms": stage(prefix_pass, *host.tensors()),
            "fast_steps_ms": stage(lambda a, m: sampler.integrate(state, a, m), n_sfm, ones),
            "fast_rater_ms": stage(sampler.model.rater, state.hidden, host.valid, n_sfm),
        }
        return {name: run(fn) for name, fn in stages.items()}


def compile_chunk(sampler: FastSampler, inputs, gens) -> tuple[dict, object]:
    """The `compiled_chunk` row: everything after the host's preparation (vision, prefix, SFM,
    rater, AFM) as one torch.compile'd function, for a CPU without graphs. Not a product path:
    it shows what a compiler could buy on CPU, and at what compile cost. Returns its compile
    time and distance from the fast path, and the chunk to time (None if it failed)."""
    mode = "asyncvla"
    host = sampler.host_prefix(inputs)
    chunk = torch.compile(
        functools.partial(sampler._chunk, host.plan, mode, False), fullgraph=True, dynamic=False
    )

    @torch.inference_mode()
    def sample():
        h = sampler.host_prefix(inputs)
        return chunk(*h.tensors(), *sampler.model._draw_noise(gens()), torch.tensor(sampler.cfg.threshold))

    t = time.perf_counter()
    try:
        out = sample()
        compile_s = time.perf_counter() - t
        reference = sampler.sample_actions(inputs, gens(), mode)
    except Exception as e:  # an optional row: say why it is missing, keep the others
        return {"compiled_chunk_error": f"{type(e).__name__}: {e}"[:300]}, None
    info = {
        "compiled_chunk_compile_s": compile_s,
        "compiled_chunk_max_abs_diff": (out.actions - reference.actions).abs().max().item(),
    }
    return info, sample


def derive(r: dict) -> dict:
    """The ratios, from a row's measurements, against the default path (what act() runs, named by
    `default_row`; records written before it was, on CUDA only, name none: their fastest CUDA row)."""
    keys = [r["default_row"]] if "default_row" in r else ["fast_fused_ms", "fast_ms", "fast_no_graphs_ms"]
    default = next(r[k] for k in keys if k in r)
    r["speedup_fast_vs_eager"] = r["eager_ms"] / default
    r["paper_style_vs_fast"] = r["fast_paper_style_ms"] / r["fast_sfm_ms"]
    r["act_fast_over_chunk"] = r["act_fast_ms"] / default
    if "floor_ms" in r:
        r["eager_over_floor"] = r["eager_ms"] / r["floor_ms"]
    return r


COLUMNS = [
    ("batch", "B"),
    ("prefix_tokens", "prefix tok"),
    ("preprocess_ms", "preprocess"),
    ("vision_ms", "vision+embed"),
    ("prefix_ms", "prefix (eager)"),
    ("sfm_steps_ms", "SFM steps (eager)"),
    ("rater_ms", "rater"),
    ("afm_steps_ms", "AFM steps (eager)"),
    ("eager_ms", "chunk: eager"),
    ("hf_static_ms", "chunk: hf StaticCache"),
    ("fast_no_graphs_ms", "chunk: fast, no graphs"),
    ("fast_no_grad_ms", "chunk: fast, no graphs, no_grad"),
    ("fast_ms", "chunk: fast + graphs"),
    ("fast_fused_ms", "chunk: fast + compiled layer (in graphs on CUDA)"),
    ("compiled_chunk_ms", "chunk: fast, whole chunk compiled"),
    ("act_fast_path", "default path (act())"),
    ("speedup_fast_vs_eager", "eager / default"),
    ("fast_prefix_ms", "default: prefix"),
    ("fast_steps_ms", "default: 10 steps"),
    ("fast_rater_ms", "default: rater"),
    ("floor_ms", "floor (profiled)"),
    ("eager_over_floor", "eager / floor"),
    ("eager_sfm_ms", "sfm chunk eager"),
    ("fast_sfm_ms", "sfm chunk fast"),
    ("eager_paper_style_ms", "paper-style eager"),
    ("fast_paper_style_ms", "paper-style fast"),
    ("paper_style_vs_fast", "paper-style / fast sfm"),
    ("act_eager_ms", "act() eager"),
    ("act_fast_ms", "act() fast"),
    ("act_fast_over_chunk", "act() / default chunk"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "qwen2.5-vl-3b"], default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--fuse", action="store_true", help="also the torch.compile'd layer row")
    p.add_argument(
        "--compile-chunk",
        action="store_true",
        help="also the whole chunk torch.compile'd without graphs (a CPU experiment, minutes of compiling)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile the fast chunk without graphs at each batch size: its table, and the floor column",
    )
    p.add_argument("--out", default="results/bench")
    p.add_argument(
        "--rerender", metavar="JSON", help="rewrite a stored run's ratios and table, measuring nothing"
    )
    args = p.parse_args(argv)
    if args.rerender:
        return rerender(Path(args.rerender))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fuse or args.compile_chunk:
        # compile times as a user's first run sees them: an empty compile cache (inductor reads
        # the variable at each look-up, although torch's import has already set it)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_model_inductor_")
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
    stats = NormStats.identity(cfg.state_dim, cfg.action_dim)
    samplers = {"hf_static": HFStaticCacheChunk(model), "fast_no_graphs": FastSampler(model, graphs=False)}
    if device.type == "cuda":
        samplers["fast"] = FastSampler(model, graphs=True, fuse=False)
    if args.fuse:
        samplers["fast_fused"] = FastSampler(model, graphs=device.type == "cuda", fuse=True)
    policies = {
        "eager": AsyncVLAPolicy(model, tok, stats, fast=False),
        "fast": AsyncVLAPolicy(model, tok, stats),  # the default: graphs and the compiled layer on CUDA
    }
    pre = Preprocessor(cfg, tok)
    rng = np.random.default_rng(0)

    tag = "cpu" if device.type == "cpu" else device.type
    name = f"model_latency_{tag}" if args.size == "tiny" else f"model_latency_{args.size}_{tag}"
    meta = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "size": args.size,
        "device": (platform.processor() or "cpu")
        if device.type == "cpu"
        else torch.cuda.get_device_name(device),
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
        "note": "random weights; medians; every row measured in this run; the machine may be shared (see load)",
        **tree_state(),  # the commit measured, and whether the tree was exactly it
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for B in args.batch_sizes:
        rows.append(bench_batch(model, samplers, policies, pre, cfg, B, rng, args, sync))
        if "profile_table" in rows[-1]:
            with open(out / f"{name}_profile.txt", "w" if B == args.batch_sizes[0] else "a") as f:
                f.write(f"batch {B}, one chunk, {rows[-1].pop('profile_table')}\n\n")
        print(json.dumps(rows[-1]), file=sys.stderr)
        meta["loadavg_1min"] = Path("/proc/loadavg").read_text().split()[0]
        # written after every batch size: a run cut short keeps what it measured
        (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        write_table(out / f"{name}.md", meta, rows, cfg, params, rater_params, args)
    print((out / f"{name}.md").read_text())
    return 0


# The CPU kernels that do a chunk's arithmetic (matrix products, attention, the patch
# convolution), as the profiler names them; everything else in a chunk is element-wise work,
# copies, views and dispatch, which fusing or removing overhead can cut.
ARITHMETIC_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_addmm_activation",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::mkldnn_convolution",
}


@torch.inference_mode()
def profiled_chunk(sampler, inputs, gens) -> tuple[float, object]:
    """One fast chunk (no graphs, so that every kernel is seen) under the profiler: the time it
    spent in arithmetic (on CPU, `ARITHMETIC_OPS`' self time: the floor under any removal of
    overhead) or in kernels at all (on CUDA, the device's time: the floor under graphs without
    fusion), in seconds; and the profiler's events."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        sampler.sample_actions(inputs, gens())
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if cuda:
        # the kernels' own rows, as the profiler's "Self CUDA time total" sums them (an op's row
        # repeats its kernels' time)
        floor_us = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU)
    else:
        floor_us = sum(e.self_cpu_time_total for e in events if e.key in ARITHMETIC_OPS)
    return floor_us / 1e6, events


def rerender(path: Path) -> int:
    stored = json.loads(path.read_text())
    meta, rows = stored["meta"], [derive(r) for r in stored["rows"]]
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    cfg = ModelConfig.named(meta["size"])
    args = argparse.Namespace(size=meta["size"], dtype=meta["dtype"], repeats=meta["repeats"])
    write_table(path.with_suffix(".md"), meta, rows, cfg, meta["params"], meta["rater_params"], args)
    return 0


def _commit(meta: dict) -> str:
    """The commit a stored run names, as its table quotes it (records made before it was recorded: unknown)."""
    if not meta.get("commit"):
        return "an unrecorded commit"
    clean = {True: "", False: " with uncommitted changes (not for committing)", None: " (tree state unknown)"}
    return f"commit {meta['commit'][:7]}{clean[meta.get('clean_tree')]}"


def write_table(path: Path, meta, rows, cfg, params, rater_params, args) -> None:
    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    lines = [
        f"# AsyncVLA per-chunk latency: {args.size}, {meta['device']}, {args.dtype}",
        "",
        f"`{meta['command']}` at {_commit(meta)}; torch {meta['torch']}, transformers {meta['transformers']}, {meta['threads']} threads, "
        f"{params / 1e6:.2f} M parameters (rater {rater_params / 1e6:.2f} M), L = {cfg.chunk_length}, "
        f"{cfg.flow_steps} Euler steps, {len(cfg.cameras)} cameras at {cfg.image_size}px. Random weights; milliseconds, "
        f"medians of {args.repeats}; 1-min load average at the end {meta['loadavg_1min']}.",
        "",
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in rows:  # the path each fast row ran: a row that fell back says so here
        paths = ", ".join(f"{k.removesuffix('_path')}: {v}" for k, v in r.items() if k.endswith("_path"))
        if not paths:  # a record made before the paths were recorded
            continue
        lines.append(
            f"paths run at B = {r['batch']}: {paths}"
            + (f" ({r['default_row_note']})" if "default_row_note" in r else "")
        )
        for k in (k for k in r if k.endswith("_fallbacks")):
            lines.append(f"- fallback, {k.removesuffix('_fallbacks')}: " + "; ".join(r[k]))
    if any("compiled_chunk_compile_s" in r for r in rows):
        lines.append("")
        lines.append(
            "whole chunk compiled: torch.compile of everything after the host's preparation, compile "
            + ", ".join(
                f"{r['compiled_chunk_compile_s']:.0f} s at B = {r['batch']} (actions within "
                f"{r['compiled_chunk_max_abs_diff']:.1e} of the fast path)"
                for r in rows
            )
            + "; an experiment, not a path the policy takes"
        )
    if any("fast_fused_compile_s" in r for r in rows):
        lines.append("")
        lines.append(
            "compiled layer: torch.compile of the decoder layer, compile (+ capture on CUDA) "
            + ", ".join(f"{r['fast_fused_compile_s']:.0f} s at B = {r['batch']}" for r in rows)
        )
    lines += [
        "",
        "chunk = the asyncvla mode: prefix once + SFM (10 steps) + rater + AFM (10 steps), all reusing the prefix's",
        "keys and values. eager: `AsyncVLA.sample_actions`; hf StaticCache: transformers' StaticCache with the layout",
        "built once per chunk; fast: `asyncvla.fast.FastSampler` (static buffers and layout per chunk,",
        "layers driven through their weights, under torch.inference_mode; no_grad: the same under torch.no_grad, as before;",
        "+ graphs: CUDA graphs per batch/prefix bucket; compiled layer: torch.compile). default: prefix / 10 steps / rater:",
        "the default path's stages timed alone (on CUDA each its own graph): vision, embeddings and the prefix pass;",
        "10 suffix steps (SFM, or AFM: the same work); the rater.",
        "default: what act() runs (the compiled layer in graphs on CUDA; on CPU the fast path, neither compiled nor graphed).",
        "paper-style: SFM with the prefix, vision included, recomputed at each of the 10 steps. act(): preprocessing",
        "(image resize + Qwen2-VL patches + tokenisation, the `preprocess` column) + chunk + un-normalisation; the B",
        "observations share an instruction (a task's episodes), which on CPU makes one model call (asyncvla/policy.py).",
    ]
    if any("floor_ms" in r for r in rows):
        lines += [
            "floor (--profile): per fast chunk without graphs, its share measured under the profiler, times that chunk's row. On CPU",
            "its time in matrix products, attention and the patch convolution: what it would take with every other cost",
            "(element-wise work, copies, dispatch) removed, so eager / floor bounds the speed-up of any path doing the same",
            "arithmetic. On CUDA its kernels' time: what removing launch gaps alone would reach (fusion goes below it).",
        ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
