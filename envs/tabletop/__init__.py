"""The embedded MuJoCo tabletop suite: 10 language-conditioned pick/place/stack/push tasks.

`make_env` is the factory the suite registry names ("envs.tabletop:make_env"); MuJoCo is
imported only when an env is built.
"""

from __future__ import annotations

import os

# headless rendering; set before anything in the package (the expert too) imports mujoco
os.environ.setdefault("MUJOCO_GL", "egl")

from envs.tabletop.tasks import TASKS  # noqa: E402, Task, get_task


def make_env(**env_kwargs):
    """A `TabletopEnv` (see envs/tabletop/env.py for image_size, split, settle_steps, cameras)."""
    from envs.tabletop.env import TabletopEnv

    return TabletopEnv(**env_kwargs)


__all__ = ["TASKS", "Task", "get_task", "make_env"]
