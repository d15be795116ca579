"""Which commit a result was made at, and whether the tree held exactly that commit.

Every benchmark result (scripts/bench_*.py) records `tree_state()`: {"commit", "clean_tree"}.
A figure measured on a tree with uncommitted changes to tracked files belongs to no commit, so
`clean_tree` is False then, and `scripts/gpu_check.sh` refuses to write results from such a tree.

The GPU machine receives a copy of the working tree without `.git`. There git cannot say which
commit the files are, so before the run `python -m evalsuite.tree_state --stamp` writes
`.tree_stamp.json` here: the commit and the git blob hash of every file it tracks. Where git is
absent, `tree_state()` reads the stamp and hashes the files as git would: the tree is clean when
every tracked file is there with the commit's contents (a stamp written from a dirty tree, or a
file edited after it was written, shows as not clean).

    python -m evalsuite.tree_state                   # {"commit": ..., "clean_tree": ...}
    python -m evalsuite.tree_state --stamp           # write .tree_stamp.json (needs git)
    python -m evalsuite.tree_state --require-clean   # exit 2, saying why, unless the tree is clean
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = ".tree_stamp.json"


def _git(root: Path, *args: str) -> str | None:
    """git's output, or None where there is no git or no repository (the GPU machine's copy)."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def blob_sha1(data: bytes) -> str:
    """The git object id of a file's contents (what `git ls-tree` lists for it)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_state(root: Path = ROOT) -> dict:
    """{"commit": HEAD's id or None, "clean_tree": no tracked file differs from it (None: unknown)}."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is not None:
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        return {"commit": commit.strip(), "clean_tree": None if status is None else status.strip() == ""}
    stamp = root / STAMP
    if stamp.is_file():
        recorded = json.loads(stamp.read_text())
        return {"commit": recorded["commit"], "clean_tree": not stamp_differences(recorded, root)}
    return {"commit": None, "clean_tree": None}


def write_stamp(root: Path = ROOT) -> Path:
    """`.tree_stamp.json`: HEAD's id and its files' blob ids, for a copy of the tree without git."""
    commit = _git(root, "rev-parse", "HEAD")
    listing = _git(root, "ls-tree", "-r", "-z", "HEAD")
    if commit is None or listing is None:
        raise SystemExit(f"{root} is not a git checkout: the stamp is written where git is")
    files = {}
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind == "blob" and mode != "120000":  # symbolic links: their target, not a file's bytes
            files[path] = sha
    stamp = root / STAMP
    stamp.write_text(json.dumps({"commit": commit.strip(), "files": files}, indent=0) + "\n")
    return stamp


def stamp_differences(recorded: dict, root: Path = ROOT) -> list[str]:
    """The tracked files whose contents here are not the stamped commit's (or that are missing)."""
    out = []
    for path, sha in recorded["files"].items():
        f = root / path
        if not f.is_file():
            out.append(f"{path}: missing")
        elif blob_sha1(f.read_bytes()) != sha:
            out.append(f"{path}: modified")
    return out


def dirty_files(root: Path = ROOT) -> list[str]:
    """What makes the tree not clean: git's short status, or the stamp's differences."""
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if status is not None:
        return status.splitlines()
    stamp = root / STAMP
    if stamp.is_file():
        return stamp_differences(json.loads(stamp.read_text()), root)
    return ["no git and no .tree_stamp.json: which commit this is cannot be told"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stamp", action="store_true", help="write .tree_stamp.json (for a copy without git)")
    p.add_argument("--require-clean", action="store_true", help="exit 2 unless the tree is a clean commit")
    p.add_argument("--root", type=Path, default=ROOT)
    args = p.parse_args(argv)
    if args.stamp:
        print(f"wrote {write_stamp(args.root)}")
    state = tree_state(args.root)
    if args.require_clean and not state["clean_tree"]:
        problems = dirty_files(args.root)
        print(
            f"the tree is not a clean commit ({len(problems)} tracked file(s) differ: "
            f"{', '.join(p.strip() for p in problems[:5])}{', ...' if len(problems) > 5 else ''}); "
            "commit first (results must name the commit they were measured at), or set "
            "GPU_CHECK_ALLOW_DIRTY=1 to try things out (the output is then marked not for committing)",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
