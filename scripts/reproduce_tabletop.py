"""Reproduce the paper's claims on the embedded tabletop suite, on CPU (issue 7).

    python scripts/reproduce_tabletop.py                 # the full run (planned for < 2 h on 2 cores)
    python scripts/reproduce_tabletop.py --quick         # a smoke run of every stage (about 30 min here)
    python scripts/reproduce_tabletop.py --stages demo-eval,figure

Stages, in order (each skips work whose output already exists, so an interrupted run resumes):
  record      successful expert demos on the env's split="train" layouts (evalsuite.demos)
  demo        the demo checkpoint: `asyncvla-train` unified policy, then the rater stage, per phase;
              runs in the background (one core) while ablations and efficiency use the other
  ablations   data-limited subset; per training seed: unified and SFM-only models trained with a
              constant learning rate, a snapshot every K epochs, a rater on the last snapshot each;
              then Table 4's four rows (evalsuite.ablations) per seed and a mean/spread table
  efficiency  the snapshots of seed 0 evaluated (SFM inference for both objectives, so the
              comparison is about training), with the loss curves: Fig. 4 / Fig. 5 layouts
  ship        copy the demo checkpoint (weights, loss curves, manifest) to asyncvla/demo/
  demo-eval   demo checkpoint (also without AFM and without the rater) vs the random policy vs
              the scripted expert, same episodes
  figure      the demo checkpoint's per-chunk self-correction view (Fig. 3 layout)
  table4      Table 4 at the demo's regime (scripts/table4.py): the SFM-trained twin of the demo
              (same data, the same phases and steps, --objective sfm, its rater), then the four rows
              on 10 tasks x Plan.table4_episodes layouts, same episodes and noise, McNemar vs
              AsyncVLA, the paper's values beside; --sfm-ckpt skips the training

Work files (datasets, checkpoints, run directories) go to --work (default runs/repro, ignored by
git); tables and figures to --out (default results/tabletop). Every table's header carries the
command, the seed and the data size. Torch runs single-threaded: on a shared 2-core machine two
threads per process measured 3-4x slower per step than one (thread contention).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("reproduce_tabletop")
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("record", "demo", "ablations", "efficiency", "ship", "demo-eval", "figure", "table4")
SHIPPED = ("config.json", "model.safetensors", "rater.safetensors", "norm_stats.json")
SHIPPED += ("tokenizer.json", "tokenizer_config.json", "loss_policy.csv", "loss_rater.csv")


@dataclass
class Plan:
    """Every size choice of the run (written into OUT/plan.json); docs/reproduce.md has the budget."""

    demos_per_task: int = 30  # recorded expert demos per task (300 in all)
    image_size: int = 56  # the tiny config's image size: rendered at it, no resize
    # demo checkpoint: policy steps (batch 32) per phase; a later phase resumes the earlier one
    # (--resume: optimizer state continues, the cosine restarts over the new total). Each earlier
    # phase's checkpoint is kept as WORK/demo-step<N>: the nightly demonstration's early checkpoint.
    demo_steps: tuple[int, ...] = (2400, 7000, 20000)
    demo_batch: int = 32
    demo_lr: float = 3e-4  # from scratch, so higher than the paper's fine-tuning 1e-4
    demo_rater_steps: int = 150
    demo_eval_episodes: int = 5  # per task, for demo / random / expert
    subset_per_task: int = 3  # data-limited regime (shared/notes/ablation-regimes.md)
    heldout_per_task: int = 5  # the last demos of each task: the held-out action-error set
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 16  # constant learning rate, as in Sec. 4.4
    snapshot_every: int = 4  # K
    batch: int = 16
    lr: float = 3e-4
    rater_steps: int = 60
    ablation_episodes: int = 2  # per task and seed, same episodes for the four rows
    efficiency_episodes: int = 1  # per task, per snapshot
    workers: int = 2  # env workers: the runner asks Ray for 1 CPU each, so at most the core count
    figure_episodes: int = 3
    table4_episodes: int = 50  # per task, per row (500 paired episodes a row)

    @classmethod
    def quick(cls) -> Plan:
        """A smoke run of every stage, about 30 min on 2 cores; its numbers are not the ones in results/."""
        return cls(
            demos_per_task=4,
            demo_steps=(100, 200),
            demo_rater_steps=20,
            demo_eval_episodes=1,
            subset_per_task=1,
            heldout_per_task=1,
            seeds=(0, 1),
            epochs=2,
            snapshot_every=1,
            rater_steps=10,
            ablation_episodes=1,
            figure_episodes=1,
            table4_episodes=1,
        )


def sh(cmd: list[str]) -> None:
    log.info("$ %s", shlex.join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)


def file_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_subset(full: Path, out: Path, per_task: int) -> Path:
    """The first `per_task` demos of each task, as links into the full recording."""
    if (out / "info.json").is_file():
        return out
    info = json.loads((full / "info.json").read_text())
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    index, kept = 0, 0
    for counts in info["tasks"].values():
        for k in range(counts["episodes"]):
            if k < per_task:
                src = (full / "episodes" / f"{index:06d}.npz").resolve()
                (out / "episodes" / f"{kept:06d}.npz").symlink_to(src)
                kept += 1
            index += 1
    sub = {**info, "num_episodes": kept, "source": f"first {per_task} demos per task of {full}"}
    (out / "info.json").write_text(json.dumps(sub, indent=2) + "\n")
    return out


def data_note(path: Path) -> str:
    from asyncvla.training.datasets import read_dataset

    episodes, info = read_dataset(path)
    steps = sum(len(e.action) for e in episodes)
    return f"{len(episodes)} demos ({steps} steps), {len(info['tasks'])} tasks, {info['image_size']} px"


def training_data_note(demos: Path, demo: Path) -> str:
    """The demo's training data: from the recording when it is here, else from the shipped manifest."""
    if (demos / "info.json").is_file():
        return data_note(demos)
    manifest = demo / "manifest.json"
    return json.loads(manifest.read_text())["data"] if manifest.is_file() else "unknown"


