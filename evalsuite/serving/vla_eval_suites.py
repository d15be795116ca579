"""What vla-eval's own benchmark of each of our suites sends a model server, and what it expects back.

A vla-eval model server (`--policy vla-eval+ws://HOST:PORT`) must see the same inputs under our
harness as under vla-eval 0.8.0's. Read from the installed package (`vla_eval/benchmarks/libero/
benchmark.py`, `simpler/benchmark.py`, `specs.py`), written here as data:

- **LIBERO** (`LIBEROBenchmark`): `images.agentview` (and `images.wrist` with `send_wrist_image`),
  256x256, flipped `[::-1, ::-1]`; `task_description` = LIBERO's language instruction; with
  `send_state`, `states` = float64 [eef pos (3), eef axis-angle (3), gripper qpos (2)], the
  axis-angle from the quaternion canonicalised to w >= 0 unless `quat_no_antipodal` (robosuite's
  own conversion, which our env and openpi's and OFT's clients use: docs/libero.md). 10 settle steps
  with an open gripper, not counted; the gripper of each action binarised (< 0: -1, else +1).
  Not sent: `controller_states` (the controller's own end-effector pose, which X-VLA's server
  reads): our env does not expose the controller to the harness.
- **SimplerEnv WidowX** (`SimplerEnvBenchmark`, visual matching): `images.primary`,
  `task_description`, `task_name` (simpler_env's id); actions go to the env as [xyz, rotation
  vector, +1 if gripper > 0.5 else -1], which our adapter does with `--set rotation=axis_angle`
  (and `gripper_input=open01`, the default). Its `send_state` observation (base and TCP poses in
  the world frame, gripper openness) and the Google robot's sticky gripper are not reproduced:
  refused before the run.
- **tabletop** (ours; vla-eval has no such benchmark): LIBERO's conventions, images as rendered
  (upright), the tabletop's 8-D state (grip point, hand axis-angle, two finger joints).

Each suite's `params` are its benchmark's constructor options a server may announce
(`observation_params` in its HELLO) or a user may set (the URL's query); the merge is vla-eval's
(`orchestrator._merge_observation_params`): the user's value wins, then the server's, then the
benchmark's default. Options the run itself decides (seed, step budget, settle steps) must agree
with the run's; options we cannot reproduce are refused with their value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.base import Observation
from evalsuite.suites.spec import SuiteSpec

# vla_eval.specs' constants as DimSpec.to_dict() writes them (tests/test_vla_eval_client.py compares)
POSITION_DELTA = {"name": "position", "dims": 3, "format": "delta_xyz", "range": [-1, 1]}
ROTATION_AA = {"name": "rotation", "dims": 3, "format": "axis_angle", "range": [-3.15, 3.15]}
ROTATION_EULER = {"name": "rotation", "dims": 3, "format": "euler_xyz", "range": [-3.15, 3.15]}
GRIPPER_CLOSE_POS = {"name": "gripper", "dims": 1, "format": "binary_close_positive", "range": [-1, 1]}
IMAGE_RGB = {"name": "image", "dims": 0, "format": "rgb_hwc_uint8"}
LANGUAGE = {"name": "language", "dims": 0, "format": "language"}
STATE_EEF_POS_AA_GRIP = {"name": "state", "dims": 8, "format": "eef_pos3_axisangle3_gripper2"}
RAW = {"name": "raw", "dims": 0, "format": "raw"}

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
LIBERO_RESOLUTION = 256  # vla_eval.benchmarks.libero.benchmark.LIBERO_ENV_RESOLUTION
# our SimplerEnv task families -> simpler_env.ENVIRONMENT_MAP's ids, which vla-eval sends as task_name
WIDOWX_TASK_NAMES = {
    "spoon_on_towel": "widowx_spoon_on_towel",
    "carrot_on_plate": "widowx_carrot_on_plate",
    "stack_cube": "widowx_stack_cube",
    "eggplant_in_basket": "widowx_put_eggplant_in_basket",
}


class PeerMismatch(ValueError):
    """The suite, as configured, or an option, cannot be sent as vla-eval's benchmark sends it."""


