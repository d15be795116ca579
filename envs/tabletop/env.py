"""The tabletop env: MuJoCo physics of scene.xml behind the `Env` contract (envs/base.py).

Action (7-D, each in [-1, 1], like LIBERO's): xyz delta of the gripper (x MAX_STEP_POS metres),
axis-angle rotation delta in the world frame (x MAX_STEP_ROT radians), gripper -1 open / +1 close.
The deltas accumulate on the mocap target the hand is welded to, so holding still (zero action)
never drifts, and one control step (1/CONTROL_HZ s) runs several physics substeps.
State (8-D): grip point position (3), hand orientation as axis-angle (3), finger joints (2,
0 = closed, 0.04 = open). Images are rendered only when asked for: physics costs well under a
millisecond per step, rendering two cameras with Mesa tens of milliseconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported

from pathlib import Path

import numpy as np

from envs.base import Observation, SetupError, SimulatorMissing, check_action
from envs.tabletop.init_states import InitStates, Layout, train_layout
from envs.tabletop.tasks import (
    BLOCK_HALF,
    BLOCKS,
    BOWL_FLOOR,
    BOWL_INNER_RADIUS,
    BOWL_WALL_TOP,
    CONTROL_HZ,
    FIXTURES,
    MAX_STEP_POS,
    MAX_STEP_ROT,
    PLATE_RADIUS,
    PLATE_TOP,
    PUSH_DIRECTIONS,
    PUSH_DISTANCE,
    PUSH_GOAL,
    Task,
    get_task,
)

try:
    import mujoco
except ImportError as e:  # pragma: no cover - mujoco is a core dependency
    raise SimulatorMissing(f"the tabletop suite needs MuJoCo: pip install 'mujoco>=3.2' ({e})") from e

SCENE_PATH = Path(__file__).with_name("scene.xml")
CAMERAS = ("agentview", "wrist")
ACTION_DIM = 7
STATE_DIM = 8
FINGER_OPEN = 0.04
WORKSPACE = np.array([[-0.3, -0.38, 0.005], [0.3, 0.38, 0.35]])  # bounds of the mocap target
SPLITS = ("eval", "train")


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Axis x angle with angle in [0, pi] (the sign of w is fixed first, as robosuite does)."""
    quat = np.asarray(quat, dtype=np.float64)
    if quat[0] < 0:
        quat = -quat
    out = np.zeros(3)
    mujoco.mju_quat2Vel(out, quat, 1.0)
    return out


