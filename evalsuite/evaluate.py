"""One evaluation run end to end: plan, open (or resume) the run directory, run, write tables.

The CLI, the ablation command and the nightly job all call `evaluate`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from envs.base import SetupError
from evalsuite import manifest as mf
from evalsuite.page import write_run_page
from evalsuite.plan import describe_plan, plan_episodes
from evalsuite.policy import PolicySpec
from evalsuite.records import EpisodeRecord, EpisodeSpec
from evalsuite.run.runner import run_plan
from evalsuite.run.runner_base import Progress, RunOptions, VideoSlots, video_name
from evalsuite.store import RunStore, check_records_match
from evalsuite.suites.spec import SuiteSpec, import_object
from evalsuite.tables import (
    build_tables,
    protocol_header,
    records_frame,
    render_tables,
    write_tables,
)

log = logging.getLogger(__name__)

EXIT_EPISODE_ERRORS = 3  # the run finished, but some episodes are recorded as errors


@dataclass
class EvalConfig:
    suites: list[SuiteSpec]
    policy: PolicySpec
    out: Path
    seed: int = 0
    tasks: list[str] | None = None
    episodes_per_task: int | None = None
    options: RunOptions = field(default_factory=RunOptions)
    retry_errors: bool = False
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class RunSummary:
    run_dir: Path
    plan: list[EpisodeSpec]
    records: list[EpisodeRecord]  # every record of the plan, old and new
    tables: dict[str, pd.DataFrame]
    markdown: str

    @property
    def errors(self) -> int:
        """Episodes recorded as errors (they crashed on every attempt; tables count them apart)."""
        return sum(1 for r in self.records if r.success is None)

    @property
    def exit_code(self) -> int:
        """What `asyncvla-eval` exits with for this run: 0, or 3 when some episodes are errors."""
        return EXIT_EPISODE_ERRORS if self.errors else 0


def protocol_values(suite: SuiteSpec, options: RunOptions) -> dict:
    values = {
        **suite.protocol,
        "env_kwargs": suite.env_kwargs,
        "end_on_success": suite.end_on_success,
        "step_budgets": sorted({t.max_steps for t in suite.tasks})
        if options.max_steps is None
        else [options.max_steps],
        # only when set: a run directory from before latency-aware evaluation stays the same run
        **(
            {"latency_ms": suite.latency, "control_hz": suite.control_hz, "async_join": suite.async_join}
            if suite.latency is not None
            else {}
        ),
    }
    return values


def build_manifest(config: EvalConfig) -> dict:
    policy = config.policy
    return {
        "command": config.command,
        "created": mf.now_iso(),
        "suites": [s.name for s in config.suites],
        "tasks": config.tasks,
        "episodes_per_task": config.episodes_per_task,
        "seed": config.seed,
        "policy": policy.describe(),
        "checkpoint": policy.checkpoint,
        "checkpoint_sha256": mf.checkpoint_sha256(policy.checkpoint) if policy.checkpoint else None,
        "replan_steps": config.options.replan_steps or "full chunk",
        **latency_conditions(config),
        "protocol": {s.name: protocol_values(s, config.options) for s in config.suites},
        "options": dataclasses.asdict(config.options),
        "versions": mf.package_versions(),
        "git": mf.git_commit(),
        "host": mf.host_info(),
    }


def latency_conditions(config: EvalConfig) -> dict:
    """With `--latency measured`, what the policy's measured thinking time depends on besides the
    policy: the device, the inference path and how calls are batched. Part of the run's identity
    then (absent otherwise, so that other runs' identity does not change)."""
    if not any(s.latency == "measured" for s in config.suites):
        return {}
    o, p = config.options, config.policy
    conditions = {"device": p.device, "eager_inference": p.eager, "workers": o.workers}
    if o.workers:
        conditions.update(max_batch=o.max_batch, max_wait_ms=o.max_wait_ms, policy_servers=o.policy_servers)
    return {"latency_conditions": conditions}


def plan_for(config: EvalConfig) -> list[EpisodeSpec]:
    return plan_episodes(
        config.suites, config.policy.episode_mode, config.seed, config.tasks, config.episodes_per_task
    )


def dry_run(config: EvalConfig) -> str:
    return describe_plan(plan_for(config))


def preflight(suites: list[SuiteSpec], plan: list[EpisodeSpec]) -> None:
    """Every suite's own checks over the whole plan (simulator importable, assets present), before
    anything is written: one message with every problem, so one fix makes the rerun work."""
    problems = []
    for suite in suites:
        tasks = list(dict.fromkeys(spec.task for spec in plan if spec.suite == suite.name))
        if suite.preflight and tasks:
            try:
                import_object(suite.preflight)(tasks=tasks, **suite.env_kwargs)
            except SetupError as e:
                problems.append(f"{suite.name}: {e}" if len(suites) > 1 else str(e))
    if problems:
        raise SetupError("\n".join(dict.fromkeys(problems)))


def evaluate(config: EvalConfig, show_progress: bool = True) -> RunSummary:
    plan = plan_for(config)
    preflight(config.suites, plan)
    store = RunStore(config.out)
    done = store.open(build_manifest(config))  # takes the directory's lock
    try:
        _run(config, plan, store, done, show_progress)
        return report(config.out, config.suites, plan)
    finally:
        store.close()


def _run(config: EvalConfig, plan: list[EpisodeSpec], store: RunStore, done: dict, show_progress: bool):
    planned = {spec.id for spec in plan}
    done = {k: r for k, r in done.items() if k in planned}
    if config.retry_errors:
        done = {k: r for k, r in done.items() if r.success is not None}
    todo = [spec for spec in plan if spec.id not in done]
    log.info("%d episodes planned, %d already recorded, %d to run", len(plan), len(done), len(todo))
    videos = VideoSlots(config.options.video, done)
    specs = {spec.id: spec for spec in plan}

    def sink(record: EpisodeRecord, video: bytes | None) -> EpisodeRecord:
        if video is not None and videos.keep(record):
            record.video = store.write_video(
                video_name(specs[record.episode_id], bool(record.success)), video
            )
        store.append(record)
        path = record.info.get("inference_path")
        if path:
            paths[path] = paths.get(path, 0) + 1
        return record

    start = time.perf_counter()
    progress = Progress(len(plan), done) if show_progress else None
    ended: dict = {}
    paths: dict[str, int] = {}  # episodes per inference path the policy reported (AsyncVLA's)
    try:
        if todo:
            run_plan(
                todo,
                {s.name: s for s in config.suites},
                config.policy,
                config.options,
                sink,
                videos,
                progress,
            )
        ended = {"finished": mf.now_iso(), "stopped": None, "stop_reason": None}
    except BaseException as e:  # Ctrl-C included: the manifest must not claim a finished run
        ended = {"finished": None, "stopped": mf.now_iso(), "stop_reason": f"{type(e).__name__}: {e}"}
        raise
    finally:
        if progress:
            progress.close()
        try:
            store.update_manifest(
                last_wall_time_s=round(time.perf_counter() - start, 2),
                **ended,
                **_inference_paths(store, paths),
            )
        except OSError as e:  # a full disk: the records are safe; do not hide the run's own error
            log.warning("could not update %s: %s", store.manifest_path, e)


def _inference_paths(store: RunStore, paths: dict[str, int]) -> dict:
    """run.json's `inference_paths`: episodes per inference path the policy's chunks took (e.g.
    {"graphs+compiled": 40}; AsyncVLA's fast path falls back to slower paths where a compile or a
    CUDA graph capture fails), added to those of the invocations before a resume. Not part of the
    run's identity. Absent when the policy says nothing of its path."""
    if not paths:
        return {}
    before = store.read_manifest().get("inference_paths") or {}
    return {"inference_paths": {p: before.get(p, 0) + paths.get(p, 0) for p in sorted({*before, *paths})}}


def report(run_dir: Path, suites: list[SuiteSpec], plan: list[EpisodeSpec] | None = None) -> RunSummary:
    """(Re)build the tables of a run directory from its records; reads only, apart from tables/."""
    store = RunStore(run_dir)
    manifest = store.read_manifest()
    records = list(store.load_records(repair=False).values())
    check_records_match(manifest, records, Path(run_dir))
    if plan is not None:
        order = {spec.id: i for i, spec in enumerate(plan)}
        records = sorted((r for r in records if r.episode_id in order), key=lambda r: order[r.episode_id])
    frame = records_frame(records, suites)
    tables = build_tables(frame, suites)
    header = protocol_header(manifest)
    try:
        markdown = write_tables(tables, Path(run_dir) / "tables", header)
        write_run_page(Path(run_dir), header, tables, records)
    except OSError as e:  # a read-only or full file system: the tables are still printed
        log.warning("tables not written to %s: %s", Path(run_dir) / "tables", e)
        markdown = render_tables(tables, header)
    return RunSummary(Path(run_dir), plan or [], records, tables, markdown)
