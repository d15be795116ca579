"""The episode plan: suites x tasks x episode indices, in a fixed order."""

from __future__ import annotations

from evalsuite.errors import EvalError
from evalsuite.records import EpisodeSpec
from evalsuite.suites.spec import SuiteSpec


class PlanError(EvalError, ValueError):
    """The requested tasks or episode counts do not exist in the suite."""


def plan_episodes(
    suites: list[SuiteSpec],
    mode: str,
    seed: int,
    tasks: list[str] | None = None,
    episodes_per_task: int | None = None,
) -> list[EpisodeSpec]:
    """Every episode of the run. Episode k of a task is the task's fixed initial state k.

    `tasks` holds names, or indices into each suite's task list (`0,3` = the suite's tasks 0 and 3
    in its own order: LIBERO's benchmark order, as openpi's and OpenVLA-OFT's clients number them;
    `asyncvla-eval list SUITE` prints the indices)."""
    wanted = {t for t in tasks or [] if not t.isdigit()}
    indices = {int(t) for t in tasks or [] if t.isdigit()}
    known = {t.name for s in suites for t in s.tasks}
    unknown = sorted(wanted - known)
    if unknown:
        sample = ", ".join(sorted(known)[:12])
        raise PlanError(
            f"unknown task(s) {', '.join(unknown)}; tasks of the chosen suite(s) include: {sample}"
        )
    for suite in suites:
        if indices and max(indices) >= len(suite.tasks):
            raise PlanError(
                f"task index {max(indices)} is out of range for suite {suite.name!r}, which has "
                f"{len(suite.tasks)} tasks (0-{len(suite.tasks) - 1}); `asyncvla-eval list {suite.name}` prints them"
            )
    plan = []
    for suite in suites:
        for index, task in enumerate(suite.tasks):
            if (wanted or indices) and task.name not in wanted and index not in indices:
                continue
            n = task.episodes if episodes_per_task is None else episodes_per_task
            if n < 1:
                raise PlanError(f"--episodes-per-task must be at least 1, got {n}")
            if n > task.episodes:
                raise PlanError(
                    f"task {task.name!r} of suite {suite.name!r} has {task.episodes} fixed initial states; "
                    f"asked for {n} episodes per task (use --episodes-per-task {task.episodes} or fewer)"
                )
            variant = str(task.meta.get("variant", ""))
            plan.extend(EpisodeSpec(suite.name, task.name, k, seed, variant, mode) for k in range(n))
    return plan


def describe_plan(plan: list[EpisodeSpec]) -> str:
    """Episodes per task and in total, as `--dry-run` prints them."""
    counts: dict[tuple[str, str], int] = {}
    for spec in plan:
        counts[(spec.suite, spec.task)] = counts.get((spec.suite, spec.task), 0) + 1
    per_suite: dict[str, int] = {}
    lines = []
    for (suite, task), n in counts.items():
        lines.append(f"  {suite:<22} {task:<60} {n:>5}")
        per_suite[suite] = per_suite.get(suite, 0) + n
    lines.append("")
    lines.extend(f"  {suite:<22} {'(suite total)':<60} {n:>5}" for suite, n in per_suite.items())
    lines.append(f"  {'TOTAL':<83} {len(plan):>5}")
    return "\n".join(lines)