class TabletopEnv:
    """One MuJoCo tabletop simulator. Not thread-safe; one per worker."""

    def __init__(
        self,
        image_size: int = 128,
        split: str = "eval",
        settle_steps: int = 5,
        cameras: tuple[str, ...] | list[str] = CAMERAS,
    ):
        if not isinstance(image_size, int) or not 16 <= image_size <= 512:
            raise ValueError(f"image_size={image_size!r}: expected an integer from 16 to 512 (default 128)")
        if split not in SPLITS:
            raise ValueError(
                f"split={split!r}: expected 'eval' (the 50 shipped states) or 'train' (fresh layouts)"
            )
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or not cameras:
            raise ValueError(f"cameras={list(cameras)!r}: choose one or more of {list(CAMERAS)}")
        if not SCENE_PATH.is_file():
            raise SetupError(f"{SCENE_PATH} is missing: reinstall the package (pip install -e .)")
        self.image_size = image_size
        self.split = split
        self.settle_steps = settle_steps
        self.cameras = tuple(cameras)
        self.init_states = InitStates() if split == "eval" else None
        self.model = mujoco.MjModel.from_xml_path(str(SCENE_PATH))
        self.data = mujoco.MjData(self.model)
        self.n_substeps = max(1, round(1.0 / (CONTROL_HZ * self.model.opt.timestep)))
        m = self.model
        self._hand = m.body("hand").id
        self._hand_qpos = m.joint("hand").qposadr[0]
        self._target_mocap = m.body_mocapid[m.body("hand_target").id]
        self._fixture_mocap = {f: m.body_mocapid[m.body(f).id] for f in FIXTURES}
        self._block_qpos = {b: m.joint(b).qposadr[0] for b in BLOCKS}
        self._block_body = {b: m.body(b).id for b in BLOCKS}
        self._finger_qpos = [m.joint(f).qposadr[0] for f in ("finger_left", "finger_right")]
        self._finger_geoms = {m.geom("finger_left").id, m.geom("finger_right").id}
        self._block_geom = {b: m.geom(b).id for b in BLOCKS}
        self._renderer = None
        self._last_images: dict[str, np.ndarray] = {}
        self.task: Task | None = None

    # -- episode -------------------------------------------------------------------------------
    def reset(self, task: str, episode_index: int, seed: int = 0) -> Observation:
        """Start from layout `episode_index` (split 'eval'), or a fresh one from (index, seed) ('train').

        The evaluation layouts are fixed: `seed` only matters for the train split.
        """
        self.task = get_task(task)
        if self.init_states is not None:
            layout = self.init_states.layout(self.task, episode_index)
        else:
            layout = train_layout(self.task, episode_index, seed)
        self._apply_layout(layout)
        zero = np.zeros(ACTION_DIM)
        zero[6] = -1.0
        for _ in range(self.settle_steps):  # let contacts settle; not an episode step
            self._control(zero)
        self._start = self.data.xpos[self._block_body[self.task.obj]].copy()
        self._max_lift = 0.0
        return self._observe(render=True)

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool, bool, dict]:
        if self.task is None:
            raise RuntimeError("step() before reset(): call env.reset(task, episode_index, seed) first")
        action = check_action(action, ACTION_DIM)
        self._control(action)
        obj_z = self.data.xpos[self._block_body[self.task.obj]][2]
        self._max_lift = max(self._max_lift, obj_z - BLOCK_HALF)
        success = self._success()
        obs = self._observe(render)
        # The task predicate is this simulator's terminal signal; the harness counts the budget.
        return obs, success, success, {"success": success, "max_lift": float(self._max_lift)}

    def _apply_layout(self, layout: Layout) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        hx, hy, hz, hyaw = layout.hand
        self._target_pos = np.array([hx, hy, hz])
        self._target_quat = yaw_quat(hyaw)
        d.qpos[self._hand_qpos : self._hand_qpos + 3] = self._target_pos
        d.qpos[self._hand_qpos + 3 : self._hand_qpos + 7] = self._target_quat
        d.mocap_pos[self._target_mocap] = self._target_pos
        d.mocap_quat[self._target_mocap] = self._target_quat
        for adr in self._finger_qpos:
            d.qpos[adr] = FINGER_OPEN
        d.ctrl[:] = FINGER_OPEN
        for name, (x, y, yaw) in zip(BLOCKS, layout.blocks):
            adr = self._block_qpos[name]
            d.qpos[adr : adr + 3] = (x, y, BLOCK_HALF)
            d.qpos[adr + 3 : adr + 7] = yaw_quat(yaw)
        for name, (x, y) in zip(FIXTURES, layout.fixtures):
            d.mocap_pos[self._fixture_mocap[name]] = (x, y, 0.0)
        mujoco.mj_forward(m, d)

    def _control(self, action: np.ndarray) -> None:
        a = np.clip(action, -1.0, 1.0)
        self._target_pos = np.clip(self._target_pos + a[:3] * MAX_STEP_POS, WORKSPACE[0], WORKSPACE[1])
        rotvec = a[3:6] * MAX_STEP_ROT
        angle = float(np.linalg.norm(rotvec))
        if angle > 1e-9:
            delta = np.zeros(4)
            mujoco.mju_axisAngle2Quat(delta, rotvec / angle, angle)
            quat = np.zeros(4)
            mujoco.mju_mulQuat(quat, delta, self._target_quat)  # world-frame delta: applied on the left
            self._target_quat = quat / np.linalg.norm(quat)
        d = self.data
        d.mocap_pos[self._target_mocap] = self._target_pos
        d.mocap_quat[self._target_mocap] = self._target_quat
        d.ctrl[:] = FINGER_OPEN * (1.0 - a[6]) / 2.0
        mujoco.mj_step(self.model, d, nstep=self.n_substeps)

    # -- success ---------------------------------------------------------------------------------
    def _touching_fingers(self, block: str) -> bool:
        g = self._block_geom[block]
        d = self.data
        for i in range(d.ncon):
            c = d.contact[i]
            if (c.geom1 == g and c.geom2 in self._finger_geoms) or (
                c.geom2 == g and c.geom1 in self._finger_geoms
            ):
                return True
        return False

    def goal_position(self) -> np.ndarray:
        """Where the task wants the moving block's centre (the expert aims here)."""
        task, d = self.task, self.data
        if task.kind == "place":
            base = d.mocap_pos[self._fixture_mocap[task.target]].copy()
            base[2] = (PLATE_TOP if task.target != "bowl" else BOWL_FLOOR) + BLOCK_HALF
            return base
        if task.kind == "stack":
            return d.xpos[self._block_body[task.target]] + np.array([0.0, 0.0, 2 * BLOCK_HALF])
        return self._start + np.array([0.0, PUSH_DIRECTIONS[task.target] * PUSH_GOAL, 0.0])

    def _success(self) -> bool:
        task, d = self.task, self.data
        pos = d.xpos[self._block_body[task.obj]]
        if self._touching_fingers(task.obj):
            return False  # still held: a release is part of every task
        if task.kind == "place" and task.target == "bowl":
            centre = d.mocap_pos[self._fixture_mocap["bowl"]]
            return bool(
                np.linalg.norm(pos[:2] - centre[:2]) < BOWL_INNER_RADIUS - 0.015 and pos[2] < BOWL_WALL_TOP
            )
        if task.kind == "place":
            centre = d.mocap_pos[self._fixture_mocap[task.target]]
            z_ok = abs(pos[2] - (PLATE_TOP + BLOCK_HALF)) < 0.006
            return bool(np.linalg.norm(pos[:2] - centre[:2]) < PLATE_RADIUS - 0.01 and z_ok)
        if task.kind == "stack":
            below = d.xpos[self._block_body[task.target]]
            on_table = abs(below[2] - BLOCK_HALF) < 0.005
            z_ok = abs(pos[2] - below[2] - 2 * BLOCK_HALF) < 0.006
            return bool(np.linalg.norm(pos[:2] - below[:2]) < 0.02 and z_ok and on_table)
        moved = (pos[1] - self._start[1]) * PUSH_DIRECTIONS[task.target]
        # a push keeps the block on the table: lifting it over is a pick-and-place, not a push
        return bool(moved >= PUSH_DISTANCE and self._max_lift < 0.02 and abs(pos[2] - BLOCK_HALF) < 0.005)

    # -- observation -------------------------------------------------------------------------------
    def _observe(self, render: bool) -> Observation:
        d = self.data
        eef_pos = d.xpos[self._hand].copy()
        eef_quat = d.xquat[self._hand].copy()
        fingers = np.array([d.qpos[a] for a in self._finger_qpos])
        state = np.concatenate([eef_pos, quat_to_axis_angle(eef_quat), fingers]).astype(np.float32)
        images = self._render_cameras() if render else {}
        self._last_images = images  # this state's images, for render_frame(); {} when not rendered
        poses = {
            b: np.concatenate([d.xpos[self._block_body[b]], d.xquat[self._block_body[b]]]) for b in BLOCKS
        }
        for f in FIXTURES:
            poses[f] = np.concatenate([d.mocap_pos[self._fixture_mocap[f]], [1.0, 0.0, 0.0, 0.0]])
        privileged = {
            "kind": self.task.kind,
            "obj": self.task.obj,
            "target": self.task.target,
            "obj_pos": poses[self.task.obj][:3].copy(),
            "obj_quat": poses[self.task.obj][3:].copy(),
            "goal_pos": self.goal_position(),
            "eef_pos": eef_pos,
            "eef_quat": eef_quat,
            "target_pos": self._target_pos.copy(),
            "target_quat": self._target_quat.copy(),
            "fingers": fingers,
            "poses": poses,
        }
        return Observation(images, state, self.task.instruction, privileged)

    def _render_cameras(self) -> dict[str, np.ndarray]:
        """Every camera, with one renderer. (Both cameras drawn into one buffer and read back at once
        gave the same images and no measurable gain: results/tabletop_env/render_options.md.)"""
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            except Exception as e:
                raise SimulatorMissing(
                    f"MuJoCo cannot render offscreen ({type(e).__name__}: {e}); install EGL or OSMesa "
                    "(apt-get install libegl1 libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa"
                ) from e
        images = {}
        for camera in self.cameras:
            self._renderer.update_scene(self.data, camera=camera)
            images[camera] = self._renderer.render()  # a new array each call
        return images

    def render_frame(self) -> np.ndarray:
        """The cameras side by side, at the current state (for videos): the last observation's
        images where that step rendered them (bit-identical, no second render), else a render."""
        images = self._last_images or self._render_cameras()
        return np.concatenate([images[c] for c in self.cameras], axis=1)

    @property
    def render_settings(self) -> dict:
        """What decides how the images look besides the state: recorded with demonstrations and in
        a checkpoint's training record, so a model trained on other images is flagged (tested)."""
        m = self.model
        shadows = bool(m.light_castshadow.any())
        return {
            "scene": SCENE_PATH.name,
            "shadows": shadows,
            "shadowsize": int(m.vis.quality.shadowsize) if shadows else 0,
            "reflection": bool((m.mat_reflectance > 0).any()),
            "lights": [[round(float(v), 3) for v in m.light_diffuse[i]] for i in range(m.nlight)],
            "headlight": [round(float(v), 3) for v in (*m.vis.headlight.ambient, *m.vis.headlight.diffuse)],
        }

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
