"""The embedded MuJoCo tabletop suite (envs/tabletop): 10 tasks x 50 shipped initial states.

The default suite: it needs nothing beyond `pip install -e .`, runs on a laptop and in CI, and
its scripted expert (`--policy scripted`) solves nearly every episode (results/tabletop_env/expert.md).
"""

from __future__ import annotations

from envs.tabletop.init_states import EPISODES_PER_TASK, EVAL_SEED
from envs.tabletop.tasks import CONTROL_HZ, MAX_STEP_POS, MAX_STEP_ROT, TASKS
from evalsuite.suites.spec import SuiteSpec, TaskSpec

PROTOCOL = {
    "init_state": f"episode k = shipped layout k of the task (envs/tabletop/init_states.npz, seed {EVAL_SEED})",
    "seed": 0,
    "seed_note": "the evaluation layouts are fixed; the seed only changes split='train' layouts",
    "control_hz": CONTROL_HZ,
    "cameras": "agentview + wrist, square, not rotated; rendered at the checkpoint's image_size (128 for other policies)",
    "state": "8-D: grip point pos (3) + hand axis-angle (3) + finger joints (2; 0 closed, 0.04 open)",
    "action": (
        f"7-D in [-1, 1]: delta grip pos x {MAX_STEP_POS} m, world-frame axis-angle delta x "
        f"{MAX_STEP_ROT} rad, gripper (-1 open, +1 close)"
    ),
    "success": "task predicate (block released on / in / at its goal) at any step ends the episode",
    "settle_steps": "5 steps with an open, still gripper after reset, not counted, not seen",
}

SUITES = [
    SuiteSpec(
        name="tabletop",
        tasks=tuple(
            TaskSpec(
                name=t.name,
                instruction=t.instruction,
                max_steps=t.max_steps,
                episodes=EPISODES_PER_TASK,
                meta={"kind": t.kind, "object": t.obj, "target": t.target},
            )
            for t in TASKS
        ),
        env_factory="envs.tabletop:make_env",
        env_kwargs={"image_size": 128, "split": "eval", "settle_steps": 5},
        end_on_success=True,
        action_dim=7,
        protocol=dict(PROTOCOL),
        layout="per_task",
        expert_factory="envs.tabletop.expert:TabletopExpert",
        family="tabletop",
        render_at_model_size=True,
        control_hz=CONTROL_HZ,
    )
]
