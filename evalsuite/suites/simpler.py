"""SimplerEnv suites (paper Tables 2-4), built from the `family=rt1` rows of the published sweep.

One TaskSpec per sweep configuration (`envs/simpler/sweeps.csv`, a copy of
`protocol/simpler/sweeps.csv`): its episodes are the configuration's grid, its meta carries what
the tables group by. `asyncvla-eval simpler-widowx` runs the 96 Bridge episodes;
`asyncvla-eval simpler-google` runs visual matching (864) and variant aggregation (1,992, of which
1,722 enter the published averages). `simpler-widowx-3seed` repeats the Bridge episodes for
Octo's three seeds (72 per task).
"""

from __future__ import annotations

from envs.simpler.sweep import SweepConfig, load_sweeps
from evalsuite.suites.spec import SuiteSpec, TaskSpec

# The first instruction each env gives (get_language_instruction); the env's own text is what the
# policy sees, this one labels videos. Move near names its objects per episode.
INSTRUCTIONS = {
    "spoon_on_towel": "put the spoon on the towel",
    "carrot_on_plate": "put carrot on plate",
    "stack_cube": "stack the green block on the yellow block",
    "eggplant_in_basket": "put eggplant into yellow basket",
    "pick_coke_can": "pick coke can",
    "move_near": "move the object near the other object",
    "open_drawer": "open {subtask} drawer",
    "close_drawer": "close {subtask} drawer",
    "put_in_drawer": "open top drawer, then place apple into top drawer",
}
SOURCES = {
    "SimplerEnv": "simpler-env/SimplerEnv@4ab7178e83e84ee06894034ec6dbf9e7aad1e882",
    "ManiSkill2_real2sim": "simpler-env/ManiSkill2_real2sim@ef7a4d4fdf4b69f2c2154db5b15b9ac8dfe10682",
}
DEFAULT_ENV_KWARGS = {
    "backend": "sapien2",  # or maniskill3 (Bridge tasks only)
    "gripper_input": "open01",  # open01 (Octo/OXE, 1 = open) | closedness_pm1 (RT-1, +1 = close)
    "rotation": "rpy",  # rpy (Octo) | axis_angle (RT-1)
    "end_on_first_success": False,  # True = stop at the first success (not the published protocol)
    "seed_repeats": 1,
    "check_assets": True,
    "asset_dir": None,  # default: mani_skill2_real2sim.ASSET_DIR (MS2_REAL2SIM_ASSET_DIR)
    "terminate_in_action": False,  # True: 8-D actions, the 8th > 0 = RT-1-style terminate
}


def task_spec(config: SweepConfig, repeats: int = 1) -> TaskSpec:
    meta = {
        "group": config.group,
        "simpler_task": config.task,  # "task" is the TaskSpec name in records; this is the paper's task
        "subtask": config.subtask,
        "variant": config.variant,
        "aggregate_variant": config.aggregate_variant,
        "va_category": config.va_category,
        "in_official_aggregate": config.in_official_aggregate,
        "env_name": config.env_name,
        "sweep_row": config.row_id,
    }
    return TaskSpec(
        name=config.task_name,
        instruction=INSTRUCTIONS[config.task].format(subtask=config.subtask),
        max_steps=config.max_episode_steps,
        episodes=config.episodes * repeats,
        meta=meta,
    )


def _suite(name: str, group: str, family: str, layout: str, paper: str, repeats: int = 1) -> SuiteSpec:
    configs = [c for c in load_sweeps("rt1") if c.group == group]
    tasks = tuple(task_spec(c, repeats) for c in configs)
    freqs = sorted({(c.control_freq, c.sim_freq) for c in configs})
    return SuiteSpec(
        name=name,
        tasks=tasks,
        env_factory="envs.simpler:make_env",
        preflight="envs.simpler:preflight",
        env_kwargs={"group": group, **DEFAULT_ENV_KWARGS, "seed_repeats": repeats},
        end_on_success=False,  # SimplerEnv runs the budget and reads success at the last step
        action_dim=7,
        protocol={
            "benchmark": "SimplerEnv",
            "group": group,
            "sources": SOURCES,
            "sweep": "protocol/simpler/sweeps.csv family=rt1",
            "episodes": sum(t.episodes for t in tasks),
            "episodes_in_published_average": sum(
                t.episodes for t in tasks if t.meta["in_official_aggregate"]
            ),
            "success_read_at": "last executed step (episode runs its budget unless the policy terminates)",
            "control_hz_sim_hz": [list(f) for f in freqs],
            "env_build": "gym.make(env_id, obs_mode=rgbd, ...) fresh per episode; reset options from the sweep",
            "seed": 0,  # not passed to the simulator: every episode's env is built fresh (main RNG 2022)
        },
        layout=layout,
        paper_table=paper,
        family=family,
    )


SUITES = [
    _suite(
        "simpler-widowx",
        "widowx",
        "simpler-widowx",
        "evalsuite.layouts.simpler:widowx_layout",
        "simpler_widowx",
    ),
    _suite(
        "simpler-widowx-3seed",
        "widowx",
        "simpler-widowx-3seed",
        "evalsuite.layouts.simpler:widowx_layout",
        "simpler_widowx",
        repeats=3,
    ),
    _suite(
        "simpler-google-vm",
        "google_vm",
        "simpler-google",
        "evalsuite.layouts.simpler:google_layout",
        "simpler_google",
    ),
    _suite(
        "simpler-google-va",
        "google_va",
        "simpler-google",
        "evalsuite.layouts.simpler:google_layout",
        "simpler_google",
    ),
]
