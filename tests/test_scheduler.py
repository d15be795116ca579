"""Which episode a free Ray env worker gets next (evalsuite/run/scheduler.py `next_for`): LIBERO builds
a new simulator on every task change (5-15 s), so the order decides how many a run builds."""

from collections import deque

from evalsuite.plan import plan_episodes
from evalsuite.run.scheduler import next_for, simulate_env_builds
from evalsuite.suites import get_suite

PAPER_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def _plan(suites=PAPER_SUITES, episodes=None):
    return plan_episodes([get_suite(s) for s in suites], mode="random", seed=7, episodes_per_task=episodes)


def test_free_workers_spread_over_tasks_then_keep_theirs():
    plan = _plan(("libero_spatial",), episodes=4)
    queue, last_task = deque(plan[:12]), {}  # tasks 0, 1, 2 x 4 episodes
    first = []
    for worker in ("a", "b", "c"):
        spec = next_for(worker, queue, last_task)
        last_task[worker] = (spec.suite, spec.task)
        first.append(spec)
    assert [s.task for s in first] == [plan[0].task, plan[4].task, plan[8].task]
    assert [s.episode_index for s in first] == [0, 0, 0]
    again = next_for("b", queue, last_task)  # b stays on its task, in episode order
    assert (again.task, again.episode_index) == (plan[4].task, 1)


def test_a_worker_whose_task_ran_out_joins_the_task_with_most_work_per_worker():
    plan = _plan(("libero_spatial",), episodes=6)
    t0, t1, t2 = (plan[i].task for i in (0, 6, 12))
    queue = deque([s for s in plan[:18] if not (s.task == t0 and s.episode_index < 6)])  # t0 done
    queue = deque([s for s in queue if not (s.task == t1 and s.episode_index < 2)])  # t1: 4 left, t2: 6
    last_task = {"a": ("libero_spatial", t0), "b": ("libero_spatial", t2), "c": ("libero_spatial", t1)}
    # t1: 4 waiting / (1 + 1 worker on it) = 2; t2: 6 / (1 + 1) = 3
    assert next_for("a", queue, last_task).task == t2


def test_a_full_libero_sweep_builds_about_one_env_per_task_and_worker():
    """The paper's 2,000 episodes over 15 workers (the 16-core node), each episode as long as its
    budget, 10 s per env build: the previous rule (plan order once a task ran out) had every
    worker build every task's env, 600 builds; spreading the workers needs at most tasks + workers."""
    plan = _plan()
    budget = {(s, t.name): t.max_steps for s in PAPER_SUITES for t in get_suite(s).tasks}
    result = simulate_env_builds(
        plan, 15, lambda spec, built: 10 * built + 0.06 * budget[spec.suite, spec.task]
    )
    assert len(plan) == 2000
    assert 40 <= result["env_builds"] <= 40 + 15
    two = simulate_env_builds(plan, 2, lambda spec, built: 10 * built + 0.06 * budget[spec.suite, spec.task])
    assert two["env_builds"] == 40  # two workers: one build per task, never both on one
