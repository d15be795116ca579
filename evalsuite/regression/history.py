"""The nightly history: one SQLite file of checkpoints, their runs and per-task results.

A checkpoint is known by its content hash (evalsuite.manifest.checkpoint_sha256), so the same
weights copied to two directories, or found again the next night, are evaluated once. A run is
(checkpoint, suites, inference mode); it is inserted as 'running' with its run directory before
the evaluation starts, so a night that crashes resumes the same run directory, and becomes 'done'
together with its per-task results in one transaction: a crash mid-write (kill -9 included;
SQLite's rollback journal is replayed on the next open) leaves the run 'running' with no results,
never half of them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalsuite import manifest as mf
from evalsuite.errors import EvalError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    sha256     TEXT PRIMARY KEY,
    path       TEXT NOT NULL,
    name       TEXT NOT NULL,
    first_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,  -- evaluation order: the x axis of trends
    checkpoint_sha256 TEXT NOT NULL REFERENCES checkpoints(sha256),
    suites            TEXT NOT NULL,                      -- sorted, comma-separated
    mode              TEXT NOT NULL,
    run_dir           TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('running', 'done')),
    started           TEXT NOT NULL,
    finished          TEXT,
    UNIQUE (checkpoint_sha256, suites, mode)
);
CREATE TABLE IF NOT EXISTS task_results (
    run_id    INTEGER NOT NULL REFERENCES runs(id),
    suite     TEXT NOT NULL,
    task      TEXT NOT NULL,
    episodes  INTEGER NOT NULL,
    successes INTEGER NOT NULL,
    errors    INTEGER NOT NULL,
    PRIMARY KEY (run_id, suite, task)
);
"""


