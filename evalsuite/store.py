"""The run directory: run.json (manifest), episodes.jsonl (append-only, fsynced), videos/, tables/.

A run can be killed at any moment (kill -9, node loss) and re-run with the same command: every
finished episode is one fsynced line, a torn last line is cut off on reopen, and an episode id
already recorded is never run or counted twice. One process at a time writes a run directory: the
writer holds an exclusive lock on it for the whole run (`RunLock`), and a second command on the
same directory is refused with the holder's pid and host.

Records read back are checked field by field. Duplicate episode ids (a `--retry-errors` rerun, or
two writers before locking existed, or an edit by hand) are resolved by one rule: a record with an
outcome (success or failure) is final and the first one counts; an error record is replaced by any
later record of the same episode.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import weakref
from pathlib import Path
from typing import Any

from evalsuite.errors import EvalError
from evalsuite.records import EpisodeRecord, EpisodeSpec

log = logging.getLogger(__name__)

MANIFEST = "run.json"
EPISODES = "episodes.jsonl"
LOCK_INFO = ".lock"  # pid and host of the process that holds the directory's lock

# Manifest keys that define *what* is measured: resuming into a directory whose manifest
# disagrees on any of them would mix two experiments in one table. The checkpoint is identified by
# its sha256, not its path, and the device is not part of what is measured: a moved checkpoint, or
# a resume on another host, continues the same run (likewise a remote policy's address and timeout).
# SETTING_KEYS: the part of it that is not which policy ran; two runs compared as two policies
# (`asyncvla-eval compare`, the nightly job) must agree on these (`setting_differences`).
SETTING_KEYS = ("protocol", "seed", "replan_steps", "latency_conditions")
IDENTITY_KEYS = ("suites", "policy", "checkpoint_sha256", *SETTING_KEYS)
# the policy's own settings that change what a policy computes, as opposed to which policy it is
POLICY_SETTING_KEYS = ("mode", "threshold", "mask_rate")
# eager: the reference and the fast inference path compute the same chunks (tests/test_fast.py);
# with `--latency measured` how fast they compute them changes results: the manifest's
# `latency_conditions` (device, inference path, batching) is identity then
NOT_IDENTITY_POLICY_KEYS = ("checkpoint", "device", "url", "timeout_s", "eager")
# Env options that change how fast a simulator runs, not what it computes: LIBERO's gated
# rendering and cheap reset give bit-identical states and images (scripts/bench_libero.py,
# scripts/check_libero_reset.py), so a run resumed with either switched, or begun before the
# option existed, is the same run.
NOT_IDENTITY_ENV_KWARGS = ("skip_unused_renders", "cheap_reset")


class RunDirError(EvalError):
    """The run directory holds another run, is in use, or its records are damaged."""


def identity(manifest: dict[str, Any], key: str) -> Any:
    value = manifest.get(key)
    if key == "policy" and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in NOT_IDENTITY_POLICY_KEYS}
    if key == "protocol" and isinstance(value, dict):
        value = {
            suite: {
                **values,
                "env_kwargs": {
                    k: v for k, v in values.get("env_kwargs", {}).items() if k not in NOT_IDENTITY_ENV_KWARGS
                },
            }
            if isinstance(values, dict)
            else values
            for suite, values in value.items()
        }
    return value


def setting_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Where two runs' manifests disagree on what is measured, apart from which policy ran: the
    protocol of each suite both ran, the seed, the replanning, and (for two AsyncVLA checkpoints)
    the inference mode and threshold. One line per key, naming the fields and both values."""
    found = []
    for key in SETTING_KEYS:
        va, vb = identity(a, key), identity(b, key)
        if key == "protocol" and isinstance(va, dict) and isinstance(vb, dict):
            shared = sorted(set(va) & set(vb))
            va, vb = {k: va[k] for k in shared}, {k: vb[k] for k in shared}
        if va != vb:
            found.append(differences(va, vb, key))
    pa, pb = a.get("policy") or {}, b.get("policy") or {}
    if pa.get("kind") == pb.get("kind") == "asyncvla":
        for key in POLICY_SETTING_KEYS:
            if pa.get(key) != pb.get(key):
                found.append(differences(pa.get(key), pb.get(key), f"policy.{key}"))
    return found


