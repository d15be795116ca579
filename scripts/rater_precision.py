"""Does the confidence rater give the same mask in bf16 as in float32? (issue 38, on CPU)

    python scripts/rater_precision.py --ckpt demo --data runs/t4/heldout --stride 4
    # held-out demos (another seed than the training data's 0):
    asyncvla-eval record-demos tabletop --out runs/t4/heldout --episodes-per-task 3 --image-size 56 --seed 1

The rater runs in float32 whatever the model's dtype (`ConfidenceRater`): on the GPU its matrix
products are the largest float32 kernels of the 3B chunk. Running it in bf16 would be cheaper, but
only if the mask m_l = 1{p_l < T} it produces stays the one float32 gives: a token whose mask flips
is regenerated (or kept) where float32 would not. Here, on the demo checkpoint in float32 on CPU,
for every --stride-th step of the held-out demos (one chunk a step, noise keyed by the chunk as the
policy keys it): the prefix pass and SFM's chunk once, then the rater in float32 (the default) and a
bf16 copy of it (weights and activations; its inputs, the prefix's hidden states and SFM's actions,
cast to bf16 as a bf16 model would hand them over). Reported: the fraction of tokens whose mask
differs, the fraction of chunks with any difference, the confidences' differences and how many
tokens lie within that difference of T (those could flip on other inputs).

Writes results/bench/rater_precision_cpu.{json,md}. The default stays float32 whatever this says:
this measures whether bf16 could be made an option; the 3B's shapes on a GPU are another measurement.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bf16_rater(rater: torch.nn.Module) -> torch.nn.Module:
    """A bf16 copy of the rater (weights, hence its activations: `forward` casts its inputs to the
    weights' dtype); the model's own rater is left in float32."""
    return copy.deepcopy(rater).to(torch.bfloat16)


def agreement(conf32: np.ndarray, conf16: np.ndarray, threshold: float) -> dict:
    """How far the bf16 rater's mask and confidences are from float32's; (chunks, L) confidences."""
    m32, m16 = conf32 < threshold, conf16 < threshold
    differ = m32 != m16
    diff = np.abs(conf32.astype(np.float64) - conf16)
    return {
        "chunks": int(m32.shape[0]),
        "tokens": int(m32.size),
        "flagged_fp32": float(m32.mean()),
        "flagged_bf16": float(m16.mean()),
        "tokens_differing": int(differ.sum()),
        "token_disagreement": float(differ.mean()),
        "chunks_differing": int(differ.any(axis=1).sum()),
        "chunk_disagreement": float(differ.any(axis=1).mean()),
        "confidence_abs_diff_max": float(diff.max()),
        "confidence_abs_diff_median": float(np.median(diff)),
        "confidence_abs_diff_p99": float(np.quantile(diff, 0.99)),
        # tokens whose float32 confidence lies within the largest difference seen of T: the ones a
        # bf16 rater could flip on other inputs
        "tokens_near_threshold": int((np.abs(conf32 - threshold) <= diff.max()).sum()),
    }


class TwinRater:
    """Stands in for a policy's rater in closed loop: computes float32's and bf16's confidences on
    every chunk, counts where their masks differ, and returns the ones `use` names (the episode
    then runs on that precision's masks)."""

    def __init__(self, rater: torch.nn.Module, threshold: float, use: str):
        self.r32, self.r16, self.threshold, self.use = rater, bf16_rater(rater), threshold, use
        self.chunks = self.tokens = self.chunks_differing = self.tokens_differing = 0

    def __call__(self, hidden: torch.Tensor, valid: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        c32 = self.r32(hidden, valid, actions)
        c16 = self.r16(hidden.bfloat16(), valid, actions.bfloat16())
        differ = (c32 < self.threshold) != (c16 < self.threshold)
        self.chunks += differ.shape[0]
        self.tokens += differ.numel()
        self.chunks_differing += int(differ.any(dim=1).sum())
        self.tokens_differing += int(differ.sum())
        return c16 if self.use == "bf16" else c32


def closed_loop(ckpt: str, episodes_per_task: int, work: Path) -> dict:
    """The demo on the tabletop suite twice, the rater in float32 and in bf16 (same episodes, same
    noise): success paired by episode, and the masks' differences on the chunks each run met."""
    import asyncvla
    from evalsuite import evaluate_suite
    from evalsuite.eval_args import resolve_checkpoint

    runs, twins = {}, {}
    for use in ("fp32", "bf16"):
        policy = asyncvla.load(resolve_checkpoint(ckpt))
        twins[use] = policy.sampler.rater = TwinRater(policy.model.rater, policy.threshold, use)
        summary = evaluate_suite(
            "tabletop",
            policy=policy,
            policy_name=f"demo-rater-{use}",
            policy_version=1,
            episodes_per_task=episodes_per_task,
            out=work / use,
            # rendered at the checkpoint's image size, as a run of the checkpoint itself renders
            # (a policy object is rendered at the suite's 128 px otherwise)
            extra_args=["--set", f"image_size={policy.model.cfg.image_size}"],
        )
        runs[use] = {r.episode_id: r for r in summary.records}
    ids = sorted(runs["fp32"])
    a, b = (np.array([bool(runs[u][i].success) for i in ids]) for u in ("fp32", "bf16"))
    # the trajectory's fingerprint (the final state): equal where no chunk's actions differed
    moved = sum(runs["fp32"][i].info["final_state"] != runs["bf16"][i].info["final_state"] for i in ids)
    return {
        "episodes": len(ids),
        "success_fp32": int(a.sum()),
        "success_bf16": int(b.sum()),
        "episodes_outcome_differs": int((a != b).sum()),
        "episodes_trajectory_differs": int(moved),
        **{
            f"{use}_run_{k}": getattr(t, k)
            for use, t in twins.items()
            for k in ("chunks", "tokens", "chunks_differing", "tokens_differing")
        },
    }


@torch.inference_mode()
def collect(ckpt: str, data: str, stride: int, batch: int, threshold: float | None) -> tuple[dict, dict]:
    from asyncvla.backbone import Preprocessor
    from asyncvla.checkpoint import load_checkpoint
    from asyncvla.policy import seed_from_key
    from asyncvla.training.datasets import ChunkDataset, read_dataset
    from evalsuite.eval_args import resolve_checkpoint

    path = resolve_checkpoint(ckpt)
    model, tokenizer, stats = load_checkpoint(path)
    model.eval()
    threshold = model.cfg.threshold if threshold is None else threshold
    rater16 = bf16_rater(model.rater)
    pre = Preprocessor(model.cfg, tokenizer)
    episodes, _ = read_dataset(data)
    dataset = ChunkDataset(episodes, model.cfg.chunk_length)
    samples = [dataset[i] for i in range(0, len(dataset), stride)]
    conf32, conf16 = [], []
    t = time.perf_counter()
    for start in range(0, len(samples), batch):
        part = samples[start : start + batch]
        states = np.stack([stats.normalize_state(s.state) for s in part])
        inputs = pre([s.images for s in part], [s.instruction for s in part], states)
        gens = [
            torch.Generator().manual_seed(seed_from_key(f"precision/{start + i}")) for i in range(len(part))
        ]
        n_sfm, _, _ = model._draw_noise(gens)
        prefix = model.embed_prefix(inputs)
        encoded = model.encode_prefix(prefix)
        sfm = model.integrate(encoded, n_sfm, torch.ones(n_sfm.shape[:2]))
        conf32.append(model.rater(encoded.hidden, prefix.valid, sfm).numpy())
        conf16.append(rater16(encoded.hidden.bfloat16(), prefix.valid, sfm.bfloat16()).numpy())
    info = {
        "checkpoint": ckpt,
        "checkpoint_path": path,
        "data": data,
        "demos": len(episodes),
        "stride": stride,
        "threshold": threshold,
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "rater_dtype_default": str(model.rater.action_proj.weight.dtype).removeprefix("torch."),
        "seconds": round(time.perf_counter() - t, 1),
    }
    return info, agreement(np.concatenate(conf32), np.concatenate(conf16), threshold)


def render(result: dict) -> str:
    a, i, c = result["agreement"], result["inputs"], result.get("closed_loop")
    loop = 0 if c is None else c["fp32_run_tokens_differing"] + c["bf16_run_tokens_differing"]
    same = a["tokens_differing"] == 0 and loop == 0
    verdict = (
        "bf16's mask equals float32's on every token here"
        if same
        else f"bf16's mask differs from float32's on {a['tokens_differing']} tokens of the held-out chunks"
        + (f" and {loop} tokens of the chunks the closed-loop runs met" if c else "")
    )
    return "\n".join(
        [
            "# Rater precision on CPU: bf16 against float32 (the default), the demo checkpoint",
            "",
            f"`{result['command']}` at commit {(result['meta']['commit'] or '?')[:7]}"
            f"{'' if result['meta']['clean_tree'] else ' (uncommitted changes)'}; torch {result['torch']}; "
            f"{a['chunks']} chunks ({a['tokens']} tokens) from {i['demos']} held-out demos ({i['data']}), every "
            f"{i['stride']}th step; T = {i['threshold']}; the prefix pass and SFM in {i['model_dtype']}, once, "
            f"then the rater in float32 and a bf16 copy of it on the same inputs ({i['seconds']} s).",
            "",
            "| | value |",
            "|---|---|",
            f"| tokens flagged (p < T), float32 | {100 * a['flagged_fp32']:.2f} % |",
            f"| tokens flagged, bf16 | {100 * a['flagged_bf16']:.2f} % |",
            f"| tokens whose mask differs | {a['tokens_differing']} ({100 * a['token_disagreement']:.2f} %) |",
            f"| chunks with any difference | {a['chunks_differing']} ({100 * a['chunk_disagreement']:.2f} %) |",
            f"| abs. confidence difference: median / 99th pct / max | {a['confidence_abs_diff_median']:.1e} / "
            f"{a['confidence_abs_diff_p99']:.1e} / {a['confidence_abs_diff_max']:.1e} |",
            f"| tokens within the max difference of T (could flip) | {a['tokens_near_threshold']} |",
            *(
                [
                    "",
                    f"Closed loop (the demo on the tabletop suite, {c['episodes']} episodes, run once with each rater, "
                    "the same episodes and noise; each run also computed the other precision's mask on every chunk "
                    "it met):",
                    "",
                    "| run | success | chunks | chunks whose mask would differ | tokens whose mask would differ |",
                    "|---|---|---|---|---|",
                    *(
                        f"| rater in {u} | {c[f'success_{u}']} / {c['episodes']} | {c[f'{u}_run_chunks']} | "
                        f"{c[f'{u}_run_chunks_differing']} | {c[f'{u}_run_tokens_differing']} / {c[f'{u}_run_tokens']} |"
                        for u in ("fp32", "bf16")
                    ),
                    "",
                    f"Episodes whose outcome differs between the two runs: {c['episodes_outcome_differs']}; whose "
                    f"trajectory differs (final state): {c['episodes_trajectory_differs']}.",
                ]
                if c
                else []
            ),
            "",
            f"Reading: {verdict}. The rater stays float32 (the default, `ConfidenceRater`)"
            + (
                "; bf16 agreeing here on the tiny demo is necessary, not sufficient: the 3B's shapes on a GPU "
                "(bf16 hidden states from a bf16 model, other kernels) and the demo's paired success are the "
                "measurements that would let it be an option."
                if same
                else ": a bf16 rater would regenerate other tokens than the float32 one it was trained as, "
                "so bf16 is not made an option."
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="demo")
    p.add_argument("--data", required=True, help="held-out asyncvla-episodes (record-demos --seed 1)")
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threshold", type=float, default=None, help="T (default: the checkpoint's)")
    p.add_argument(
        "--episodes-per-task",
        type=int,
        default=0,
        help="also run the demo on the tabletop suite with each rater, success paired (0: skip)",
    )
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    from evalsuite.tree_state import tree_state

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    info, agree = collect(args.ckpt, args.data, args.stride, args.batch, args.threshold)
    result = {
        "meta": tree_state(),
        "command": "python "
        + " ".join(["scripts/rater_precision.py", *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__,
        "inputs": info,
        "agreement": agree,
    }
    if args.episodes_per_task:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rater_precision_") as work:
            result["closed_loop"] = closed_loop(args.ckpt, args.episodes_per_task, Path(work))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rater_precision_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "rater_precision_cpu.md").write_text(render(result) + "\n")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
