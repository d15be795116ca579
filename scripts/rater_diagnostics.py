"""Does the confidence rater find AsyncVLA's bad tokens, and does AFM then correct them? (issue 42)

    python scripts/rater_diagnostics.py --ckpt demo --data runs/t4/heldout
    asyncvla-eval record-demos tabletop --out runs/t4/heldout --episodes-per-task 3 --image-size 56 --seed 1

Offline, on held-out expert demonstrations (recorded at another --seed than the training data's 0:
at its default seed record-demos reproduces the training layouts), every --stride-th step, one
chunk per step. For every chunk, with per-chunk noise keyed by its index (every variant sees the
same draws): SFM's chunk, the rater's confidence p_l, Alg. 1's mask m_l = 1{p_l < T} and AFM's
chunk, a second, independent SFM draw (re-sampling), and the mechanism variants below. A token's
error is its squared error to the expert's action in the model's normalised action units, mean
over action dims (the quantity the rater's Eq. 6 labels are made from); padded and paused
tokens are left out.

What is measured:
- calibration: AUROC of 1 - p_l for "bad" tokens (SFM error above the --bad-quantile of all
  tokens; 1.0 = every bad token rated below every good one, 0.5 = chance), Spearman of p_l with
  the error, and a reliability plot (confidence bins: mean error and share of bad tokens);
- where SFM errs: lag-1 correlation of adjacent tokens' errors, correlation of the same token's
  error under two SFM draws, each action dim's share of the error on flagged / unflagged tokens;
- correction: for each variant, the regenerated tokens' error before (SFM), after (the
  variant) and under re-sampling (the fresh SFM draw at those tokens), the paired differences
  with 95% cluster-bootstrap intervals (chunks resampled); and the whole chunk's error.

Variants (named, non-default options; `paper` is Alg. 1 and stays the default everywhere else):
  paper            Alg. 1: m = 1{p < T}, kept tokens clean at time 0
  resample         the masked tokens replaced by a fresh SFM draw's (no AFM)
  dilate1          m widened by one token on each side (contiguous runs)
  suffix           every token from the first flagged one to the chunk's end
  whole            the whole chunk regenerated when any token is flagged (AFM noise, all masked)
  soft-c           kept tokens re-noised to time c * (1 - p_l) and integrated from there, so a
                   doubtful kept token is not trusted fully (c = 0.3, 0.6, 1.0); masked ones as Alg. 1
  expert-context   random mask (rate --expert-rate) with the expert's actions as the kept tokens:
                   can AFM use clean context at all? (beside it: `sfm-context`, the same mask
                   with SFM's tokens kept)

Outputs: OUT/diagnostics.{md,csv,tex}, OUT/variants.{md,csv,tex}, OUT/reliability.png and the
shared provenance sidecars (scripts/result_meta.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --- statistics (unit-tested on hand-made inputs: tests/test_rater_diagnostics.py) ---


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / n1 n0).
    Here score = 1 - confidence and positive = a bad token: 1.0 means the rater ranks every bad
    token below every good one."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    n1, n0 = positive.sum(), (~positive).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = score.argsort(kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[positive].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, n: int = 2000, seed: int = 0) -> tuple:
    """Mean of `values` and its 95% percentile interval, resampling whole clusters (chunks: a
    chunk's tokens share an observation and noise, so they are not independent)."""
    values, clusters = np.asarray(values, float), np.asarray(clusters)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    ids, inverse = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n, len(ids)))
    means = sums[draws].sum(1) / np.maximum(counts[draws].sum(1), 1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(values.mean()), float(lo), float(hi)


def regenerated_fraction(mask: np.ndarray, valid: np.ndarray) -> float:
    """Share of valid tokens a mask regenerates."""
    mask, valid = np.asarray(mask, bool), np.asarray(valid, bool)
    return float((mask & valid).sum() / max(1, valid.sum()))


# --- the model's computations ---


def integrate_from(model, encoded, a: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Euler from tau = 1 to 0 where token l starts at its own time `start` (B, L) in [0, 1]
    (snapped to the grid): it waits (time `start`) until the global time reaches it, then moves.
    start = m gives Alg. 1 exactly (masked tokens from 1, kept ones clean at 0)."""
    from asyncvla import flow

    K = model.cfg.flow_steps
    taus = flow.time_grid(K)
    start = (start * K).round() / K
    for k in range(K):
        tau, delta = float(taus[k]), float(taus[k] - taus[k + 1])
        active = (start >= tau - 1e-6) & (start > 0)
        t = torch.minimum(start, torch.full_like(start, tau))
        v = model.velocity(encoded.cache, encoded.prefix, a, t)
        a = flow.euler_step(a, v, delta, active.float())
    return a


def dilate(m: torch.Tensor, k: int = 1) -> torch.Tensor:
    out = m.clone()
    for s in range(1, k + 1):
        out[:, s:] = torch.maximum(out[:, s:], m[:, :-s])
        out[:, :-s] = torch.maximum(out[:, :-s], m[:, s:])
    return out


def suffix(m: torch.Tensor) -> torch.Tensor:
    return (torch.cumsum(m, dim=1) > 0).float()


@torch.inference_mode()
def chunk_batch(model, inputs, expert: torch.Tensor, keys: list[str], threshold: float, expert_rate: float):
    """Every variant's chunk and mask for one batch (normalised units); dict of tensors."""
    from asyncvla import flow

    gens = [torch.Generator().manual_seed(_seed(k)) for k in keys]
    gens2 = [torch.Generator().manual_seed(_seed(k + "/resample")) for k in keys]
    n_sfm, n_afm, mask_draw = model._draw_noise(gens)
    n_sfm2, _, _ = model._draw_noise(gens2)
    prefix = model.embed_prefix(inputs)
    encoded = model.encode_prefix(prefix)
    ones = torch.ones(n_sfm.shape[:2])
    sfm = model.integrate(encoded, n_sfm, ones)
    sfm2 = model.integrate(encoded, n_sfm2, ones)
    conf = model.rater(encoded.hidden, prefix.valid, sfm)
    m = flow.rater_mask(conf, threshold)
    out = {"sfm": sfm, "sfm2": sfm2, "confidence": conf, "mask:paper": m}

    def afm(context, mask):
        return model.integrate(encoded, flow.afm_start(context, n_afm, mask), mask) if mask.any() else context

    out["paper"] = afm(sfm, m)
    out["resample"], out["mask:resample"] = torch.where(m[..., None].bool(), sfm2, sfm), m
    for name, mask in (
        ("dilate1", dilate(m)),
        ("suffix", suffix(m)),
        ("whole", m.amax(1, keepdim=True) * ones),
    ):
        out[name], out[f"mask:{name}"] = afm(sfm, mask), mask
    for c in (0.3, 0.6, 1.0):
        start = torch.where(m.bool(), torch.ones_like(conf), c * (1 - conf))
        a0 = sfm - start[..., None] * (sfm - n_afm)  # each token noised to its own start time (Eq. 5)
        out[f"soft-{c}"] = integrate_from(model, encoded, a0, start) if (start > 0).any() else sfm
        out[f"mask:soft-{c}"] = m  # the tokens Alg. 1 would regenerate; kept ones move a little too
    rm = (mask_draw < expert_rate).float()
    out["expert-context"], out["mask:expert-context"] = afm(expert, rm), rm
    out["sfm-context"], out["mask:sfm-context"] = afm(sfm, rm), rm
    out["resample-random"], out["mask:resample-random"] = torch.where(rm[..., None].bool(), sfm2, sfm), rm
    return out


def _seed(key: str) -> int:
    from asyncvla.policy import seed_from_key

    return seed_from_key(key)


def collect(ckpt: str, data: str, stride: int, batch: int, threshold: float, expert_rate: float) -> dict:
    """Per-token arrays over every chunk of the held-out set."""
    from asyncvla.backbone import Preprocessor
    from asyncvla.checkpoint import load_checkpoint
    from asyncvla.training.datasets import ChunkDataset, read_dataset
    from evalsuite.eval_args import resolve_checkpoint

    model, tokenizer, stats = load_checkpoint(resolve_checkpoint(ckpt))
    model.eval()
    pre = Preprocessor(model.cfg, tokenizer)
    episodes, _ = read_dataset(data)
    dataset = ChunkDataset(episodes, model.cfg.chunk_length)
    samples = [dataset[i] for i in range(0, len(dataset), stride)]
    parts: dict[str, list] = {}
    for start in range(0, len(samples), batch):
        part = samples[start : start + batch]
        states = np.stack([stats.normalize_state(s.state) for s in part])
        inputs = pre([s.images for s in part], [s.instruction for s in part], states)
        expert = torch.from_numpy(np.stack([stats.normalize_action(s.actions) for s in part])).float()
        keys = [f"diag/{start + i}" for i in range(len(part))]
        out = chunk_batch(model, inputs, expert, keys, threshold, expert_rate)
        out["expert"] = expert
        out["valid"] = torch.from_numpy(np.stack([~s.ignore for s in part]))
        out["gripper_switch"] = torch.from_numpy(np.stack([_switches(s.actions) for s in part]))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.numpy())
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    arrays["chunk"] = np.repeat(np.arange(len(samples))[:, None], model.cfg.chunk_length, 1)
    return arrays


def _switches(actions: np.ndarray) -> np.ndarray:
    """Tokens where the expert's gripper command changes (from the previous token or to the next)."""
    g = actions[:, -1]
    change = np.zeros(len(g), bool)
    change[1:] |= g[1:] != g[:-1]
    change[:-1] |= g[1:] != g[:-1]
    return change


def token_error(a: np.ndarray, expert: np.ndarray) -> np.ndarray:
    return ((a - expert) ** 2).mean(-1)


# --- tables ---


def analyse(arrays: dict, bad_quantile: float) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    valid = arrays["valid"].astype(bool)
    expert, chunk = arrays["expert"], arrays["chunk"]
    err = {
        k: token_error(arrays[k], expert) for k in arrays if not k.startswith("mask:") and arrays[k].ndim == 3
    }
    e_sfm, conf = err["sfm"][valid], arrays["confidence"][valid]
    bad = e_sfm > np.quantile(e_sfm, bad_quantile)
    flagged = arrays["mask:paper"].astype(bool)
    rows = [
        ("chunks", float(valid.shape[0]), ""),
        ("valid tokens", float(valid.sum()), ""),
        ("regenerated fraction (rater, T)", regenerated_fraction(flagged, valid), "share of valid tokens"),
        ("chunks with any token regenerated", float(flagged.any(1).mean()), ""),
        (
            f"AUROC (1 - p vs bad = SFM error above its q{bad_quantile:g})",
            auroc(1 - conf, bad),
            "0.5 = chance",
        ),
        ("Spearman(p, SFM error)", spearman(conf, e_sfm), "negative = low p on high error"),
        ("mean SFM error, flagged tokens", float(err["sfm"][flagged & valid].mean()), ""),
        ("mean SFM error, kept tokens", float(err["sfm"][~flagged & valid].mean()), ""),
        ("lag-1 correlation of SFM token errors", _lag1(err["sfm"], valid), "within chunks"),
        (
            "correlation of a token's error under two SFM draws",
            _corr(err["sfm"][valid], err["sfm2"][valid]),
            "",
        ),
        ("flagged tokens at an expert gripper switch", _share(arrays["gripper_switch"], flagged & valid), ""),
        ("all tokens at an expert gripper switch", _share(arrays["gripper_switch"], valid), ""),
    ]
    per_dim = ((arrays["sfm"] - expert) ** 2)[valid]
    share = per_dim.mean(0) / per_dim.mean(0).sum()
    fl = ((arrays["sfm"] - expert) ** 2)[flagged & valid]
    fl_share = fl.mean(0) / fl.mean(0).sum() if len(fl) else np.full(share.shape, np.nan)
    for d in range(len(share)):
        rows.append(
            (f"dim {d}: share of SFM error (all / flagged tokens)", float(share[d]), f"{fl_share[d]:.3f}")
        )
    diagnostics = pd.DataFrame(rows, columns=["quantity", "value", "note"])
    variants = []
    names = [k[len("mask:") :] for k in arrays if k.startswith("mask:")]
    cl = chunk[valid]
    for name in names:
        m = arrays[f"mask:{name}"].astype(bool)[valid]
        e_v, e_s = err[name][valid], e_sfm
        resample = err["resample-random" if name in ("expert-context", "sfm-context") else "resample"][valid]
        row = {"variant": name, "regenerated %": 100 * m.mean(), "tokens": int(m.sum())}
        if name in ("expert-context", "sfm-context", "resample-random"):
            row["reference"] = "random mask"
        else:
            row["reference"] = "rater mask"
        row["SFM error (regen.)"] = e_s[m].mean() if m.any() else np.nan
        row["variant error (regen.)"] = e_v[m].mean() if m.any() else np.nan
        row["re-sampled error (regen.)"] = resample[m].mean() if m.any() else np.nan
        for label, other in (("vs SFM", e_s), ("vs re-sampling", resample)):
            mean, lo, hi = cluster_bootstrap((e_v - other)[m], cl[m])
            row[f"Δ regen. {label}"] = mean
            row[f"Δ regen. {label} 95% CI"] = f"{lo:+.4f} to {hi:+.4f}"
        mean, lo, hi = cluster_bootstrap(e_v - e_s, cl)
        row["chunk error"] = e_v.mean()
        row["Δ chunk vs SFM"] = mean
        row["Δ chunk vs SFM 95% CI"] = f"{lo:+.4f} to {hi:+.4f}"
        variants.append(row)
    variants = pd.DataFrame(variants)
    reliability = _reliability(conf, e_sfm, bad)
    return diagnostics, variants, reliability


def _lag1(e: np.ndarray, valid: np.ndarray) -> float:
    both = valid[:, 1:] & valid[:, :-1]
    return _corr(e[:, 1:][both], e[:, :-1][both])


def _corr(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 else float("nan")


def _share(flag: np.ndarray, where: np.ndarray) -> float:
    return float(flag[where].mean()) if where.any() else float("nan")


def _reliability(conf: np.ndarray, err: np.ndarray, bad: np.ndarray, bins: int = 10) -> dict:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    out = {"center": [], "count": [], "mean_error": [], "bad_share": []}
    for b in range(bins):
        sel = idx == b
        out["center"].append((edges[b] + edges[b + 1]) / 2)
        out["count"].append(int(sel.sum()))
        out["mean_error"].append(float(err[sel].mean()) if sel.any() else np.nan)
        out["bad_share"].append(float(bad[sel].mean()) if sel.any() else np.nan)
    return out


def plot_reliability(rel: dict, threshold: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    c = np.array(rel["center"])
    a.bar(c, rel["count"], width=0.09, color="tab:gray")
    a.set(xlabel="rater confidence p", ylabel="tokens", title="confidence histogram", yscale="log")
    a.axvline(threshold, color="k", ls="--", lw=1)
    b.plot(c, rel["bad_share"], marker="o", label="share of bad tokens (observed)")
    b.plot([0, 1], [1, 0], color="k", lw=0.8, ls=":", label="calibrated: 1 - p")
    b2 = b.twinx()
    b2.plot(c, rel["mean_error"], marker="s", color="tab:red", label="mean SFM error")
    b2.set_ylabel("mean SFM token error", color="tab:red")
    b.axvline(threshold, color="k", ls="--", lw=1)
    b.set(xlabel="rater confidence p", ylabel="share of bad tokens", ylim=(0, 1), title="reliability")
    b.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="demo")
    p.add_argument("--data", required=True, help="held-out asyncvla-episodes (record-demos --seed 1)")
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--bad-quantile", type=float, default=0.75)
    p.add_argument("--expert-rate", type=float, default=0.25, help="random mask rate of expert-context")
    p.add_argument("--out", default="results/tabletop/rater_diagnostics")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "scripts"))
    from result_meta import write_meta

    from evalsuite.eval_args import resolve_checkpoint
    from evalsuite.tables import write_tables

    start = time.perf_counter()
    arrays = collect(args.ckpt, args.data, args.stride, args.batch, args.threshold, args.expert_rate)
    diagnostics, variants, rel = analyse(arrays, args.bad_quantile)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads((Path(args.data) / "info.json").read_text())
    command = "python scripts/rater_diagnostics.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (
        f"> rater diagnostics, checkpoint {args.ckpt}; held-out data: {info.get('source')} "
        f"({info['num_episodes']} demos), every {args.stride}th step; threshold T = {args.threshold}; "
        f"token error = squared error to the expert in normalised action units, mean over dims; "
        f"intervals: 95% cluster bootstrap over chunks (2000 draws)\n> command: `{command}`"
    )
    text = write_tables({"diagnostics": diagnostics, "variants": variants}, out, header)
    # the diagnostics' values are fractions and small errors: the shared writer's .1f would hide them
    diagnostics.to_markdown(buf := (out / "diagnostics.md").open("w"), index=False, floatfmt=".4f")
    buf.close()
    (out / "diagnostics.md").write_text(header + "\n\n" + (out / "diagnostics.md").read_text() + "\n")
    (out / "variants.md").write_text(
        header + "\n\n" + variants.to_markdown(index=False, floatfmt=".4f") + "\n"
    )
    json.dump(rel, (out / "reliability.json").open("w"), indent=1)
    plot_reliability(rel, args.threshold, out / "reliability.png", header.splitlines()[0][2:][:180])
    ckpt = resolve_checkpoint(args.ckpt)
    demo = resolve_checkpoint("demo")  # the shipped demo of the day (the sidecars' staleness key)
    extra = {
        "data": info.get("source"),
        "stride": args.stride,
        "seconds": round(time.perf_counter() - start, 1),
    }
    for name in ("diagnostics", "variants"):
        for ext in ("md", "csv", "tex"):
            write_meta(out / f"{name}.{ext}", demo, command, extra, {"diagnosed": ckpt})
    for name in ("reliability.png", "reliability.json"):
        write_meta(out / name, demo, command, extra, {"diagnosed": ckpt})
    print(text)
    print((out / "diagnostics.md").read_text())
    print((out / "variants.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
