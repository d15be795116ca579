"""`asyncvla-eval export RUN_DIR --format vla-eval`: a run in the peer harness vla-eval's result
layout (0.8.0: `vla_eval/recording.py`, `vla_eval/results/export.py`), so it can be read next to its
published reproductions and by its own tools.

    asyncvla-eval export RUN_DIR --format vla-eval [--out DIR]     # default DIR: RUN_DIR/export-vla-eval

Writes what `vla-eval run` leaves in its output directory:

- `recording-<eval_id>.sqlite`, its recording database (tables `run_metadata`, `eval_metadata`,
  `eval_shards`, `episode_results`, `step_rows`, `work_queue`): one benchmark entry per suite of the
  run, one `episode_results` row per episode. `vla-eval export recording-<eval_id>.sqlite` rebuilds
  the aggregates below from it (tests/test_vla_eval_export.py checks that they are the same).
- `<benchmark>_aggregate.json` per suite, as its export writes it: `benchmark`, `mode`,
  `harness_version` (ours: `asyncvla-eval VERSION (git COMMIT)`), `created_at`, `tasks` (per task
  its episode rows, `num_episodes`, `avg_steps`, `mean_success`, `num_errors`), `config` (a vla-eval
  benchmark entry: the peer benchmark it corresponds to, `episodes_per_task`, `max_steps`,
  `params` with the suite and the seed; our manifest's command, policy, protocol, versions and git
  commit under `config.asyncvla_eval`), `eval_id`, `server_info` (a vla-eval server's HELLO when the
  run evaluated one), `seed`, `metric_keys`, `mean_success`, `num_episodes_total`, `num_errors`,
  and `partial` for a run that did not finish.

vla-eval's counting differs from our tables in one way: an episode that crashed on every attempt
(our *error*, left out of our success rates) is one of its episodes with `success: false` and a
`failure_reason`, so its `mean_success` counts errors as failures; `num_errors` says how many.
Per-step rows (`step_rows`) are not written: our records keep an episode's outcome and its final
state (under each episode row's `asyncvla` field), not its steps. The eval id is derived from the
run's manifest, so exporting a run twice writes the same files (but `created_at`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalsuite.errors import ArgumentParser, UsageError
from evalsuite.records import EpisodeRecord
from evalsuite.store import RunStore

FORMATS = ("vla-eval",)
METRIC_KEYS = {"success": "mean"}  # vla-eval's default Benchmark.get_metric_keys
PEER_BENCHMARKS = {
    "libero": "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark",
    "simpler": "vla_eval.benchmarks.simpler.benchmark:SimplerEnvBenchmark",
}
_SAFE_NAME = re.compile(r"[^\w\-.]")  # vla-eval's orchestrator._SAFE_NAME_RE

# vla_eval.recording.SCHEMA_SQL (0.8.0), the tables its `export` reads
SCHEMA = """
CREATE TABLE run_metadata (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), eval_id TEXT NOT NULL,
    config TEXT NOT NULL);