@dataclass(frozen=True)
class PeerSuite:
    """One of our suites as vla-eval's benchmark of it presents it to a model server."""

    kind: str  # libero | simpler-widowx | tabletop
    benchmark: str  # the vla-eval benchmark class whose messages are reproduced (or ours)
    defaults: dict[str, Any]  # its constructor's options, with their defaults
    settable: tuple[str, ...]  # the options whose other values we reproduce
    run_decides: dict[str, Any] = field(default_factory=dict)  # option -> the run's value (must agree)

    def merge(self, announced: dict[str, Any], given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The options the messages follow, and the announced ones dropped (not options of the
        benchmark: vla-eval drops them with a warning too)."""
        params = {**self.defaults, **{k: v for k, v in self.run_decides.items() if v is not None}}
        dropped = []
        for key, value in announced.items():
            if key in self.defaults:
                params[key] = value
            else:
                dropped.append(key)
        params.update(given)
        return params, dropped

    def check(self, params: dict[str, Any]) -> None:
        """A `PeerMismatch` for the first option whose value we cannot reproduce."""
        for key, value in params.items():
            if key in self.run_decides and value != self.run_decides[key] and value is not None:
                raise PeerMismatch(
                    f"{key}={value!r} but this run's is {self.run_decides[key]!r} ({RUN_FLAGS.get(key, key)})"
                )
            if key not in self.settable and key not in self.run_decides and value != self.defaults[key]:
                raise PeerMismatch(
                    f"{key}={value!r} is not reproduced by asyncvla-eval (only {self.defaults[key]!r})"
                )
            if key in self.settable and not isinstance(value, bool):
                raise PeerMismatch(f"{key}={value!r}: expected true or false")

    def observation_spec(self, params: dict[str, Any]) -> dict[str, dict]:
        if self.kind == "simpler-widowx":
            return {"primary": IMAGE_RGB, "language": LANGUAGE}
        spec = {"agentview": IMAGE_RGB, "language": LANGUAGE}
        if params.get("send_wrist_image"):
            spec["wrist"] = IMAGE_RGB
        if params.get("send_state"):
            spec["state"] = STATE_EEF_POS_AA_GRIP
        return spec

    def action_spec(self) -> dict[str, dict]:
        rotation = ROTATION_EULER if self.kind == "simpler-widowx" else ROTATION_AA  # as the peer declares
        return {"position": POSITION_DELTA, "rotation": rotation, "gripper": GRIPPER_CLOSE_POS}

    def observation(self, obs: Observation, params: dict[str, Any], task_name: str) -> dict[str, Any]:
        """The OBSERVATION payload vla-eval's benchmark would send for `obs`."""
        if self.kind == "simpler-widowx":
            (image,) = obs.images.values()
            return {"images": {"primary": image}, "task_description": obs.instruction, "task_name": task_name}
        message: dict[str, Any] = {
            "images": {"agentview": obs.images["agentview"]},
            "task_description": obs.instruction,
        }
        if params.get("send_wrist_image"):
            message["images"]["wrist"] = obs.images["wrist"]
        if params.get("send_state"):
            state = np.asarray(obs.state, dtype=np.float64)  # the peer's states are float64 (robosuite's)
            if self.kind == "libero" and not params.get("quat_no_antipodal"):
                state = np.concatenate([state[:3], canonical_axis_angle(state[3:6]), state[6:]])
            message["states"] = state
        return message

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """What the peer's `step` does to an action before the simulator gets it (LIBERO: the
        gripper binarised; SimplerEnv WidowX: our adapter binarises it the same way)."""
        if self.kind != "libero":
            return action
        action = np.array(action, dtype=np.float32)
        action[-1] = -1.0 if action[-1] < 0 else 1.0
        return action

    def task_info(self, suite: SuiteSpec, task: str, episode_index: int, instruction: str) -> dict[str, Any]:
        """EPISODE_START's `task`: the JSON-able fields of the peer's task dict."""
        spec = suite.task(task)
        if self.kind == "simpler-widowx":
            name = WIDOWX_TASK_NAMES[spec.meta["simpler_task"]]
            return {"name": name, "task_name": name, "episode_idx": episode_index}
        index = [t.name for t in suite.tasks].index(task)
        return {"name": instruction, "suite": suite.name, "task_id": index, "episode_idx": episode_index}

    def peer_task_name(self, suite: SuiteSpec, task: str) -> str:
        if self.kind == "simpler-widowx":
            return WIDOWX_TASK_NAMES[suite.task(task).meta["simpler_task"]]
        return task


RUN_FLAGS = {
    "suite": "the suite's name",
    "seed": "--seed",
    "env_seed": "--seed",
    "num_steps_wait": "--set settle_steps=N",
    "max_steps": "--max-steps",
    "max_episode_steps": "--max-steps",
}


def canonical_axis_angle(axis_angle: np.ndarray) -> np.ndarray:
    """robosuite's axis-angle (angle in [0, 2 pi)) as vla-eval's `quat_to_axisangle` gives it: the
    quaternion taken with w >= 0 first, so an angle above pi becomes its twin 2 pi - angle about the
    opposite axis. Rounded to float32, as the peer's conversion returns."""
    axis_angle = np.asarray(axis_angle, dtype=np.float64)
    angle = float(np.linalg.norm(axis_angle))
    if angle > math.pi:
        axis_angle = axis_angle * (1.0 - 2.0 * math.pi / angle)
    return axis_angle.astype(np.float32).astype(np.float64)


def peer_suite(suite: SuiteSpec, seed: int, max_steps: int | None) -> PeerSuite:
    """How vla-eval's benchmark of `suite` sends it (a `PeerMismatch` where we cannot)."""
    kwargs = suite.env_kwargs
    if suite.name in LIBERO_SUITES:
        if kwargs.get("resolution") != LIBERO_RESOLUTION:
            raise PeerMismatch(
                f"vla-eval's LIBERO renders {LIBERO_RESOLUTION} px cameras; this run renders "
                f"{kwargs.get('resolution')} (leave --set resolution out)"
            )
        budget = max_steps or suite.tasks[0].max_steps
        return PeerSuite(
            kind="libero",
            benchmark="vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark",
            defaults={
                "suite": suite.name,
                "seed": 7,
                "num_steps_wait": 10,
                "send_wrist_image": False,
                "send_state": False,
                "absolute_action": False,
                "max_steps": None,
                "env_seed": None,
                "quat_no_antipodal": False,
            },
            settable=("send_wrist_image", "send_state", "quat_no_antipodal"),
            run_decides={
                "suite": suite.name,
                "seed": seed,
                "env_seed": seed,
                "num_steps_wait": kwargs.get("settle_steps"),
                "max_steps": budget,
            },
        )
    if suite.family.startswith("simpler-widowx"):
        if kwargs.get("rotation") != "axis_angle" or kwargs.get("gripper_input") != "open01":
            raise PeerMismatch(
                "vla-eval's SimplerEnv hands the action's rotation to the env as a rotation vector and "
                "binarises the gripper at 0.5 (1 = open): run with --set rotation=axis_angle (and "
                "gripper_input=open01, the default)"
            )
        if kwargs.get("terminate_in_action"):
            raise PeerMismatch("vla-eval's SimplerEnv takes 7-D actions: leave --set terminate_in_action out")
        return PeerSuite(
            kind="simpler-widowx",
            benchmark="vla_eval.benchmarks.simpler.benchmark:SimplerEnvBenchmark",
            defaults={
                "task_name": None,
                "max_episode_steps": None,
                "success_mode": "truncation",
                "send_state": False,
                "seed": None,
                "deterministic_episodes": True,
                "control_mode": None,
                "gripper_mode": "binary",
                "env_name": None,
                "scene_name": None,
                "env_build_kwargs": None,
                "init_config": None,
            },
            settable=(),
            run_decides={"max_episode_steps": max_steps},
        )
    if suite.family == "tabletop":
        return PeerSuite(
            kind="tabletop",
            benchmark="asyncvla-eval:tabletop (vla-eval has none; LIBERO's conventions)",
            defaults={"send_wrist_image": False, "send_state": False},
            settable=("send_wrist_image", "send_state"),
        )
    raise PeerMismatch(
        f"suite {suite.name!r} has no vla-eval observation mapping; --policy vla-eval+ws:// runs on "
        f"tabletop, {', '.join(LIBERO_SUITES)} and simpler-widowx"
    )


def spec_mismatches(server_action: dict, bench_action: dict, server_obs: dict, bench_obs: dict) -> list[str]:
    """vla-eval's `specs.check_specs` on DimSpec dicts: the server produces actions the suite
    consumes, the suite produces observations the server consumes."""
    found = []
    if server_action and bench_action and not (server_action.keys() & bench_action.keys()):
        found.append("action: no overlapping keys between server and benchmark specs")
    for key in bench_action:
        if key not in server_action and server_action:
            found.append(f"action [{key}]: benchmark expects it but server doesn't declare it")
    for key in sorted(server_action.keys() & bench_action.keys()):
        reason = _incompatible(server_action[key], bench_action[key])
        if reason:
            found.append(f"action [{key}]: {reason}")
    for key in server_obs:
        if key not in bench_obs:
            found.append(f"observation [{key}]: server expects it but benchmark doesn't provide it")
    for key in sorted(server_obs.keys() & bench_obs.keys()):
        reason = _incompatible(bench_obs[key], server_obs[key])
        if reason:
            found.append(f"observation [{key}]: {reason}")
    return found


def spec_conflicts(server_action: dict, bench_action: dict, server_obs: dict, bench_obs: dict) -> list[str]:
    """The mismatches that mean the server and the suite disagree on a convention: a component
    both declare, in formats (or sizes) that differ, neither of them `raw` (no convention). Keys one
    side declares and the other does not are naming, not a disagreement (vla-eval's pi0 server
    declares `{"actions": raw}` and an `image`, and runs on its LIBERO): `spec_mismatches` lists
    those too, as vla-eval warns of them."""
    found = []
    for kind, producers, consumers in (
        ("action", server_action, bench_action),
        ("observation", bench_obs, server_obs),
    ):
        for key in sorted(producers.keys() & consumers.keys()):
            if "raw" in (producers[key].get("format"), consumers[key].get("format")):
                continue
            reason = _incompatible(producers[key], consumers[key])
            if reason:
                found.append(f"{kind} [{key}]: {reason}")
    return found


def _incompatible(producer: dict, consumer: dict) -> str:
    """`DimSpec.is_compatible`'s reason ('' when compatible)."""
    name, fmt = producer.get("name"), producer.get("format")
    accepts = consumer.get("accepts")
    if accepts is not None:
        return "" if fmt in accepts else f"{name}: {fmt} not in accepts {set(accepts)}"
    if fmt != consumer.get("format"):
        return f"{name}: {fmt} vs {consumer.get('format')}"
    dims, other = producer.get("dims", 0), consumer.get("dims", 0)
    if dims != other and dims > 0 and other > 0:
        return f"{name}: {dims}D vs {other}D"
    return ""
