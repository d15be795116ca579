"""What a training is: the settings that make two trainings of a stage the same one, the phases a
resumed training went through, and the record config.json keeps of both.

- `run_settings`: the data (its hash), the stage's objective, model size, seed, batch size,
  number of workers, device type, pause threshold, strategy (ddp | fsdp), and for the rater stage the policy it was
  trained on. A `--resume` with any of them changed is refused, naming each field and both values.
- `phase_settings`: the total step count, learning rates and warm-up. A `--resume` may change
  them (train further, lower the learning rate): the change is applied from the step it resumes
  at and recorded as a new phase, `{"from_step": N, ...}`, never silently ignored.
"""

from __future__ import annotations

from pathlib import Path

from asyncvla.training import flags
from asyncvla.training.errors import TrainError

# how each setting is named to the user
SETTING_NAMES = {
    "data_sha256": "dataset (sha256 of its files)",
    "objective": "--objective",
    "size": "--size",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "num_workers": "--num-workers",
    "device": "--device",
    "pause_threshold": "--pause-threshold",
    "policy_steps": "the policy's steps (the rater was trained on another policy)",
    "policy_data_sha256": "the policy's dataset",
    "strategy": "--strategy",
}
# the value of a setting in states saved before it was recorded
SAVED_BEFORE = {"strategy": "ddp"}
PHASE_NAMES = {
    "total_steps": "--steps",
    "lr": "--lr",
    "vision_lr": "--vision-lr",
    "warmup_steps": "--warmup-steps",
}


def run_settings(cfg, data_sha256: str, world: int, device_type: str, policy_record: dict | None) -> dict:
    """What makes two trainings of a stage the same training (refused if they differ on resume)."""
    settings = {"data_sha256": data_sha256, "seed": cfg.seed, "batch_size": cfg.batch_size}
    settings |= {"num_workers": world, "device": device_type, "pause_threshold": cfg.pause_threshold}
    settings |= {"strategy": flags.strategy(cfg)}
    if cfg.stage == "policy":
        return {**settings, "objective": cfg.objective, "size": cfg.size}
    policy = ((policy_record or {}).get("stages") or {}).get("policy") or {}
    return {**settings, "policy_steps": policy.get("steps"), "policy_data_sha256": policy.get("data_sha256")}


def phase_settings(cfg, total: int) -> dict:
    """What a resume may change, as a new phase of the stage."""
    phase = {"total_steps": total, "lr": cfg.lr, "warmup_steps": cfg.warmup_steps}
    return {**phase, "vision_lr": cfg.vision_lr} if cfg.stage == "policy" else phase


def check_resume(state: dict, settings: dict, state_file: Path, record: dict | None, stage: str) -> None:
    """Refuse to resume a training state saved by another training, or one that is not of the same
    save as the checkpoint beside it."""
    saved = state["settings"]
    differ = [
        f"{SETTING_NAMES.get(k, k)} {_short(saved.get(k, SAVED_BEFORE.get(k)))} saved, {_short(v)} now"
        for k, v in settings.items()
        if saved.get(k, SAVED_BEFORE.get(k)) != v
    ]
    if differ:
        raise TrainError(
            f"--resume: {state_file} belongs to another training ({'; '.join(differ)}); resume with the "
            "settings it was started with, or start a new training (--overwrite, or a new --out)"
        )
    steps = (((record or {}).get("stages") or {}).get(stage) or {}).get("steps")
    if steps != state["step"]:
        raise TrainError(
            f"--resume: {state_file} is of step {state['step']} but {state_file.parent / 'config.json'} "
            f"records {steps} {stage} steps, so they are not one save; start anew with --overwrite"
        )


def changed_phase(phases: list[dict], phase: dict) -> str | None:
    """How `phase` differs from the last recorded one ("--lr 0.0001 (was 0.0003)"), or None."""
    last = phases[-1]
    changes = [
        f"{PHASE_NAMES[k]} {v:g} (was {last.get(k, float('nan')):g})"
        for k, v in phase.items()
        if last.get(k) != v
    ]
    return ", ".join(changes) or None


def _short(value) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else repr(value)


def training_record(
    previous: dict | None,
    cfg,
    steps: int,
    dataset,
    data_sha256: str,
    image_size: int,
    data_info: dict | None = None,
    settings: dict | None = None,
    phases: list[dict] | None = None,
    resumed: bool | None = None,
) -> dict:
    """What config.json says of how the checkpoint was trained: the objective, the image size the
    model reads, and per stage its step count and data (hash, native image size, the renderer's
    settings where the dataset names them, pauses), its settings and phases, so a rater trained on
    other data never replaces what the policy was trained on. The top-level `data_image_size` and
    `data_render` are the policy stage's (what the policy saw: the harness compares the env's
    images with them). The policy stage starts a record (a policy retrained from scratch drops the
    rater's); the rater stage adds itself to the policy's; a resumed policy keeps its record but
    drops the rater's (trained on the policy as it was). `resumed`: whether this training continues
    a save (default: cfg.resume)."""
    resumed = cfg.resume if resumed is None else resumed
    record = dict(previous or {}) if (cfg.stage == "rater" or resumed) else {}
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
    entry = {"steps": steps, **data}
    if settings is not None:
        entry["settings"] = settings
    if phases is not None:
        entry["phases"] = phases
    stages[cfg.stage] = entry
    record.update(stages=stages, image_size=image_size)
    return record