CREATE TABLE eval_metadata (eval_id TEXT PRIMARY KEY, safe_name TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE eval_shards (eval_id TEXT NOT NULL, shard_id INTEGER NOT NULL, num_shards INTEGER NOT NULL,
    complete INTEGER NOT NULL, PRIMARY KEY (eval_id, shard_id));
CREATE TABLE episode_results (sid TEXT NOT NULL, eid TEXT NOT NULL, eval_id TEXT NOT NULL, task_name TEXT,
    episode_id INTEGER, status TEXT, metrics TEXT, steps INTEGER, elapsed_sec REAL, context TEXT,
    jsonl_path TEXT, failure_reason TEXT, failure_detail TEXT, PRIMARY KEY (sid, eid));
CREATE INDEX idx_episode_results_eval ON episode_results(eval_id);
CREATE TABLE work_queue (eval_id TEXT NOT NULL, item INTEGER NOT NULL, task_idx INTEGER NOT NULL,
    shard_id INTEGER, done INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (eval_id, item));
CREATE TABLE step_rows (sid TEXT NOT NULL, eid TEXT NOT NULL, step_id INTEGER NOT NULL, fields TEXT NOT NULL,
    PRIMARY KEY (sid, eid, step_id));
"""


def export_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="asyncvla-eval export", description="Write a run directory in another harness's result layout."
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--format", required=True, choices=FORMATS, help="vla-eval: vla-eval 0.8.0's result layout"
    )
    p.add_argument("--out", help="output directory (default: RUN_DIR/export-vla-eval)")
    return p


def cmd_export(argv: list[str]) -> int:
    args = export_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "export-vla-eval"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory for the export")
    if out.is_dir() and any(p for p in out.iterdir() if not _ours(p)):
        raise UsageError(
            f"--out {out} holds files an export does not write ({', '.join(sorted(p.name for p in out.iterdir() if not _ours(p))[:3])}); "
            "choose a new or empty directory"
        )
    written = export_vla_eval(run_dir, out)
    for path in written:
        print(path)
    return 0


def _ours(path: Path) -> bool:
    return path.name.endswith("_aggregate.json") or (
        path.name.startswith("recording-") and path.suffix == ".sqlite"
    )


def export_vla_eval(run_dir: Path, out: Path) -> list[Path]:
    """Write the run's recording database and aggregates under `out`; returns the paths written."""
    store = RunStore(run_dir)
    manifest = store.read_manifest()
    records = sorted(
        store.load_records(repair=False).values(), key=lambda r: (r.suite, r.task, r.episode_index)
    )
    if not records:
        raise UsageError(f"{run_dir} has no episode records yet; nothing to export")
    from evalsuite.suites import registry

    known = registry()
    missing = [s for s in manifest["suites"] if s not in known]
    if missing:
        raise UsageError(f"the run uses suites this installation does not know: {', '.join(missing)}")
    eval_id = str(
        uuid.uuid5(uuid.NAMESPACE_URL, json.dumps([manifest.get("created"), manifest.get("command")]))
    )
    version = _harness_version(manifest)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in manifest["suites"]:
        suite = known[name]
        mine = [r for r in records if r.suite == name]
        config = _config(manifest, suite, mine)
        metadata = {
            "benchmark": name,
            "mode": "sync",
            "config": config,
            "metric_keys": METRIC_KEYS,
            "harness_version": version,
            **({"server_info": manifest["policy"]["vla_eval"]["server"]} if _vla_eval(manifest) else {}),
        }
        rows = [_episode(eval_id, suite, r) for r in mine]
        entries.append((f"{eval_id}-{_SAFE_NAME.sub('_', name)}", _SAFE_NAME.sub("_", name), metadata, rows))
    database = out / f"recording-{eval_id}.sqlite"
    _write_database(database, eval_id, entries, complete=manifest.get("finished") is not None)
    written = [database]
    for bench_id, safe_name, metadata, rows in entries:
        aggregate = build_aggregate(bench_id, metadata, rows, partial=manifest.get("finished") is None)
        path = out / f"{safe_name}_aggregate.json"
        _write_atomic(path, json.dumps(aggregate, indent=2, default=str))
        written.append(path)
    return written


def _vla_eval(manifest: dict) -> bool:
    return isinstance((manifest.get("policy") or {}).get("vla_eval"), dict)


def _harness_version(manifest: dict) -> str:
    version = (manifest.get("versions") or {}).get("asyncvla", "?")
    commit = (manifest.get("git") or {}).get("commit")
    return f"asyncvla-eval {version}" + (f" (git {commit[:12]})" if commit else "")


def _config(manifest: dict, suite, records: list[EpisodeRecord]) -> dict[str, Any]:
    """The run as a vla-eval benchmark entry (`vla_eval.config.EvalConfig.to_dict()`'s keys), with
    what our manifest says of it under `asyncvla_eval`."""
    protocol = (manifest.get("protocol") or {}).get(suite.name, {})
    budgets = protocol.get("step_budgets") or []
    family = "libero" if suite.env_factory == "envs.libero:make_env" else suite.family.split("-")[0]
    return {
        "benchmark": PEER_BENCHMARKS.get(family, f"asyncvla-eval:{suite.name}"),
        "mode": "sync",
        "name": suite.name,
        "subname": None,
        "episodes_per_task": manifest.get("episodes_per_task")
        or max((r.episode_index + 1 for r in records), default=0),
        "max_steps": budgets[0] if len(budgets) == 1 else None,
        "max_tasks": None,
        "tasks": manifest.get("tasks"),
        "params": {**(protocol.get("env_kwargs") or {}), "suite": suite.name, "seed": manifest.get("seed")},
        "recording": None,
        "hz": float(suite.control_hz or 10.0),
        "throughput_mode": False,
        "paced": False,
        "wait_first_action": False,
        "asyncvla_eval": {
            key: manifest.get(key)
            for key in (
                "command",
                "created",
                "finished",
                "policy",
                "checkpoint_sha256",
                "replan_steps",
                "versions",
                "git",
            )
        }
        | {"protocol": protocol},
    }


def _episode(eval_id: str, suite, record: EpisodeRecord) -> dict[str, Any]:
    """One `episode_results` row, as vla-eval's EpisodeRecorder.close writes it."""
    names = [t.name for t in suite.tasks]
    task_idx = names.index(record.task) if record.task in names else -1
    spec = suite.tasks[task_idx] if task_idx >= 0 else None
    status = "error" if record.success is None else ("success" if record.success else "fail")
    context = {
        "name": spec.instruction if spec else record.task,
        "suite": suite.name,
        "task_id": task_idx,
        "task": record.task,
        "episode_idx": record.episode_index,
        "task_idx": task_idx,
        "asyncvla": {
            "episode_id": record.episode_id,
            "variant": record.variant,
            "seed": record.seed,
            "attempts": record.attempts,
            "final_state": record.info.get("final_state"),
        },
    }
    return {
        "sid": eval_id,
        "eid": str(uuid.uuid5(uuid.NAMESPACE_URL, record.episode_id)),
        "task_name": context["name"],
        "episode_id": record.episode_index,
        "status": status,
        "metrics": {"success": bool(record.success)},
        "steps": record.steps,
        "elapsed_sec": round(record.wall_time_s, 3),
        "context": context,
        "failure_reason": "error" if record.success is None else None,
        "failure_detail": record.error if record.success is None else None,
    }


def build_aggregate(bench_id: str, metadata: dict, rows: list[dict], partial: bool) -> dict[str, Any]:
    """`vla_eval.results.export._build_aggregate` on our rows (same keys, same rounding, same order)."""
    tasks: dict[str, list[dict]] = {}
    episodes = []
    for row in sorted(rows, key=lambda r: (r["task_name"], r["episode_id"], r["sid"], r["eid"])):
        episode = {
            "sid": row["sid"],
            "eid": row["eid"],
            "episode_id": row["episode_id"],
            "metrics": row["metrics"],
            "steps": row["steps"],
            "elapsed_sec": row["elapsed_sec"],
            **row["context"],
        }
        if row["failure_reason"]:
            episode["failure_reason"] = row["failure_reason"]
        if row["failure_detail"]:
            episode["failure_detail"] = row["failure_detail"]
        tasks.setdefault(row["task_name"], []).append(episode)
        episodes.append(episode)
    task_results = []
    for name in sorted(tasks):
        eps = tasks[name]
        result: dict[str, Any] = {
            "task": name,
            "episodes": eps,
            "num_episodes": len(eps),
            "avg_steps": sum(e["steps"] for e in eps) / (len(eps) or 1),
        }
        errors = sum(1 for e in eps if e.get("failure_reason"))
        if errors:
            result["num_errors"] = errors
        _mean_success(result, eps)
        task_results.append(result)
    config = metadata["config"]
    body: dict[str, Any] = {
        "benchmark": metadata["benchmark"],
        "mode": metadata["mode"],
        "harness_version": metadata["harness_version"],
        "created_at": datetime.now(timezone.utc).isoformat(),
        "tasks": task_results,
        "config": config,
        "eval_id": bench_id,
    }
    if "server_info" in metadata:
        body["server_info"] = metadata["server_info"]
    if partial:
        body["partial"] = True
    if config["params"].get("seed") is not None:
        body["seed"] = config["params"]["seed"]
    body["metric_keys"] = METRIC_KEYS
    _mean_success(body, episodes)
    body["num_episodes_total"] = len(episodes)
    body["num_errors"] = sum(t.get("num_errors", 0) for t in task_results)
    return body


def _mean_success(result: dict, episodes: list[dict]) -> None:
    values = [e["metrics"]["success"] for e in episodes]
    if values:
        result["mean_success"] = round(sum(values) / len(values), 4)


def _write_database(path: Path, eval_id: str, entries: list, complete: bool) -> None:
    tmp = path.with_suffix(".sqlite.tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(str(tmp))
    try:
        conn.executescript(SCHEMA)
        with conn:
            conn.execute(
                "INSERT INTO run_metadata VALUES (1, ?, ?)",
                (eval_id, json.dumps({"tracking": {"report_to": None}})),
            )
            for bench_id, safe_name, metadata, rows in entries:
                conn.execute(
                    "INSERT INTO eval_metadata VALUES (?, ?, ?)",
                    (bench_id, safe_name, json.dumps(metadata, default=str)),
                )
                conn.execute("INSERT INTO eval_shards VALUES (?, 0, 1, ?)", (bench_id, int(complete)))
                conn.executemany(
                    "INSERT INTO episode_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                    [
                        (
                            r["sid"], r["eid"], bench_id, r["task_name"], r["episode_id"], r["status"],
                            json.dumps(r["metrics"]), r["steps"], r["elapsed_sec"], json.dumps(r["context"]),
                            r["failure_reason"], r["failure_detail"],
                        )
                        for r in rows
                    ],
                )  # fmt: skip
    finally:
        conn.close()
    os.replace(tmp, path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
