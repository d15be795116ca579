"""Provenance sidecars for results/tabletop/ (issue 42: no stale result files).

Every result file F under results/tabletop/ (outside archive/) has a sidecar `F.meta.json`:

    {"demo_weights_sha256": ..., "checkpoints": {...}, "scene": {...}, "commit": ..., "dirty": ...,
     "command": ..., "made": ...}

- `demo_weights_sha256`: the demo checkpoint the result was made with, by its weights
  (model.safetensors and rater.safetensors; `demo_weights_sha256`): the shipped demo's manifest.json
  is rewritten by the demo-eval stage, so a hash of the whole directory would change without
  the model changing;
- `checkpoints`: every other checkpoint that went into it (role -> weights hash), e.g. the
  SFM-trained model of Table 4's "w/o unified training" row;
- `scene`: the tabletop env's render settings (envs/tabletop `render_settings`: shadows, lights)
  and the image size the result was rendered at;
- `commit` / `dirty`: the git commit of the tree that made it, and whether tracked files differed.

`tests/test_result_meta.py` fails when a committed result has no sidecar or names another demo
than the shipped one: a result made with an earlier demo or scene moves under
`results/tabletop/archive/<date>/` with a README line saying why it is kept.

    python scripts/result_meta.py --check          # list stale or undocumented results (exit 1 if any)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "asyncvla" / "demo"
RESULTS = ROOT / "results" / "tabletop"
SUFFIX = ".meta.json"
WEIGHTS = ("model.safetensors", "rater.safetensors")
# not results: the archive (kept on purpose, README says why), the sidecars themselves, READMEs
EXEMPT_DIRS = ("archive",)
EXEMPT_NAMES = ("README.md",)


def weights_sha256(ckpt: str | Path) -> str:
    """One hash over a checkpoint's weight files (names and bytes): what decides its outputs."""
    ckpt = Path(ckpt)
    h = hashlib.sha256()
    for name in WEIGHTS:
        if (ckpt / name).is_file():
            h.update(name.encode())
            h.update((ckpt / name).read_bytes())
    return h.hexdigest()


def demo_weights_sha256() -> str:
    return weights_sha256(DEMO)


def scene_settings(image_size: int = 56) -> dict:
    """How the tabletop images look today (the env's render settings) and their size."""
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    from envs.tabletop import make_env

    env = make_env(image_size=image_size)
    try:
        return {"suite": "tabletop", "image_size": image_size, **env.render_settings}
    finally:
        env.close()


def git_state() -> dict:
    """The sidecar's commit and `dirty` flag, from the benchmarks' shared `tree_state`."""
    from evalsuite.tree_state import tree_state

    state = tree_state(ROOT)
    return {
        "commit": state["commit"],
        "dirty": None if state["clean_tree"] is None else not state["clean_tree"],
    }


_SCENE: dict | None = None


def write_meta(
    path: str | Path,
    demo: str | Path,
    command: str,
    extra: dict | None = None,
    checkpoints: dict[str, str | Path] | None = None,
    image_size: int = 56,
) -> Path:
    """Write `path`.meta.json for the result file `path` made with demo checkpoint `demo`."""
    global _SCENE
    if _SCENE is None:
        _SCENE = scene_settings(image_size)
    meta = {
        "demo_weights_sha256": weights_sha256(demo),
        "demo_path": _rel(demo),
        "checkpoints": {
            role: {"path": _rel(p), "weights_sha256": weights_sha256(p)}
            for role, p in (checkpoints or {}).items()
        },
        "scene": _SCENE,
        **git_state(),
        "command": command,
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    side = Path(str(path) + SUFFIX)
    side.write_text(json.dumps(meta, indent=1) + "\n")
    return side


def _rel(p) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def result_files(root: Path = RESULTS) -> list[Path]:
    """The files under `root` that are results (need a sidecar)."""
    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or f.name.endswith(SUFFIX) or f.name in EXEMPT_NAMES:
            continue
        if rel.parts[0] in EXEMPT_DIRS:
            continue
        out.append(f)
    return out


def stale_results(root: Path = RESULTS, demo_sha: str | None = None) -> list[str]:
    """One line per result under `root` without a sidecar, or whose sidecar names a demo other
    than `demo_sha` (default: the shipped demo's weights), or lacks the scene or commit."""
    demo_sha = demo_sha or demo_weights_sha256()
    problems = []
    for f in result_files(root):
        side = Path(str(f) + SUFFIX)
        name = f.relative_to(root)
        if not side.is_file():
            problems.append(f"{name}: no {side.name} (what made it is not recorded)")
            continue
        meta = json.loads(side.read_text())
        if meta.get("demo_weights_sha256") != demo_sha:
            problems.append(
                f"{name}: made with demo {str(meta.get('demo_weights_sha256'))[:12]}, the shipped demo is "
                f"{demo_sha[:12]} (re-make it, or move it under archive/ with a README line saying why)"
            )
        for key in ("scene", "commit"):
            if not meta.get(key):
                problems.append(f"{name}: its sidecar does not record the {key}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("--root", default=str(RESULTS))
    args = p.parse_args(argv)
    problems = stale_results(Path(args.root))
    print("\n".join(problems) or "every result names the shipped demo")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