def check_run_dir(path: Path) -> None:
    """`path` may receive a run: it does not exist, is empty, or holds a run (its run.json). A
    directory with records but no run.json has lost the description its records were made
    under; any other non-empty directory (a checkpoint, a dataset) would have a run mixed into it."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise RunDirError(
            f"--out {path} is a file, not a directory; choose a directory (new, or a run to resume)"
        )
    if (path / MANIFEST).exists():
        return
    if (path / EPISODES).exists():
        raise RunDirError(
            f"{path} holds episode records ({EPISODES}) but no {MANIFEST}, the description they were "
            f"recorded under, so they cannot be resumed or reported; restore {MANIFEST}, or use another --out"
        )
    # what a run leaves before its run.json is written: its lock file, empty videos/ and tables/
    content = [p.name for p in path.iterdir() if not _left_by_a_start(p)]
    if content:
        shown = ", ".join(sorted(content)[:5]) + (", ..." if len(content) > 5 else "")
        raise RunDirError(
            f"--out {path} is a non-empty directory that is not a run directory (it holds {shown}); "
            "choose a new or empty directory, or a run directory to resume"
        )


def _left_by_a_start(p: Path) -> bool:
    return p.name == LOCK_INFO or (p.name in ("videos", "tables") and p.is_dir() and not any(p.iterdir()))


def differences(before: Any, now: Any, path: str, limit: int = 4) -> str:
    """The leaves where two manifest values differ, `path.to.leaf: A there, B now`, at most `limit`."""
    found: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, "(absent)"), b.get(k, "(absent)"), f"{where}.{k}")
        elif a != b:
            found.append(f"{where} is {json.dumps(a, default=str)} there, {json.dumps(b, default=str)} now")

    walk(before, now, path)
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more


def check_records_match(manifest: dict[str, Any], records: list[EpisodeRecord], where: Path) -> None:
    """Every record was made under `manifest`'s description (its suites, seed, policy mode and step
    budgets) and its episode id is the one its fields give: refuse an edited run.json or record
    rather than print a header over results that were not made under it."""
    for record in records:
        problem = _record_problem(record, manifest)
        if problem:
            raise RunDirError(
                f"{Path(where) / EPISODES}: record {record.episode_id} does not belong to the run "
                f"{MANIFEST} describes ({problem}); {MANIFEST} or the records were edited: restore them"
            )


def _record_problem(r: EpisodeRecord, manifest: dict[str, Any]) -> str | None:
    expected = EpisodeSpec(r.suite, r.task, r.episode_index, r.seed, r.variant, r.mode).id
    if r.episode_id != expected:
        return f"its episode_id is {r.episode_id!r} but its fields give {expected!r}"
    if r.suite not in manifest["suites"]:
        return f"its suite {r.suite!r} is not among run.json's suites {manifest['suites']}"
    if "seed" in manifest and r.seed != manifest["seed"]:
        return f"its seed {r.seed} is not run.json's seed {manifest['seed']!r}"
    policy = manifest.get("policy")
    if isinstance(policy, dict) and "kind" in policy:
        mode = (
            policy.get("mode") if policy["kind"] == "asyncvla" else policy["kind"]
        )  # PolicySpec.episode_mode
        if r.mode != mode:
            return f"its mode {r.mode!r} is not the mode of run.json's policy ({mode!r})"
    protocol = manifest.get("protocol")
    values = protocol.get(r.suite) if isinstance(protocol, dict) else None
    budgets = values.get("step_budgets") if isinstance(values, dict) else None
    if isinstance(budgets, list) and budgets and r.steps > max(budgets):
        return f"it ran {r.steps} steps, over run.json's step budget {max(budgets)}"
    return None


class RunLock:
    """An exclusive `flock` on the run directory, held until `release` or the process ends (a
    killed process releases it too). Nothing is written to the directory unless it is acquired."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"{self.dir} is in use by another run ({self._holder()}); wait for it to finish or "
                "use another --out directory"
            ) from None
        self.fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)  # a dropped lock object releases it
        (self.dir / LOCK_INFO).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    def _holder(self) -> str:
        try:
            info = json.loads((self.dir / LOCK_INFO).read_text())
            return f"pid {info['pid']} on host {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self) -> None:
        if self.fd is not None:
            (self.dir / LOCK_INFO).unlink(missing_ok=True)
            self._finalizer()  # closes the descriptor, which releases the flock
            self.fd = None


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.episodes_path = self.dir / EPISODES
        self.manifest_path = self.dir / MANIFEST
        self.lock = RunLock(self.dir)

    # -- manifest -------------------------------------------------------------------------
    def open(self, manifest: dict[str, Any]) -> dict[str, EpisodeRecord]:
        """Lock, then create or resume the run; return the episodes already recorded (by id).

        Everything that can refuse the run (the lock, another run's manifest, damaged records) is
        checked before the first byte is written."""
        check_run_dir(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            check_run_dir(self.dir)  # again, under the lock: another writer may have been first
            previous = self.read_manifest() if self.manifest_path.exists() else None
            if previous is not None:
                for key in IDENTITY_KEYS:
                    if identity(previous, key) != identity(manifest, key):
                        raise RunDirError(
                            f"{self.dir} already holds a run with a different {key!r}: "
                            f"{differences(identity(previous, key), identity(manifest, key), key)}; "
                            "use another --out directory to start a new run"
                        )
            records = self.load_records()
        except BaseException:
            self.lock.release()
            raise
        if previous is not None:
            manifest = {**previous, **manifest, "created": previous.get("created", manifest.get("created"))}
            manifest["resumed"] = previous.get("resumed", 0) + 1
        (self.dir / "videos").mkdir(exist_ok=True)
        (self.dir / "tables").mkdir(exist_ok=True)
        self.write_manifest(manifest)
        return records

    def close(self) -> None:
        self.lock.release()

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except FileNotFoundError as e:
            raise RunDirError(f"{self.dir} is not a run directory: {MANIFEST} is missing") from e
        except json.JSONDecodeError as e:
            raise RunDirError(f"{self.manifest_path} is not valid JSON ({e})") from e
        if not isinstance(manifest, dict):
            raise RunDirError(
                f"{self.manifest_path} holds a JSON {type(manifest).__name__}, not the object "
                "asyncvla-eval writes; the file was replaced or edited"
            )
        if not isinstance(manifest.get("suites"), list):
            raise RunDirError(
                f"{self.manifest_path} has no list of 'suites'; it was not written by asyncvla-eval "
                "or was edited"
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
            os.replace(tmp, self.manifest_path)  # atomic: a crash leaves the old or the new manifest
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk must not leave a 0-byte run.json.tmp behind
            raise

    def update_manifest(self, **fields: Any) -> None:
        self.write_manifest({**self.read_manifest(), **fields})

    # -- records --------------------------------------------------------------------------
    def load_records(self, repair: bool = True) -> dict[str, EpisodeRecord]:
        """Records by episode id, by the module's duplicate rule. A torn last line (a process killed
        mid-write) is cut off the file when `repair`, else only skipped (`report` reads runs on
        read-only file systems)."""
        if not self.episodes_path.exists():
            return {}
        data = self.episodes_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("dropping a torn last record (%d bytes) in %s", len(data) - keep, self.episodes_path)
            data = data[:keep]
            if repair:
                self._truncate(keep)
        records: dict[str, EpisodeRecord] = {}
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = EpisodeRecord.from_json_dict(json.loads(line))
            except ValueError as e:  # JSONDecodeError is a ValueError
                raise RunDirError(
                    f"{self.episodes_path}:{lineno} is not a valid episode record ({e}); "
                    "the file was edited or damaged; fix or delete that line to resume"
                ) from e
            earlier = records.get(record.episode_id)
            if earlier is not None and earlier.success is not None:
                if record.success != earlier.success:
                    log.warning(
                        "%s:%d: a second outcome for %s is ignored (the first recorded outcome counts)",
                        self.episodes_path,
                        lineno,
                        record.episode_id,
                    )
                continue
            records[record.episode_id] = record
        return records

    def _truncate(self, size: int) -> None:
        with self.episodes_path.open("rb+") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: EpisodeRecord) -> None:
        line = json.dumps(record.to_json_dict(), default=_json_default) + "\n"
        with self.episodes_path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def write_video(self, name: str, data: bytes) -> str:
        path = self.dir / "videos" / name
        path.write_bytes(data)
        return str(path.relative_to(self.dir))


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays that simulators put into info dicts
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
