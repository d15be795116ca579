"""The LIBERO suites (PROTOCOL.md; paper Table 1): 10 tasks x 50 fixed initial states each.

`asyncvla-eval libero` runs family "libero" = the paper's four suites (500 trials each);
`libero_90` is registered on its own. Step budgets are openpi's and OpenVLA-OFT's; LeRobot gives
libero_spatial 280 instead of 220 (`--suites libero_spatial --max-steps 280`; recorded in run.json).
"""

from __future__ import annotations

from envs.libero.tasks import SUITE_TASKS
from evalsuite.suites.spec import SuiteSpec, TaskSpec

# suite -> (policy steps per episode, label in the paper's Table 1)
BUDGETS = {
    "libero_spatial": (220, "LIBERO-Spatial"),
    "libero_object": (280, "LIBERO-Object"),
    "libero_goal": (300, "LIBERO-Goal"),
    "libero_10": (520, "LIBERO-Long"),
    "libero_90": (400, "LIBERO-90"),
}
PAPER_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")

# What each reference client does to a policy's output (`--set client=NAME`): everything else
# (task order, init states, settle steps, budgets, rotation, state, success) they share with the
# default. A preset's replan steps and seed apply unless --replan-steps / --seed are given.
CLIENT_PRESETS = {
    "openpi": {  # openpi examples/libero/main.py: replan_steps=5 of a 10-step chunk, seed 7
        "replan_steps": 5,
        "seed": 7,
        "env_kwargs": {"gripper": "continuous"},
    },
    "oft": {  # OpenVLA-OFT experiments/robot/libero/run_libero_eval.py: all 8 actions, sign gripper, seed 0
        "replan_steps": 8,
        "seed": 0,
        "env_kwargs": {"gripper": "sign"},
    },
}
EPISODES_PER_TASK = 50  # each task ships 50 initial states

# Values the published clients agree on, and the ones they differ in (with the choice made here).
PROTOCOL = {
    "init_state": "episode k = init_states[k] of the task (never a fresh random scene)",
    "settle_steps": "10 no-op steps [0,0,0,0,0,0,-1] after set_init_state, not counted, not seen",
    "env_seed": "env.seed(seed) before every reset; openpi uses 7 (default here), OpenVLA-OFT 0",
    "seed": 7,
    "cameras": "agentview + robot0_eye_in_hand, square, rotated 180 degrees (img[::-1, ::-1])",
    "state": "8-D: eef pos (3) + eef axis-angle (3, robosuite quat2axisangle) + gripper qpos (2)",
    "action": "7-D: delta eef pose (6) + gripper (-1 open, +1 close)",
    "success": "LIBERO done (task predicate) at any step ends the episode",
    "step_budget_source": "openpi / OpenVLA-OFT (LeRobot 0.6.1: libero_spatial 280)",
    "replan_steps_note": "OFT executes all 8 of an 8-step chunk; openpi 5 of 10 (--replan-steps)",
}


def libero_suite(name: str) -> SuiteSpec:
    budget, label = BUDGETS[name]
    tasks = tuple(
        TaskSpec(
            name=task,
            instruction=instruction,
            max_steps=budget,
            episodes=EPISODES_PER_TASK,
            meta={"task_id": i, "suite_label": label},
        )
        for i, (task, instruction) in enumerate(SUITE_TASKS[name])
    )
    return SuiteSpec(
        name=name,
        tasks=tasks,
        env_factory="envs.libero:make_env",
        # Options users may change with --set (recorded in run.json and the table header).
        env_kwargs={
            "suite": name,
            "resolution": 256,
            "settle_steps": 10,
            "skip_unused_renders": True,
            "cheap_reset": True,
            "gripper": "continuous",
            "client": None,  # openpi | oft: CLIENT_PRESETS
        },
        client_presets=CLIENT_PRESETS,
        end_on_success=True,
        action_dim=7,
        protocol=dict(PROTOCOL),
        layout="evalsuite.layouts.libero:table1",
        paper_table="libero",
        family="libero" if name in PAPER_SUITES else name,
        control_hz=20,  # LIBERO's robosuite control frequency
    )


SUITES = [libero_suite(name) for name in BUDGETS]
