"""kill -9 `asyncvla-train` at random moments and resume it (issue 35, item 6): every resume must end
exactly where an uninterrupted training ends, or be refused with one line naming the damaged file.

    python scripts/kill_train.py                                  # 20 kills -> results/train/kill_resume.json
    python scripts/kill_train.py --kills 3 --out /tmp/kills.json  # a quick look

The training: the tiny model on two synthetic episodes (tests/test_train.py's), `--steps 30
--save-every 1 --threads 1`, so that a save follows every step and kills land in saves. A reference
runs uninterrupted. Each kill is a SIGKILL to a run of the command, at one of two kinds of random
moment, alternately: a delay drawn uniformly over the reference's whole wall time (start-up, data,
model, steps, saves), or a random moment within the step (and its save) after the run's loss log
reaches a random number of steps past the save it started from.
After a kill the same command runs again with `--resume`, and may be killed again, until a run
finishes. The finished directory must equal the reference: every tensor and the metadata of both
safetensors files, config.json, the statistics, the tokenizer, the loss log, and the training
state (step, optimizer, scheduler, generators, settings). A resume that exits 2 with one line
naming a file of the directory counts as refused; anything else (a traceback, a different
result) as wrong, and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30


def write_data(path: Path) -> Path:
    """Two smooth 12-step trajectories (as tests/test_train.py's `_deterministic`)."""
    from asyncvla.training.datasets import Episode, write_asyncvla_episodes

    episodes = []
    for k in range(2):
        t = np.arange(12)[:, None]
        action = np.sin(0.4 * t + np.arange(7) * 0.5 + 1.5 * k).astype(np.float32)
        state = np.concatenate([np.cos(0.4 * t + k), np.sin(0.4 * t + k), np.zeros((12, 6))], 1)
        images = {c: np.full((12, 56, 56, 3), 60 + 100 * k, np.uint8) for c in ("agentview", "wrist")}
        episodes.append(Episode(images, state.astype(np.float32), action, f"task {k}"))
    return write_asyncvla_episodes(path, episodes, fps=10, source="scripts/kill_train.py")


def command(data: Path, out: Path, steps: int, resume: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "asyncvla.training.train", str(data), "--out", str(out)]
    argv += ["--steps", str(steps), "--batch-size", "4", "--save-every", "1", "--threads", "1"]
    return argv + (["--resume"] if resume else [])


def loss_rows(out: Path) -> int:
    path = out / "loss_policy.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def reference(data: Path, out: Path, steps: int) -> dict:
    """The uninterrupted run, and its timing: wall time and when the first loss row appeared."""
    start = time.monotonic()
    process = subprocess.Popen(
        command(data, out, steps), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    first_row = None
    while process.poll() is None:
        if first_row is None and loss_rows(out):
            first_row = time.monotonic() - start
        time.sleep(0.01)
    if process.returncode != 0:
        raise SystemExit(f"the reference training failed (exit {process.returncode})")
    return {"wall_s": round(time.monotonic() - start, 2), "first_row_s": round(first_row or 0.0, 2)}


def saved_step(out: Path) -> int:
    state = out / "train_state_policy.pt"
    return int(torch.load(state, weights_only=True)["step"]) if state.is_file() else 0


def run_until_killed(argv: list[str], out: Path, trigger: dict) -> tuple[int | None, str]:
    """Run `argv`; SIGKILL it at `trigger`: {"after_s": x} seconds after its start, or
    {"steps_in": k, "then_s": d} d seconds after the loss log reaches k rows past the save it starts
    from. Returns (exit code, or None when it was killed; stderr)."""
    target = saved_step(out) + trigger.get("steps_in", 0)
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    start, reached = time.monotonic(), None
    while process.poll() is None:
        if "after_s" in trigger:
            due = time.monotonic() - start >= trigger["after_s"]
        else:
            if reached is None and loss_rows(out) >= target and log_mtime(out) > start_wall(start):
                reached = time.monotonic()
            due = reached is not None and time.monotonic() - reached >= trigger["then_s"]
        if due:
            process.kill()
            process.communicate()
            return None, ""
        time.sleep(0.002)
    return process.returncode, process.communicate()[1]


def log_mtime(out: Path) -> float:
    try:
        return (out / "loss_policy.csv").stat().st_mtime
    except FileNotFoundError:
        return 0.0


def start_wall(start: float) -> float:
    """The wall-clock time of the monotonic instant `start` (to compare with a file's mtime)."""
    return time.time() - (time.monotonic() - start)


def what_was_there(out: Path) -> dict:
    """The directory right after a kill: how far the log got, and whether a save was under way."""
    state = out / "train_state_policy.pt"
    return {
        "loss_rows": loss_rows(out),
        "saved_step": int(torch.load(state, weights_only=True)["step"]) if state.is_file() else None,
        "save_in_progress": (out / ".saving").exists(),
        "save_marked_complete": (out / ".saving" / "COMPLETE").exists(),
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def differences(out: Path, ref: Path) -> list[str]:
    """What differs between a finished directory and the reference (empty: exact)."""
    from safetensors import safe_open

    wrong = []
    for name in ("model.safetensors", "rater.safetensors"):
        tensors = []
        for d in (out, ref):
            with safe_open(str(d / name), framework="pt") as f:
                tensors.append(({k: f.get_tensor(k) for k in f.keys()}, f.metadata()))
        if not _same(tensors[0][0], tensors[1][0]) or tensors[0][1] != tensors[1][1]:
            wrong.append(name)
    for name in ("config.json", "norm_stats.json", "tokenizer.json"):
        if json.loads((out / name).read_text()) != json.loads((ref / name).read_text()):
            wrong.append(name)
    if (out / "loss_policy.csv").read_text() != (ref / "loss_policy.csv").read_text():
        wrong.append("loss_policy.csv")
    states = [torch.load(d / "train_state_policy.pt", weights_only=True) for d in (out, ref)]
    if not _same(*states):
        wrong.append("train_state_policy.pt")
    return wrong


def trial(data: Path, out: Path, ref: Path, steps: int, triggers: list[dict]) -> dict:
    """One training killed at each of `triggers` in turn (resumed after each), then run to the end."""
    kills, resume, refused, finished = [], False, None, False
    for trigger in triggers:
        code, stderr = run_until_killed(command(data, out, steps, resume), out, trigger)
        if code is None:
            kills.append({**trigger, **what_was_there(out)})
            resume = True
            continue
        finished = code == 0  # it ended before the trigger
        if code != 0:
            refused = stderr.strip().splitlines()[-1:] or [f"exit {code}"]
        break
    if not finished and refused is None:
        done = subprocess.run(command(data, out, steps, resume), capture_output=True, text=True)
        if done.returncode != 0:
            refused = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
    if refused is not None:
        line = refused[0]
        ok = line.startswith("asyncvla-train: error:") and str(out) in line and len(refused) == 1
        return {"kills": kills, "outcome": "refused" if ok else "wrong", "message": line}
    wrong = differences(out, ref)
    return {"kills": kills, "outcome": "wrong" if wrong else "exact", "differs": wrong}


def draw_triggers(rng: random.Random, count: int, timing: dict, steps: int, kind: str) -> list[dict]:
    """`count` kill moments: "time" (uniform over the whole run), "row" (a random number of steps into
    the run, as its loss log shows them: mid-training, around a save), or "mixed" (alternately)."""
    triggers = []
    for i in range(count):
        use_time = kind == "time" or (kind == "mixed" and i % 2 == 0)
        if use_time:
            triggers.append({"after_s": round(rng.uniform(0.0, timing["wall_s"]), 3)})
        else:
            step_s = (timing["wall_s"] - timing["first_row_s"]) / steps  # a step and its save
            triggers.append(
                {"steps_in": rng.randint(1, steps - 1), "then_s": round(rng.uniform(0, step_s), 3)}
            )
    return triggers


def run(kills: int, seed: int, steps: int = STEPS, kind: str = "mixed", work: Path | None = None) -> dict:
    rng = random.Random(seed)
    work = Path(work or tempfile.mkdtemp(prefix="kill_train-"))
    data = write_data(work / "data")
    timing = reference(data, work / "ref", steps)
    trials, done = [], 0
    while done < kills and len(trials) < 3 * kills:  # a run can outlive its trigger: try again
        triggers = draw_triggers(rng, min(kills - done, rng.choice([1, 2])), timing, steps, kind)
        out = work / f"trial-{len(trials):02d}"
        result = trial(data, out, work / "ref", steps, triggers)
        trials.append(result)
        done += len(result["kills"])
        shutil.rmtree(out, ignore_errors=True)
    killed = [k for t in trials for k in t["kills"]]
    outcomes = [t["outcome"] for t in trials]
    return {
        "kills": len(killed),
        "kills_during_a_save": sum(k["save_in_progress"] for k in killed),
        "kills_before_the_first_save": sum(k["saved_step"] is None for k in killed),
        "trials": len(trials),
        "exact": outcomes.count("exact"),
        "refused": outcomes.count("refused"),
        "wrong": outcomes.count("wrong"),
        "reference": timing,
        "steps": steps,
        "seed": seed,
        "trial_results": trials,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--kind", choices=["mixed", "time", "row"], default="mixed")
    p.add_argument("--out", default=str(ROOT / "results" / "train" / "kill_resume.json"))
    args = p.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    result = run(args.kills, args.seed, args.steps, args.kind)
    result = {
        "made_by": "python scripts/kill_train.py " + " ".join(sys.argv[1:]),
        "commit": commit,
        "torch": torch.__version__,
        **result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{result['kills']} kills ({result['kills_during_a_save']} during a save, "
        f"{result['kills_before_the_first_save']} before the first) in {result['trials']} trainings: "
        f"{result['exact']} resumed exactly, {result['refused']} refused, {result['wrong']} wrong -> {args.out}"
    )
    return 1 if result["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
