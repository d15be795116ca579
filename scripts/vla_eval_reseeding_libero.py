"""vla-eval 0.8.0's LIBERO benchmark with one change: the env is seeded before every episode's reset,
as our LIBERO env does (docs/libero.md: "every episode reseeds"), instead of once when the task's env
is built. `scripts/side_by_side_vla_eval.py --peer-reseed` runs it (with scripts/ on PYTHONPATH) to
tell that difference apart from the harnesses' others."""

from __future__ import annotations

from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark


class ReseedingLIBEROBenchmark(LIBEROBenchmark):
    def reset(self, task):
        if self._env is not None and self._current_task_id == task["task_id"]:
            self._env.seed(self.env_seed)  # a new task's env is seeded when it is built, as before
        return super().reset(task)
