"""The tabletop tasks: what each asks, which object it moves, where to, and its step budget.

Every scene holds the same seven things (four blocks, two plates, a bowl), so the other six are
distractors a policy must ignore: the instruction alone says which block goes where.
Budgets are about twice the scripted expert's longest episode of the task (results/tabletop_env/
expert.md), so a policy has room for a re-grasp but not for wandering.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCKS = ("red_block", "green_block", "blue_block", "yellow_block")
FIXTURES = ("blue_plate", "white_plate", "bowl")

# Geometry shared by the layout sampler, the success predicates and the expert (scene.xml).
BLOCK_HALF = 0.02  # blocks are 4 cm cubes
PLATE_RADIUS = 0.055
PLATE_TOP = 0.01
BOWL_INNER_RADIUS = 0.069  # inner face of the octagonal wall
BOWL_FLOOR = 0.008
BOWL_WALL_TOP = 0.04
PUSH_DISTANCE = 0.10  # a push task succeeds once the block moved this far in its direction
PUSH_GOAL = 0.13  # where the expert aims: the success line plus a margin

CONTROL_HZ = 20
MAX_STEP_POS = 0.015  # metres per control step at |action| = 1
MAX_STEP_ROT = 0.15  # radians per control step at |action| = 1


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    kind: str  # "place" (on a plate / in the bowl), "stack" (on another block), "push"
    obj: str  # the block that moves
    target: str  # a fixture, a block, or a direction "left" / "right" (as seen from agentview)
    max_steps: int


TASKS: tuple[Task, ...] = (
    Task("red_on_blue_plate", "put the red block on the blue plate", "place", "red_block", "blue_plate", 180),
    Task(
        "green_on_white_plate",
        "put the green block on the white plate",
        "place",
        "green_block",
        "white_plate",
        180,
    ),
    Task(
        "yellow_on_blue_plate",
        "put the yellow block on the blue plate",
        "place",
        "yellow_block",
        "blue_plate",
        180,
    ),
    Task("blue_in_bowl", "put the blue block in the bowl", "place", "blue_block", "bowl", 180),
    Task("red_in_bowl", "put the red block in the bowl", "place", "red_block", "bowl", 180),
    Task(
        "stack_yellow_on_red",
        "stack the yellow block on the red block",
        "stack",
        "yellow_block",
        "red_block",
        180,
    ),
    Task(
        "stack_blue_on_green",
        "stack the blue block on the green block",
        "stack",
        "blue_block",
        "green_block",
        180,
    ),
    Task(
        "stack_red_on_blue", "stack the red block on the blue block", "stack", "red_block", "blue_block", 180
    ),
    Task("push_green_left", "push the green block to the left", "push", "green_block", "left", 120),
    Task("push_yellow_right", "push the yellow block to the right", "push", "yellow_block", "right", 120),
)
TASK_BY_NAME = {t.name: t for t in TASKS}

# "left" / "right" as seen from the agentview camera, which looks along -x: image right is +y.
PUSH_DIRECTIONS = {"left": -1.0, "right": 1.0}


def get_task(name: str) -> Task:
    if name not in TASK_BY_NAME:
        raise KeyError(f"unknown tabletop task {name!r}; known tasks: {', '.join(TASK_BY_NAME)}")
    return TASK_BY_NAME[name]
