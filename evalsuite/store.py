"""The run directory: run.json (manifest), episodes.jsonl (append-only, fsynced), videos/, tables/.

A run can be killed at any moment (kill -9, node loss) and re-run with the same command: every
finished episode is one fsynced line, a torn last line is cut off on reopen, and an episode id
already recorded is never run or counted twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from evalsuite.records import EpisodeRecord

log = logging.getLogger(__name__)

MANIFEST = "run.json"
EPISODES = "episodes.jsonl"

# Manifest keys that define *what* is measured: resuming into a directory whose manifest
# disagrees on any of them would mix two experiments in one table.
IDENTITY_KEYS = ("suites", "policy", "protocol", "checkpoint_sha256", "seed", "replan_steps")


class RunDirError(RuntimeError):
    """The run directory holds another run, or its records are damaged beyond the last line."""


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.episodes_path = self.dir / EPISODES
        self.manifest_path = self.dir / MANIFEST

    # -- manifest -------------------------------------------------------------------------
    def open(self, manifest: dict[str, Any]) -> dict[str, EpisodeRecord]:
        """Create or resume the run; return the episodes already recorded (by id)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "videos").mkdir(exist_ok=True)
        (self.dir / "tables").mkdir(exist_ok=True)
        if self.manifest_path.exists():
            previous = self.read_manifest()
            for key in IDENTITY_KEYS:
                if previous.get(key) != manifest.get(key):
                    raise RunDirError(
                        f"{self.dir} already holds a run with a different {key!r} "
                        f"({previous.get(key)!r} vs now {manifest.get(key)!r}); "
                        "use another --out directory to start a new run"
                    )
            manifest = {**previous, **manifest, "created": previous.get("created", manifest.get("created"))}
            manifest["resumed"] = previous.get("resumed", 0) + 1
        self.write_manifest(manifest)
        return self.load_records()

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError as e:
            raise RunDirError(f"{self.dir} is not a run directory: {MANIFEST} is missing") from e
        except json.JSONDecodeError as e:
            raise RunDirError(f"{self.manifest_path} is not valid JSON ({e})") from e

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.manifest_path)  # atomic: a crash leaves the old or the new manifest

    def update_manifest(self, **fields: Any) -> None:
        self.write_manifest({**self.read_manifest(), **fields})

    # -- records --------------------------------------------------------------------------
    def load_records(self) -> dict[str, EpisodeRecord]:
        """Records by episode id; the last record of an id wins (a retried error replaced)."""
        if not self.episodes_path.exists():
            return {}
        self._cut_torn_tail()
        records: dict[str, EpisodeRecord] = {}
        with self.episodes_path.open() as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = EpisodeRecord(**json.loads(line))
                except (json.JSONDecodeError, TypeError) as e:
                    raise RunDirError(
                        f"{self.episodes_path}:{lineno} is not a valid episode record ({e}); "
                        "the file was edited or damaged; fix or delete that line to resume"
                    ) from e
                records[record.episode_id] = record
        return records

    def _cut_torn_tail(self) -> None:
        """A process killed mid-write leaves a partial last line: drop it, keep every whole line."""
        with self.episodes_path.open("rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            log.warning("dropping a torn last record (%d bytes) in %s", len(data) - keep, self.episodes_path)
            f.truncate(keep)
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
