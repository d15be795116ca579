"""Benchmark results name the commit they were measured at (evalsuite/tree_state.py), also on the
GPU machine's copy of the tree, which has no .git; scripts/gpu_check.sh refuses a dirty tree."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalsuite.tree_state import STAMP, stamp_differences, tree_state, write_stamp

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("scripts/gpu_check.sh", "scripts/gpu_train_check.sh", "scripts/gpu_prelude.sh")
COPIED += ("evalsuite/__init__.py", "evalsuite/tree_state.py")


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository holding what gpu_check.sh needs before it looks for a GPU, committed."""
    r = tmp_path / "repo"
    for name in COPIED:
        (r / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, r / name)
    (r / "data.txt").write_text("one\n")
    _git(r, "init", "-q")
    _git(r, "add", ".")
    _git(r, "commit", "-q", "-m", "x")
    return r


def test_the_state_names_the_commit_and_whether_tracked_files_differ(repo):
    head = _git(repo, "rev-parse", "HEAD")
    assert tree_state(repo) == {"commit": head, "clean_tree": True}
    (repo / "untracked.txt").write_text("not part of any commit\n")  # untracked files do not count
    assert tree_state(repo)["clean_tree"] is True
    (repo / "data.txt").write_text("two\n")
    assert tree_state(repo) == {"commit": head, "clean_tree": False}


def test_a_copy_without_git_is_checked_against_the_stamp(repo, tmp_path):
    """The GPU machine's copy: the stamp names the commit, and a file that is not the commit's
    (edited before or after the stamp was written) makes the tree not clean."""
    head = _git(repo, "rev-parse", "HEAD")
    write_stamp(repo)
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git"))
    assert tree_state(copy) == {"commit": head, "clean_tree": True}
    (copy / "data.txt").write_text("edited\n")
    (copy / "evalsuite" / "__init__.py").unlink()
    assert tree_state(copy) == {"commit": head, "clean_tree": False}
    recorded = json.loads((copy / STAMP).read_text())
    assert stamp_differences(recorded, copy) == ["data.txt: modified", "evalsuite/__init__.py: missing"]
    (copy / STAMP).unlink()
    assert tree_state(copy) == {"commit": None, "clean_tree": None}  # unknown, never clean


def _gpu_check(repo: Path, out: Path, script: str, **env) -> subprocess.CompletedProcess:
    # python3 on the GPU machine has torch; here the project's interpreter stands in for it
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", script],
        cwd=repo,
        env={**os.environ, "PATH": path, "OUT": str(out), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("script", ["scripts/gpu_check.sh", "scripts/gpu_train_check.sh"])
def test_gpu_check_refuses_a_dirty_tree_unless_told_to_try(repo, tmp_path, script):
    (repo / "data.txt").write_text("uncommitted\n")
    refused = _gpu_check(repo, tmp_path / "out", script)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to write results" in lines[0], refused.stderr
    assert "data.txt" in lines[0] and "GPU_CHECK_ALLOW_DIRTY=1" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written
    # the override runs on (here to the GPU check, which fails on this machine) and marks the output
    tried = _gpu_check(repo, tmp_path / "out", script, GPU_CHECK_ALLOW_DIRTY="1")
    assert "no CUDA GPU" in tried.stderr or "no CUDA GPU" in tried.stdout, tried
    assert "not for committing" in (tmp_path / "out" / "NOT_FOR_COMMIT.txt").read_text()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_gpu_check_accepts_a_clean_tree_and_a_stamped_copy(repo, tmp_path):
    clean = _gpu_check(repo, tmp_path / "a", "scripts/gpu_check.sh")
    assert "refusing" not in clean.stderr and "no CUDA GPU" in clean.stderr + clean.stdout, clean
    write_stamp(repo)
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git"))
    stamped = _gpu_check(copy, tmp_path / "b", "scripts/gpu_check.sh")
    assert "refusing" not in stamped.stderr and "no CUDA GPU" in stamped.stderr + stamped.stdout, stamped
    assert not (tmp_path / "b" / "NOT_FOR_COMMIT.txt").exists()


def test_every_benchmark_records_the_commit():
    """Each scripts/bench_*.py writes its result with `tree_state()` (meta.commit, clean_tree)."""
    benches = sorted((ROOT / "scripts").glob("bench_*.py"))
    assert len(benches) >= 8
    missing = [b.name for b in benches if "tree_state()" not in b.read_text()]
    assert not missing, missing
