"""Which episode a free env worker runs next, and a replay of that choice for projections.

Some simulators (LIBERO) build a new env on a task change, so the order in which the Ray runner
hands out episodes decides how many envs a run builds (`scripts/bench_libero.py --project`
measures it; tests/test_scheduler.py).
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable

from evalsuite.records import EpisodeSpec


def next_for(worker, queue: deque, last_task: dict) -> EpisodeSpec:
    """The next episode for `worker`, taken out of `queue`. A worker stays on its task while that
    task has episodes waiting; a worker that needs a new task takes the one with the most waiting
    episodes per worker already on it (ties: plan order). Workers thus spread over the tasks and
    each builds an env about once per task it takes, instead of every worker building every
    task's env in turn."""
    current = last_task.get(worker)
    index = next((i for i, spec in enumerate(queue) if (spec.suite, spec.task) == current), None)
    if index is None:
        waiting: Counter = Counter((spec.suite, spec.task) for spec in queue)  # in plan order
        on_task = Counter(task for w, task in last_task.items() if w is not worker)
        current = max(waiting, key=lambda task: waiting[task] / (1 + on_task[task]))
        index = next(i for i, spec in enumerate(queue) if (spec.suite, spec.task) == current)
    spec = queue[index]
    del queue[index]
    return spec


def simulate_env_builds(
    plan: list[EpisodeSpec],
    workers: int,
    seconds: Callable[[EpisodeSpec, bool], float],
    choose: Callable[[object, deque, dict], EpisodeSpec] = next_for,
) -> dict:
    """Replay the dispatch of `plan` over `workers` without running anything: each worker, when
    free, takes `choose(...)`'s episode, which lasts `seconds(spec, built_env)`. Returns how many
    envs the workers built and when the last episode ends (for projections and the scheduler's tests)."""
    queue, last_task, builds = deque(plan), {}, 0
    free_at = [(0.0, w) for w in range(workers)]
    while queue:
        t, worker = heapq.heappop(free_at)
        spec = choose(worker, queue, last_task)
        built = last_task.get(worker) != (spec.suite, spec.task)
        builds += built
        last_task[worker] = (spec.suite, spec.task)
        heapq.heappush(free_at, (t + seconds(spec, built), worker))
    return {"env_builds": builds, "wall_s": max(t for t, _ in free_at)}