def demo_commands(plan: Plan, demos: Path, demo: Path, objective: str = "unified") -> list[list[str]]:
    """The demo checkpoint's `asyncvla-train` commands: per phase, the unified policy trained (or
    resumed) up to that phase's total step count, then the rater on it. `objective="sfm"`: the
    same commands with the SFM objective (Table 4's w/o-unified-training model), one torch thread."""
    train = [sys.executable, "-m", "asyncvla.training.train", str(demos), "--out", str(demo), "--seed", "0"]
    if objective != "unified":
        train += ["--threads", "1"]
    commands = []
    for i, total in enumerate(plan.demo_steps):
        commands.append(
            train
            + (["--objective", objective] if objective != "unified" else [])
            + ["--steps", str(total), "--batch-size", str(plan.demo_batch), "--lr", str(plan.demo_lr)]
            + ["--vision-lr", str(plan.demo_lr), "--warmup-steps", "50", "--save-every", "200"]
            + (["--resume"] if i else [])
        )
        commands.append(
            train + ["--stage", "rater", "--steps", str(plan.demo_rater_steps), "--batch-size", "32"]
        )
    return commands


def train_demo(plan: Plan, demos: Path, demo: Path, work: Path, objective: str = "unified") -> None:
    for i, cmd in enumerate(demo_commands(plan, demos, demo, objective)):
        sh(cmd)
        phase, is_rater = divmod(i, 2)
        if is_rater and phase < len(plan.demo_steps) - 1:  # keep the earlier phase's checkpoint
            early = work / f"{demo.name}-step{plan.demo_steps[phase]}"
            shutil.rmtree(early, ignore_errors=True)
            shutil.copytree(demo, early, ignore=shutil.ignore_patterns("*.pt"))