def _schema_columns() -> dict[str, set[str]]:
    """Table -> column names of SCHEMA, read from an in-memory database built with it."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: {row[1] for row in db.execute(f"PRAGMA table_info({t!r})")}
            for t in tables
            if not t.startswith("sqlite_")
        }
    finally:
        db.close()


class HistoryError(EvalError):
    """The history file is not a readable SQLite database of this schema."""


@dataclass(frozen=True)
class TaskResult:
    suite: str
    task: str
    episodes: int  # finished episodes (errors excluded, as in the tables)
    successes: int
    errors: int


@dataclass(frozen=True)
class RunRow:
    id: int
    checkpoint_sha256: str
    checkpoint_path: str
    checkpoint_name: str
    suites: str
    mode: str
    run_dir: str
    status: str
    started: str
    finished: str | None


def suites_key(suites: Iterable[str]) -> str:
    return ",".join(sorted(set(suites)))


class History:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below is one explicit BEGIN..COMMIT
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA foreign_keys = ON")
            self._check_schema()  # before the first write: another application's database stays as it was
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise HistoryError(
                f"{self.path} is not a nightly history database ({e}); pass another --history path"
            ) from e
        except HistoryError:
            self.db.close()
            raise

    def _check_schema(self) -> None:
        """A database with tables must have this schema's tables and columns (a new or empty file
        gets them): another SQLite file would fail at its first query, after being written to."""
        found = {
            name: {row[1] for row in self.db.execute(f"PRAGMA table_info({name!r})")}
            for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("sqlite_")
        }
        if not found:
            return
        wrong = []
        for table, columns in _schema_columns().items():
            if table not in found:
                wrong.append(f"no table {table}")
            elif columns - found[table]:
                wrong.append(f"{table} lacks {', '.join(sorted(columns - found[table]))}")
        if wrong:
            raise HistoryError(
                f"{self.path} is a SQLite database of another schema (tables: {', '.join(sorted(found))}; "
                f"{'; '.join(wrong)}), not a nightly history; pass another --history path"
            )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing: an exception (or a killed process) rolls every statement back."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writes -------------------------------------------------------------------------------
    def start_run(
        self, sha256: str, checkpoint: str | Path, suites: Iterable[str], mode: str, run_dir: str | Path
    ) -> RunRow:
        """Register a run before evaluating; an existing run of the same key is returned unchanged."""
        key = suites_key(suites)
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO checkpoints (sha256, path, name, first_seen) VALUES (?, ?, ?, ?)",
                (sha256, str(checkpoint), Path(checkpoint).name, mf.now_iso()),
            )
            db.execute(
                "INSERT OR IGNORE INTO runs (checkpoint_sha256, suites, mode, run_dir, status, started) "
                "VALUES (?, ?, ?, ?, 'running', ?)",
                (sha256, key, mode, str(run_dir), mf.now_iso()),
            )
        run = self.find_run(sha256, key.split(","), mode)
        assert run is not None  # inserted or already there, inside the transaction above
        return run

    def finish_run(self, run_id: int, results: Iterable[TaskResult]) -> None:
        """Store a run's per-task results and mark it done, in one transaction."""
        with self.transaction() as db:
            db.execute("DELETE FROM task_results WHERE run_id = ?", (run_id,))
            for r in results:
                db.execute(
                    "INSERT INTO task_results (run_id, suite, task, episodes, successes, errors) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, r.suite, r.task, r.episodes, r.successes, r.errors),
                )
            updated = db.execute(
                "UPDATE runs SET status = 'done', finished = ? WHERE id = ?", (mf.now_iso(), run_id)
            ).rowcount
            if updated != 1:
                raise HistoryError(f"run {run_id} is not in {self.path}; start_run registers a run first")

    # -- reads --------------------------------------------------------------------------------
    _RUN_SELECT = (
        "SELECT r.id, r.checkpoint_sha256, c.path AS checkpoint_path, c.name AS checkpoint_name, "
        "r.suites, r.mode, r.run_dir, r.status, r.started, r.finished "
        "FROM runs r JOIN checkpoints c ON c.sha256 = r.checkpoint_sha256 "
    )

    def find_run(self, sha256: str, suites: Iterable[str], mode: str) -> RunRow | None:
        row = self.db.execute(
            self._RUN_SELECT + "WHERE r.checkpoint_sha256 = ? AND r.suites = ? AND r.mode = ?",
            (sha256, suites_key(suites), mode),
        ).fetchone()
        return RunRow(**dict(row)) if row else None

    def done_runs(self, suites: Iterable[str], mode: str) -> list[RunRow]:
        rows = self.db.execute(
            self._RUN_SELECT + "WHERE r.suites = ? AND r.mode = ? AND r.status = 'done' ORDER BY r.id",
            (suites_key(suites), mode),
        ).fetchall()
        return [RunRow(**dict(row)) for row in rows]

    def previous_run(self, run: RunRow) -> RunRow | None:
        """The last finished run of the same suites and mode evaluated before `run`."""
        earlier = [r for r in self.done_runs(run.suites.split(","), run.mode) if r.id < run.id]
        return earlier[-1] if earlier else None

    def results(self, run_id: int) -> list[TaskResult]:
        rows = self.db.execute(
            "SELECT suite, task, episodes, successes, errors FROM task_results WHERE run_id = ? "
            "ORDER BY suite, task",
            (run_id,),
        ).fetchall()
        return [TaskResult(**dict(row)) for row in rows]

    def trend(self, suites: Iterable[str], mode: str) -> pd.DataFrame:
        """Per finished run (in evaluation order) and suite: pooled episodes and successes."""
        rows = self.db.execute(
            "SELECT r.id AS run_id, c.name AS checkpoint, r.checkpoint_sha256 AS sha256, r.finished, "
            "t.suite, SUM(t.episodes) AS episodes, SUM(t.successes) AS successes, SUM(t.errors) AS errors "
            "FROM runs r JOIN checkpoints c ON c.sha256 = r.checkpoint_sha256 "
            "JOIN task_results t ON t.run_id = r.id "
            "WHERE r.suites = ? AND r.mode = ? AND r.status = 'done' "
            "GROUP BY r.id, t.suite ORDER BY r.id, t.suite",
            (suites_key(suites), mode),
        ).fetchall()
        columns = ["run_id", "checkpoint", "sha256", "finished", "suite", "episodes", "successes", "errors"]
        return pd.DataFrame([dict(r) for r in rows], columns=columns)
