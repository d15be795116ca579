"""LIBERO as an `Env`, following PROTOCOL.md (openpi's and OpenVLA-OFT's evaluation clients).

Per episode: `env.seed(seed)`, `env.reset()`, `env.set_init_state(init_states[k])`, then 10
no-op steps `[0]*6 + [-1]` that let objects settle; they are neither counted nor seen by the
policy. The policy sees both cameras at 256x256 rotated 180 degrees and the 8-D state
(end-effector position, axis-angle orientation, two gripper joints); it sends 7-D delta
end-effector actions with gripper -1 = open, +1 = close. LIBERO's `done` is its success predicate.

Rendering only the steps whose images are used: robosuite samples its camera observables inside
the substeps of a control step (the first substep of each sampling period), so rendering after
the step would give different images. Instead the camera observables stay enabled (so their
sampling clocks tick exactly as in the reference loop) and only their sensor is gated: on steps
whose images nobody uses, the sensor returns a placeholder instead of rendering. Rendering never
changes the physics, so states stay bit-identical and the images of rendered steps are the
reference images (measured: scripts/bench_libero.py, results/libero/).

Cheap resets: robosuite's default (hard) reset recompiles the MuJoCo model and rebuilds its render
context on every `env.reset()` (results/libero/bench.json). All an episode needs is the same simulator in the
same state, so episodes after the first reuse the compiled model (robosuite's soft reset:
`mj_resetData`, then the same Python-side reset and object placement). The one piece of state a
soft reset keeps and a hard reset does not is the gripper's command integrator
(`PandaGripper.current_action`, which moves 0.01 per step towards the commanded side): a hard reset
builds a new gripper object with it at zero, so the cheap reset zeroes it. With that, the state after
the settle steps, the model's body poses, the first images and the states of the steps that follow
are bit-identical to the hard reset's for every init state checked (scripts/check_libero_reset.py,
results/libero/reset_check*.json) on 36 of the 40 tasks of the paper's suites. libero_90 keeps the
hard reset; `--set cheap_reset=false` restores it everywhere.

Fresh scenes: on the other 4 (HISTORY_DEPENDENT_TASKS) LIBERO's own hard reset places a fixture
relative to the scene the env is already in, so the same episode would get another scene after
another number of resets (on another worker, after a retry or a resume). Each of their episodes
builds a new env, with LIBERO's random state seeded by the episode's seed before the build and
again before the (hard) reset: the scene is a function of task, init state and seed, the one a
reference client's first episode in a fresh env gets. Replaying the k resets a reference client
does before its episode k would cost k hard resets per episode and still not match its random
stream (openpi seeds once per task, so episode k's draws follow from episodes 0..k-1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from envs.base import Observation, SetupError, check_action
from envs.libero.package import LiberoModules, import_libero
from envs.libero.pro import bddl_language, episode_instruction, pro_suites
from envs.libero.tasks import SUITE_TASKS

log = logging.getLogger(__name__)

NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # gripper -1 = open
# Suites whose every task had its cheap reset checked against the hard one
# (results/libero/reset_check_all_tasks.json); libero_90 was not checked and keeps the hard reset.
CHEAP_RESET_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
# Tasks whose reference (hard) reset is not a function of (task, init state, seed): LIBERO samples
# some fixtures (the cabinet, the stove, the microwave) relative to the scene the env is already in,
# so one episode gets a differently placed fixture depending on how many resets its env has done
# (check_libero_reset.py: reference_repeats false). These tasks get a fresh env, seeded, for every
# episode (module docstring), so the scene depends on the episode only.
HISTORY_DEPENDENT_TASKS = frozenset(
    {
        "pick_up_the_black_bowl_in_the_top_drawer_of_the_wooden_cabinet_and_place_it_on_the_plate",
        "KITCHEN_SCENE4_put_the_black_bowl_in_the_bottom_drawer_of_the_cabinet_and_close_it",
        "KITCHEN_SCENE8_put_both_moka_pots_on_the_stove",
        "KITCHEN_SCENE6_put_the_yellow_and_white_mug_in_the_microwave_and_close_it",
    }
)
# robosuite observable name -> camera name in Observation.images (and in the demo format)
CAMERAS = {"agentview_image": "agentview", "robot0_eye_in_hand_image": "wrist"}
ACTION_DIM = 7
STATE_DIM = 8


@dataclass(frozen=True)
class LiberoConfig:
    suite: str = "libero_spatial"
    resolution: int = 256  # both cameras, square (openpi and OFT render 256 and resize in the client)
    settle_steps: int = 10
    rotate_180: bool = True  # img[::-1, ::-1]: robosuite renders upside down (OpenGL convention)
    skip_unused_renders: bool = True  # gate the camera sensors on steps rendered with render=False
    cheap_reset: bool = True  # reuse the compiled model between episodes (module docstring)
    # How the gripper command reaches the simulator: "continuous" as the policy gives it, or "sign"
    # (OpenVLA-OFT's client binarises it with np.sign before env.step).
    gripper: str = "continuous"
    client: str | None = None  # a reference client's preset (evalsuite/suites/libero.py CLIENT_PRESETS)

    def __post_init__(self) -> None:
        if self.gripper not in ("continuous", "sign"):
            raise ValueError(f"gripper={self.gripper!r}: choose continuous or sign")
        if self.suite not in SUITE_TASKS and self.suite not in pro_suites():
            raise ValueError(
                f"unknown LIBERO suite {self.suite!r}; choose one of {', '.join(SUITE_TASKS)} or a "
                "LIBERO-PRO suite (`asyncvla-eval list libero-pro`)"
            )
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16 pixels, got {self.resolution}")
        if self.settle_steps < 0:
            raise ValueError(f"settle_steps must be >= 0, got {self.settle_steps}")


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """robosuite's `quat2axisangle` (x, y, z, w), the formula the LIBERO demos were written with.

    It keeps angles in [0, 2 pi) instead of canonicalising to [0, pi] as scipy does; a model
    trained on LIBERO data expects exactly this.
    """
    quat = np.asarray(quat, dtype=np.float64)
    w = np.clip(quat[..., 3], -1.0, 1.0)
    den = np.sqrt(1.0 - w * w)
    angle = 2.0 * np.arccos(w)
    safe = np.where(np.isclose(den, 0.0), 1.0, den)
    out = quat[..., :3] * (angle / safe)[..., None]
    return np.where(np.isclose(den, 0.0)[..., None], 0.0, out)


def client_action(action: np.ndarray, gripper: str) -> np.ndarray:
    """The action as the chosen client hands it to LIBERO (`gripper="sign"`: OFT's np.sign)."""
    if gripper == "sign":
        action = action.copy()
        action[-1] = np.sign(action[-1])
    return action


def libero_state(raw: dict) -> np.ndarray:
    """The 8-D proprio state of PROTOCOL.md from a robosuite observation dict."""
    return np.concatenate(
        [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
    ).astype(np.float32)


class LiberoEnv:
    """One LIBERO simulator; a new task rebuilds it, episodes of a task reuse it (except on the
    history-dependent tasks: a fresh env per episode, module docstring)."""

    def __init__(self, config: LiberoConfig, modules: LiberoModules | None = None):
        self.config = config
        self.lib = modules or import_libero()
        self.suite = self.lib.benchmark.get_benchmark_dict()[config.suite]()
        self.task_ids = {self.suite.get_task(i).name: i for i in range(self.suite.n_tasks)}
        self._env = None
        self._task: str | None = None
        self._init_states: np.ndarray | None = None
        self._instruction = ""
        self._render_now = True
        self._real_renders = 0  # camera sensor calls that rendered (checked by `step`)
        self._last_images: dict[str, np.ndarray] = {}
        self.skip_unused_renders = config.skip_unused_renders
        self.builds = 0  # simulators built (one per task change): envs.base.Env
        self.cheap_resets = False  # this task's episodes reset cheaply (set when its env is built)
        self._episode_info: dict = {}  # what each step's info carries into the record (`reset`)

    # -- episode -----------------------------------------------------------------------------
    def reset(self, task: str, episode_index: int, seed: int) -> Observation:
        if task not in self.task_ids:
            known = ", ".join(list(self.task_ids)[:5])
            raise SetupError(
                f"task {task!r} is not in LIBERO suite {self.config.suite!r} (first tasks: {known})"
            )
        if task in HISTORY_DEPENDENT_TASKS:  # a fresh env per episode (module docstring), whose
            np.random.seed(seed)  # own first scene is seeded too (LIBERO's seed() is np.random.seed)
            self._open(task)
        elif task != self._task:
            self._open(task)
        if not 0 <= episode_index < len(self._init_states):
            raise SetupError(
                f"episode {episode_index} of {task!r}: the task ships {len(self._init_states)} initial "
                f"states (episodes 0..{len(self._init_states) - 1}); lower --episodes-per-task"
            )
        # LIBERO's seed() is np.random.seed: reseeding per episode makes episode k independent of
        # which episodes this worker ran before (openpi seeds once per task env, sequentially).
        self._env.seed(seed)
        self._render_now = False  # only the last settle step's images are seen
        self._reset_simulator()
        raw = self._env.set_init_state(self._init_states[episode_index])
        self._episode_info = self._describe_episode(episode_index)
        for i in range(self.config.settle_steps):
            self._render_now = i == self.config.settle_steps - 1 or not self.skip_unused_renders
            raw, _, _, _ = self._env.step(list(NOOP_ACTION))
        if self.config.settle_steps == 0:  # set_init_state rendered with the gate closed
            self._render_now = True
            raw = self._env.regenerate_obs_from_state(self._init_states[episode_index])
        return self._observation(raw, render=True)

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool, bool, dict]:
        action = client_action(check_action(action, ACTION_DIM), self.config.gripper)
        self._render_now = render or not self.skip_unused_renders
        before = self._real_renders
        raw, reward, done, info = self._env.step(action.tolist())
        if render and self._real_renders == before:
            # The camera sampled in an earlier step (never seen with robosuite 1.4's clocks); keep
            # results exact by rendering every step from now on.
            log.warning("LIBERO camera sample fell outside its step; rendering every step from now on")
            self.skip_unused_renders = False
            raise RuntimeError("camera sample outside its control step; episode must be retried")
        success = bool(done)  # LIBERO sets done = _check_success() after every step
        return (
            self._observation(raw, render),
            success,
            success,
            {"reward": float(reward), **self._episode_info},
        )

    def render_frame(self) -> np.ndarray:
        """Both cameras side by side as the policy sees them (explicit render if the step had none)."""
        images = self._last_images or self._explicit_render()
        return np.concatenate([images[c] for c in CAMERAS.values()], axis=1)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            self._task = None

    # -- internals ---------------------------------------------------------------------------
    def _open(self, task: str) -> None:
        self.close()
        task_id = self.task_ids[task]
        spec = self.suite.get_task(task_id)
        bddl = os.path.join(self.lib.get_libero_path("bddl_files"), spec.problem_folder, spec.bddl_file)
        if not os.path.isfile(bddl):
            raise SetupError(f"LIBERO task file {bddl} is missing; reinstall: pip install -e '.[libero]'")
        size = self.config.resolution
        self._env = self.lib.OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=size, camera_widths=size)
        self.builds += 1
        self.cheap_resets = (
            self.config.cheap_reset
            and self.config.suite in CHEAP_RESET_SUITES
            and task not in HISTORY_DEPENDENT_TASKS
        )
        self._init_states = np.asarray(self.suite.get_task_init_states(task_id))
        self._init_file = os.path.join(spec.problem_folder, spec.init_states_file)
        self._task, self._instruction = task, self._task_instruction(task, spec)

    def _task_instruction(self, task: str, spec) -> str:
        """The sentence LIBERO derives from the task's file name (what openpi and OFT send); on a
        LIBERO-PRO suite the rewritten `(:language ...)` where the perturbation changed it
        (envs/libero/pro.py)."""
        pro = pro_suites().get(self.config.suite)
        base_task = next((t["base_task"] for t in pro["tasks"] if t["name"] == task), None) if pro else None
        if not base_task:
            return spec.language
        base_bddl = os.path.join(
            self.lib.get_libero_path("bddl_files"), pro["base_suite"], f"{base_task}.bddl"
        )
        language = str(self._env.language_instruction)  # LIBERO's parse of this task file
        return episode_instruction(spec.language, bddl_language(base_bddl), language)

    def _describe_episode(self, episode_index: int) -> dict:
        """What the episode started from, for its record (each step's info): the instruction, the
        init state (file, index, a hash of its values) and the movable objects' positions in it."""
        state = np.asarray(self._init_states[episode_index], dtype=np.float64)
        domain = self._env.env  # LIBERO's problem env: its movable objects and their body ids
        positions = {
            name: [round(float(x), 4) for x in domain.sim.data.body_xpos[domain.obj_body_id[name]]]
            for name in domain.objects_dict
        }
        info = {
            "instruction": self._instruction,
            "init_state": f"{self._init_file}[{episode_index}]",
            "init_state_sha256": hashlib.sha256(state.tobytes()).hexdigest()[:16],
            "init_objects": json.dumps(positions, sort_keys=True),
        }
        pro = pro_suites().get(self.config.suite)
        if pro:
            info["perturbation"] = pro["perturbation"]
            info["base_suite"] = pro["base_suite"]
        return info

    def _reset_simulator(self) -> None:
        """`env.reset()`, cheap (reuse the model, module docstring) or hard (rebuild it), with the
        camera sensors gated: a cheap reset keeps the sensors, so they are gated before it and its
        own observation renders nothing; a hard reset makes new ones, gated after it."""
        robosuite_env = self._env.env
        robosuite_env.hard_reset = not self.cheap_resets
        if not self.cheap_resets:
            self._env.reset()
            self._gate_cameras()
            return
        self._gate_cameras()
        self._env.reset()
        for robot in robosuite_env.robots:  # what a hard reset's new gripper object starts with
            robot.gripper.current_action = np.zeros(robot.gripper.dof)

    def _gate_cameras(self) -> None:
        """Wrap the camera sensors (a hard reset re-creates them; a cheap one keeps the wrapped ones)."""
        observables = self._env.env._observables  # robosuite keeps no public accessor for sensors
        for name in CAMERAS:
            real = observables[name]._sensor
            if getattr(real, "gated", False):
                continue
            blank = np.zeros((self.config.resolution, self.config.resolution, 3), dtype=np.uint8)

            def gated(obs_cache, real=real, blank=blank):
                if self._render_now:
                    self._real_renders += 1
                    return real(obs_cache)
                return blank

            gated.__modality__ = getattr(real, "__modality__", "image")
            gated.gated = True
            observables[name]._sensor = gated  # set_sensor() would render once to validate it

    def _observation(self, raw: dict, render: bool) -> Observation:
        images = {}
        if render:
            images = {cam: self._orient(raw[name]) for name, cam in CAMERAS.items()}
        self._last_images = images
        return Observation(images=images, state=libero_state(raw), instruction=self._instruction)

    def _orient(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.uint8)
        return np.ascontiguousarray(image[::-1, ::-1]) if self.config.rotate_180 else image

    def sim_render(self, camera: str) -> np.ndarray:
        """An explicit render of a robosuite camera ("agentview", "robot0_eye_in_hand"), unrotated."""
        size = self.config.resolution
        return np.asarray(self._env.sim.render(camera_name=camera, width=size, height=size), dtype=np.uint8)

    def _explicit_render(self) -> dict[str, np.ndarray]:
        return {
            cam: self._orient(self.sim_render(name.removesuffix("_image"))) for name, cam in CAMERAS.items()
        }


def make_env(**kwargs) -> LiberoEnv:
    """Factory named by the suite registry (`envs.libero:make_env`); kwargs are `LiberoConfig` fields."""
    unknown = set(kwargs) - set(LiberoConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown LIBERO env option(s) {sorted(unknown)}; known: {sorted(LiberoConfig.__dataclass_fields__)}"
        )
    return LiberoEnv(LiberoConfig(**kwargs))