def ship_demo(plan: Plan, demos: Path, demo: Path, dest: Path, args: argparse.Namespace) -> None:
    """Copy the checkpoint (no optimizer state) with a manifest and the loss curve into the package."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asyncvla.training.datasets import dataset_sha256

    dest.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        shutil.copy2(demo / name, dest / name)
    rel = [
        [Path(c).name if c == sys.executable else c for c in cmd] for cmd in demo_commands(plan, demos, demo)
    ]
    info = json.loads((demos / "info.json").read_text())
    manifest = {
        "made_by": "python scripts/reproduce_tabletop.py"
        + (" --quick" if args.quick else "")
        + " (stages record, demo, ship)",
        "record_command": str(info.get("source")).replace(str(ROOT) + "/", ""),
        "train_commands": [shlex.join(c).replace(str(ROOT) + "/", "") for c in rel],
        "data": data_note(demos),
        "data_sha256": dataset_sha256(demos),
        "plan": dataclasses.asdict(plan),
        "final_policy_loss_mean_last_100": float(
            pd.read_csv(demo / "loss_policy.csv")["loss"].tail(100).mean()
        ),
        "torch": torch.__version__,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, stage in zip(axes, ("policy", "rater"), strict=True):
        frame = pd.read_csv(demo / f"loss_{stage}.csv")
        ax.plot(frame["step"], frame["loss"], lw=0.5, alpha=0.4)
        ax.plot(frame["step"], frame["loss"].rolling(50, min_periods=1).mean(), lw=1.5)
        ax.set(title=f"{stage} stage", xlabel="step", ylabel="loss", yscale="log")
    fig.tight_layout()
    fig.savefig(dest / "loss.png", dpi=100)
    plt.close(fig)


# --- training with snapshots (Sec. 4.4: constant learning rate, evaluated every K epochs) ---


def train_snapshots(data: Path, out: Path, objective: str, seed: int, plan: Plan) -> list[Path]:
    """Train `objective` for plan.epochs epochs; a checkpoint every K epochs; the loss per step."""
    from asyncvla.backbone import Preprocessor
    from asyncvla.checkpoint import save_checkpoint
    from asyncvla.training.datasets import ChunkDataset, read_dataset
    from asyncvla.training.train import TrainConfig, _build, _param_groups, collate

    snaps = [out / f"epoch{e:03d}" for e in range(1, plan.epochs + 1) if e % plan.snapshot_every == 0]
    if plan.epochs % plan.snapshot_every:
        snaps.append(out / f"epoch{plan.epochs:03d}")
    if all((s / "model.safetensors").is_file() for s in snaps):
        return snaps
    cfg = TrainConfig(
        dataset=str(data), out=str(out), objective=objective, seed=seed, batch_size=plan.batch, lr=plan.lr
    )
    cfg.vision_lr = plan.lr  # the vision tower starts from scratch too
    episodes, info = read_dataset(data)
    model, tokenizer, stats = _build(cfg, ChunkDataset(episodes, 8), info, "cpu")
    dataset = ChunkDataset(episodes, model.cfg.chunk_length)
    pre = Preprocessor(model.cfg, tokenizer)
    optim = torch.optim.AdamW(_param_groups(model, cfg), betas=(0.9, 0.999), weight_decay=0.0)
    noise = torch.Generator().manual_seed(seed * 1000)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=plan.batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=list,
        drop_last=True,
    )
    model.train()
    rows, step = [], 0
    for epoch in range(1, plan.epochs + 1):
        for samples in loader:
            inputs, actions, pad = collate(samples, pre, stats, "cpu")
            loss = model.compute_loss(inputs, actions, pad, objective, noise)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
            rows.append({"step": step, "epoch": epoch, "loss": loss.item()})
        log.info("%s seed %d epoch %d loss %.4f", objective, seed, epoch, rows[-1]["loss"])
        if epoch % plan.snapshot_every == 0 or epoch == plan.epochs:
            save_checkpoint(out / f"epoch{epoch:03d}", model, tokenizer, stats)
    pd.DataFrame(rows).to_csv(out / "loss.csv", index=False)
    return snaps


def train_rater(data: Path, ckpt: Path, steps: int, batch: int, seed: int, lr: float) -> None:
    if (ckpt / "loss_rater.csv").is_file():
        return
    sh(
        [sys.executable, "-m", "asyncvla.training.train", str(data), "--out", str(ckpt), "--stage", "rater"]
        + ["--steps", str(steps), "--batch-size", str(batch), "--seed", str(seed), "--lr", str(lr)]
        + ["--save-every", str(steps), "--device", "cpu"]
    )


# --- held-out action error: a continuous measure next to success (which sits at 0 % for
# models trained on a handful of demos, where every variant ties) ---


def heldout_samples(demos: Path, per_task: int, stride: int = 4) -> list:
    """Every `stride`-th step of the last `per_task` demos of each task: never in a subset."""
    from asyncvla.training.datasets import ChunkDataset, read_dataset

    episodes, info = read_dataset(demos)
    chosen, index = [], 0
    for counts in info["tasks"].values():
        n = counts["episodes"]
        chosen += episodes[index + n - per_task : index + n]
        index += n
    dataset = ChunkDataset(chosen, 8)
    return [dataset[i] for i in range(0, len(dataset), stride)]


def action_error(ckpt: Path, mode: str, samples: list, batch: int = 32) -> np.ndarray:
    """Per-sample squared error of the executed chunk to the expert's, per action dim in units of
    the expert's spread (dims the expert never moves count in raw units), padding excluded.
    The noise comes from fixed keys, so every variant sees the same draws."""
    from types import SimpleNamespace

    import asyncvla

    policy = asyncvla.load(str(ckpt), mode=mode)
    true = np.stack([s.actions for s in samples])
    valid = ~np.stack([s.action_pad for s in samples])
    std = true.reshape(-1, true.shape[-1]).std(0)
    std[std < 1e-6] = 1.0
    errors = []
    for start in range(0, len(samples), batch):
        part = samples[start : start + batch]
        obs = [SimpleNamespace(images=x.images, state=x.state, instruction=x.instruction) for x in part]
        keys = [f"heldout/{start + i}@0" for i in range(len(part))]
        pred = policy.act(obs, keys)
        sq = (((pred - true[start : start + len(part)]) / std) ** 2).mean(-1)
        v = valid[start : start + len(part)]
        errors.append((sq * v).sum(1) / v.sum(1))
    return np.concatenate(errors)


# --- evaluation ---


def eval_config(policy: list[str], out: Path, episodes: int, plan: Plan, mode: str = "asyncvla"):
    from evalsuite.eval_args import config_from_args, eval_parser

    argv = [
        "tabletop",
        *policy,
        "--episodes-per-task",
        str(episodes),
        "--set",
        f"image_size={plan.image_size}",
    ]
    argv += ["--workers", str(plan.workers), "--out", str(out), "--video", "none", "--seed", "0", "-q"]
    if policy[0] == "--ckpt":
        argv += ["--mode", mode, "--device", "cpu"]
    return config_from_args(eval_parser().parse_args(argv), argv)


def success_frame(config) -> pd.DataFrame:
    from evalsuite.evaluate import evaluate
    from evalsuite.tables import records_frame

    summary = evaluate(config, show_progress=False)
    return records_frame(summary.records, config.suites)


def header(title: str, args: argparse.Namespace, extra: str) -> str:
    return f"> {title}\n> command: `{shlex.join(['python', 'scripts/reproduce_tabletop.py', *args.argv])}`; {extra}"


def stage_demo_eval(args, plan: Plan, demo: Path, note: str) -> None:
    """The demo checkpoint against the random policy and the scripted expert, and the same
    checkpoint run without AFM (SFM only) and without the rater (random masks): the inference
    half of Table 4 on a model that solves tasks, all on the same episodes."""
    from evalsuite.ablations import mcnemar_exact, paired_discordance
    from evalsuite.tables import rate_row, write_tables

    work, rows = Path(args.work) / "eval-demo", []
    ckpt = ["--ckpt", str(demo)]
    policies = [  # (row label, policy arguments, inference mode)
        ("scripted expert", ["--policy", "scripted"], None),
        ("AsyncVLA demo checkpoint", ckpt, "asyncvla"),
        ("demo checkpoint w/o AFM inference (SFM only)", ckpt, "sfm"),
        ("demo checkpoint w/o confidence rater (random masks)", ckpt, "random-mask"),
        ("random policy", ["--policy", "random"], None),
    ]
    rates, frames = {}, {}
    for label, policy, mode in policies:
        name = policy[1] if mode is None else f"demo-{mode}"
        if mode is not None:  # a retrained checkpoint must not resume the old one's run
            name += "-" + file_hash(demo / "model.safetensors")[:10]
        config = eval_config(policy, work / name, plan.demo_eval_episodes, plan, mode=mode or "asyncvla")
        frame = frames[label] = success_frame(config)
        stats = rate_row(frame["success"])
        rates[label] = stats["success_rate"]
        row = {"policy": label, "success rate": stats["success_rate"]}
        row["95% CI"] = f"{100 * stats['ci_low']:.1f}-{100 * stats['ci_high']:.1f}"
        row |= {"episodes": stats["episodes"], "errors": stats["errors"]}
        row |= {t: g["success"].mean() for t, g in frame.groupby("task", sort=False)}
        rows.append(row)
    # the demo's inference ablations draw the same noise on an episode: compare them pairwise
    full = frames["AsyncVLA demo checkpoint"]
    for row, (label, _, mode) in zip(rows, policies, strict=True):
        if mode in ("sfm", "random-mask"):
            wins, losses = paired_discordance(frames[label], full)
            row["wins / losses vs AsyncVLA demo"] = f"{wins} / {losses}"
            row["McNemar p"] = round(mcnemar_exact(wins, losses), 4)
    table = pd.DataFrame(rows)
    expert = rates["scripted expert"]
    table.insert(2, "gap to expert (points)", [100 * (expert - r) for r in table["success rate"]])
    for col in table.columns:
        if table[col].dtype.kind == "f" and col not in ("gap to expert (points)", "McNemar p"):
            table[col] = (100 * table[col]).round(1)
    text = header(
        "demo checkpoint (and its inference ablations) vs random policy vs scripted expert, "
        "same episodes (rates in %)",
        args,
        f"env seed 0; {plan.demo_eval_episodes} eval layouts per task; training data {note}",
    )
    print(write_tables({"demo_vs_baselines": table}, Path(args.out), text))
    shipped = ROOT / "asyncvla" / "demo"
    if (shipped / "manifest.json").is_file() and file_hash(shipped / "model.safetensors") == file_hash(
        demo / "model.safetensors"
    ):  # the shipped checkpoint says how it scores, next to how it was made
        manifest = json.loads((shipped / "manifest.json").read_text())
        manifest["tabletop_eval"] = {
            r["policy"]: f"{r['success rate']:.1f}% of {r['episodes']} episodes (95% CI {r['95% CI']})"
            for r in table.to_dict("records")
        }
        manifest["tabletop_eval"]["protocol"] = (
            f"{plan.demo_eval_episodes} eval layouts per task, env seed 0, --set image_size={plan.image_size}"
        )
        (shipped / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def stage_ablations(args, plan: Plan, subset: Path, note: str) -> None:
    from evalsuite.ablations import VARIANTS, run_ablations, seed_summary, write_seed_summary

    per_seed, errors = {}, []
    samples = heldout_samples(Path(args.work) / "demos", plan.heldout_per_task)
    for seed in plan.seeds:
        ckpts = {}
        for objective in ("unified", "sfm"):
            snaps = train_snapshots(
                subset, Path(args.work) / f"seed{seed}" / objective, objective, seed, plan
            )
            train_rater(subset, snaps[-1], plan.rater_steps, plan.batch, seed, plan.lr)
            ckpts[objective] = snaps[-1]
        base = eval_config(
            ["--ckpt", str(ckpts["unified"])],
            Path(args.work) / f"ablations-seed{seed}",
            plan.ablation_episodes,
            plan,
        )
        base = dataclasses.replace(base, out=Path(args.out) / "ablations" / f"seed{seed}")
        table, _ = run_ablations(base, str(ckpts["sfm"]), show_progress=False, data_note=note)
        per_seed[seed] = table
        for label, _, which, mode in VARIANTS:
            err = action_error(ckpts[which], mode, samples)
            errors.append(
                {"variant": label, "seed": seed, "error": err.mean(), "se": err.std(ddof=1) / len(err) ** 0.5}
            )
    summary = seed_summary(per_seed)
    write_error_table(pd.DataFrame(errors), Path(args.out) / "ablations", args, plan, note, len(samples))
    text = header(
        "Table 4 layout: mean and spread over training seeds (rates in %)",
        args,
        f"training seeds {list(plan.seeds)}; env seed 0; {plan.ablation_episodes} eval layouts per task "
        f"and seed; data-limited regime: {note}, {plan.epochs} epochs",
    )
    print(write_seed_summary(summary, Path(args.out) / "ablations", text))


def write_error_table(frame: pd.DataFrame, out: Path, args, plan: Plan, note: str, n: int) -> None:
    from evalsuite.tables import write_tables

    rows = []
    for label, group in frame.groupby("variant", sort=False):
        row = {"variant": label}
        row |= {f"seed {r.seed}": f"{r.error:.3f} ± {r.se:.3f}" for r in group.itertuples()}
        sd = f"{group['error'].std(ddof=1):.3f}" if len(group) > 1 else "--"
        row["mean ± sd over seeds"] = (
            f"{group['error'].mean():.3f} ± {sd}"  # text: tables print floats at .1f
        )
        rows.append(row)
    frame.to_csv(out / "ablations_action_error_per_seed.csv", index=False)
    text = header(
        "Table 4 layout, held-out action error (lower is better; per seed: mean ± standard error)",
        args,
        f"training seeds {list(plan.seeds)}; {n} held-out steps (every 4th step of the last "
        f"{plan.heldout_per_task} demos per task, never trained on); error = squared error of the "
        f"executed chunk to the expert's, in expert-spread units; training data {note}, {plan.epochs} epochs",
    )
    print(write_tables({"ablations_action_error": pd.DataFrame(rows)}, out, text))


def stage_efficiency(args, plan: Plan, subset: Path, note: str) -> None:
    from evalsuite.tables import rate_row, write_tables

    seed, rows, losses = plan.seeds[0], [], {}
    samples = heldout_samples(Path(args.work) / "demos", plan.heldout_per_task)
    for objective in ("unified", "sfm"):
        run = Path(args.work) / f"seed{seed}" / objective
        snaps = train_snapshots(subset, run, objective, seed, plan)
        losses[objective] = pd.read_csv(run / "loss.csv")
        for snap in snaps:
            epoch = int(snap.name.removeprefix("epoch"))
            config = eval_config(
                ["--ckpt", str(snap)],
                Path(args.work) / f"efficiency-{objective}-{snap.name}",
                plan.efficiency_episodes,
                plan,
                mode="sfm",
            )
            stats = rate_row(success_frame(config)["success"])
            err = action_error(snap, "sfm", samples)
            per_epoch = losses[objective].groupby("epoch")["loss"].mean()
            rows.append(
                {
                    "objective": objective,
                    "epoch": epoch,
                    "train loss (epoch mean)": float(per_epoch.loc[epoch]),
                    "held-out action error": float(err.mean()),
                    "error SE": float(err.std(ddof=1) / len(err) ** 0.5),
                    "success rate": 100 * stats["success_rate"],
                    "95% CI": f"{100 * stats['ci_low']:.1f}-{100 * stats['ci_high']:.1f}",
                    "episodes": stats["episodes"],
                }
            )
    table = pd.DataFrame(rows)
    out = Path(args.out) / "efficiency"
    out.mkdir(parents=True, exist_ok=True)
    text = header(
        "data efficiency (Sec. 4.4 layout): unified vs SFM-only training, both run with SFM inference",
        args,
        f"training seed {seed}; env seed 0; {plan.efficiency_episodes} eval layouts per task; data {note}; "
        f"constant lr {plan.lr}, batch {plan.batch}",
    )
    shown = table.drop(columns=["train loss (epoch mean)", "held-out action error", "error SE"])
    # text, not floats: the shared table writer prints floats at .1f
    shown.insert(2, "train loss x1000 (epoch mean)", (1000 * table["train loss (epoch mean)"]).round())
    shown.insert(
        3,
        "held-out action error ± SE",
        [
            f"{e:.3f} ± {se:.3f}"
            for e, se in zip(table["held-out action error"], table["error SE"], strict=True)
        ],
    )
    table.to_csv(out / "efficiency_values.csv", index=False)
    print(write_tables({"efficiency": shown}, out, text))
    plot_efficiency(losses, table, out / "efficiency.png")


def plot_efficiency(losses: dict[str, pd.DataFrame], table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, c, b) = plt.subplots(1, 3, figsize=(14, 3.6))
    for objective, frame in losses.items():
        per_epoch = frame.groupby("epoch")["loss"].mean()
        a.plot(per_epoch.index, per_epoch.values, marker=".", label=objective)
        rows = table[table["objective"] == objective]
        c.errorbar(
            rows["epoch"], rows["held-out action error"], yerr=rows["error SE"], marker="o", label=objective
        )
        b.plot(rows["epoch"], rows["success rate"], marker="o", label=objective)
    a.set(
        xlabel="epoch", ylabel="training loss (epoch mean)", title="loss vs epoch (cf. Fig. 4)", yscale="log"
    )
    c.set(xlabel="epoch", ylabel="held-out action error (SFM inference)", title="held-out error vs epoch")
    b.set(xlabel="epoch", ylabel="success rate (%)", title="success vs epoch (cf. Fig. 5)")
    for ax in (a, c, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stage_figure(args, plan: Plan, demo: Path) -> None:
    """Fig. 3 layout: one chunk per episode, the chunk where the rater remasked the most tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import asyncvla
    from evalsuite.suites import get_suite
    from evalsuite.suites.spec import import_object

    policy = asyncvla.load(str(demo), mode="asyncvla")
    suite = get_suite("tabletop")
    env = import_object(suite.env_factory)(**{**suite.env_kwargs, "image_size": plan.image_size})
    tasks = [t.name for t in suite.tasks][: plan.figure_episodes]
    fig, axes = plt.subplots(3, len(tasks), figsize=(4.2 * len(tasks), 8), squeeze=False)
    try:
        for col, task in enumerate(tasks):
            obs, best, step = env.reset(task, 0, 0), None, 0
            while step < 48:  # the first six chunks of episode 0
                key = f"figure/{task}/ep0@{step}"
                ex = policy.explain(obs, key)
                if best is None or ex.mask.sum() > best[1].mask.sum():
                    best = (step, ex)
                for action in ex.afm_actions:
                    obs, done, success, _ = env.step(action, render=True)
                    step += 1
                    if done or success:
                        break
                if done or success:
                    break
            at, ex = best
            t = np.arange(len(ex.sfm_actions))
            for d, name in enumerate(("dx", "dy", "dz")):
                axes[0, col].plot(t, ex.sfm_actions[:, d], marker="o", label=f"SFM {name}")
                axes[2, col].plot(t, ex.afm_actions[:, d], marker="o", label=f"AFM {name}")
            axes[1, col].bar(t, ex.confidence, color=["tab:red" if m else "tab:green" for m in ex.mask])
            axes[1, col].axhline(policy.threshold, color="k", ls="--", lw=1)
            axes[0, col].set_title(f"{task}, chunk at step {at}", fontsize=9)
            axes[1, col].set(ylim=(0, 1), ylabel="rater confidence (red = remasked)")
            axes[0, col].set(ylabel="SFM actions")
            axes[2, col].set(ylabel="AFM actions", xlabel="action token l")
            axes[0, col].legend(fontsize=7)
            axes[2, col].legend(fontsize=7)
    finally:
        env.close()
    fig.suptitle(
        f"self-correction, demo checkpoint, eval layout 0, seed 0 ({' '.join(args.argv)})", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(Path(args.out) / "self_correction.png", dpi=110)
    plt.close(fig)


class StageTimer:
    """Wall time of each stage invocation, appended to OUT/timings.json (a re-run that finds its
    episodes already recorded shows up as a short entry, the first run as the real cost).
    The demo stage finishes in a background thread, so the file's read-append-write is locked."""

    def __init__(self, path: Path, quick: bool):
        self.path, self.quick = path, quick
        self.lock = threading.Lock()

    def __call__(self, stage: str, fn, *a) -> None:
        import time

        start = time.perf_counter()
        fn(*a)
        entry = {
            "stage": stage,
            "quick": self.quick,
            "seconds": round(time.perf_counter() - start, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with self.lock:
            runs = json.loads(self.path.read_text()) if self.path.is_file() else []
            runs = runs if isinstance(runs, list) else []
            self.path.write_text(json.dumps([*runs, entry], indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the reduced configuration (Plan.quick)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--work", default="runs/repro", help="datasets, checkpoints, run dirs")
    p.add_argument("--out", default="results/tabletop", help="tables and figures")
    p.add_argument("--demo-ckpt", help="use this demo checkpoint instead of training one")
    p.add_argument(
        "--sfm-ckpt", help="table4: use this SFM-trained checkpoint (with its rater) instead of training one"
    )
    p.add_argument(
        "--table4-episodes", type=int, help="table4: layouts per task and row (default: the plan's 50)"
    )
    p.add_argument(
        "--sfm-extra",
        nargs="*",
        default=[],
        help="table4: earlier snapshots of the SFM-trained model (with raters), one more row each",
    )
    p.add_argument(
        "--workers", type=int, help="env workers of the evaluations (default: the plan's; 0 runs inline)"
    )
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    stages = [s.strip() for s in args.stages.split(",")]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    torch.set_num_threads(1)
    import time

    started = time.time()
    plan = Plan.quick() if args.quick else Plan()
    if args.workers is not None:
        plan = dataclasses.replace(plan, workers=args.workers)
    work, out = ROOT / args.work, ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(
        json.dumps({"quick": args.quick, **dataclasses.asdict(plan)}, indent=2) + "\n"
    )
    demos = work / "demos"
    if "record" in stages and not (demos / "info.json").is_file():
        shutil.rmtree(demos, ignore_errors=True)
        sh(
            [sys.executable, "-m", "evalsuite.cli", "record-demos", "tabletop", "--out", str(demos)]
            + ["--episodes-per-task", str(plan.demos_per_task), "--image-size", str(plan.image_size)]
            + ["--workers", str(plan.workers), "--seed", "0"]
        )
    demo = Path(args.demo_ckpt) if args.demo_ckpt else work / "demo"
    timed = StageTimer(out / "timings.json", args.quick)
    if {"ablations", "efficiency"} & set(stages):  # only they train on the subset
        subset = make_subset(demos, work / f"subset{plan.subset_per_task}", plan.subset_per_task)
        sub_note = data_note(subset)
    with ThreadPoolExecutor(max_workers=1) as background:
        # The demo checkpoint trains on one core (a subprocess) while the ablation and efficiency
        # stages, which do not need it, train and evaluate on the other.
        training = None
        if "demo" in stages and not args.demo_ckpt and not (demo / "loss_rater.csv").is_file():
            training = background.submit(timed, "demo", train_demo, plan, demos, demo, work)
        if "ablations" in stages:
            timed("ablations", stage_ablations, args, plan, subset, sub_note)
        if "efficiency" in stages:
            timed("efficiency", stage_efficiency, args, plan, subset, sub_note)
        if training is not None:
            training.result()
    if "ship" in stages:
        ship_demo(plan, demos, demo, ROOT / "asyncvla" / "demo", args)
    if "demo-eval" in stages:
        timed("demo-eval", stage_demo_eval, args, plan, demo, training_data_note(demos, demo))
    if "figure" in stages:
        timed("figure", stage_figure, args, plan, demo)
    if "table4" in stages:
        timed("table4", stage_table4, args, plan, demos, demo, work)
    write_sidecars(out, started, demo, args)
    return 0


def write_sidecars(out: Path, since: float, demo: Path, args) -> None:
    """A provenance sidecar (scripts/result_meta.py) for every file this invocation wrote under
    OUT that has none newer than itself yet (table4 writes its own, with more detail)."""
    from result_meta import SUFFIX, write_meta

    command = shlex.join(["python", "scripts/reproduce_tabletop.py", *args.argv])
    for f in sorted(out.rglob("*")):
        if not f.is_file() or f.name.endswith(SUFFIX) or f.stat().st_mtime < since:
            continue
        side = Path(str(f) + SUFFIX)
        if side.is_file() and side.stat().st_mtime >= f.stat().st_mtime:
            continue
        write_meta(f, demo, command)


def stage_table4(args, plan: Plan, demos: Path, demo: Path, work: Path) -> None:
    """Table 4 at the demo's regime (scripts/table4.py): the SFM-trained model by the demo's own
    commands with --objective sfm, unless --sfm-ckpt gives it; then the four rows."""
    from table4 import stage_table4 as run_table4

    sfm = Path(args.sfm_ckpt) if args.sfm_ckpt else work / "demo-sfm"
    if not args.sfm_ckpt and not (sfm / "loss_rater.csv").is_file():
        train_demo(plan, demos, sfm, work, objective="sfm")
    episodes = args.table4_episodes or plan.table4_episodes
    command = shlex.join(["python", "scripts/reproduce_tabletop.py", *args.argv])
    text = run_table4(
        demo,
        sfm,
        work,
        Path(args.out) / "table4",
        episodes,
        plan.image_size,
        command,
        training_data_note(demos, demo),
        sfm_extra=tuple(Path(x) for x in args.sfm_extra),
    )
    print(text)


if __name__ == "__main__":
    sys.exit(main())
