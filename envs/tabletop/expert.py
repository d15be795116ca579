"""The scripted expert of the tabletop suite: reach, grasp, lift, carry, place, release; or push.

It implements the `Policy` contract (docs/CONTRACTS.md) from `Observation.privileged` only.
Each call reads the phase off the simulator state (is the block held? is the hand at the grasp
pose?) instead of remembering it, so one instance serves any batch of episodes, is deterministic
(no randomness at all: the key is unused), and recovers from a slipped grasp by starting over.
A chunk is planned open-loop through a list of waypoints on the hand's mocap target, which the
action integrates exactly; the next call re-reads the state, so errors never accumulate for more
than one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from envs.base import Observation
from envs.tabletop.tasks import BLOCK_HALF, MAX_STEP_POS, MAX_STEP_ROT, PUSH_DIRECTIONS

CARRY_Z = 0.15  # grip height while carrying: the block's bottom clears the bowl and a stacked block
APPROACH_DZ = 0.08  # pre-grasp height above the block's centre
FINGER_HALF_THICKNESS = 0.005
PUSH_SPEED = 0.4  # 6 mm per step: the block slides along instead of being knocked away


@dataclass
class Waypoint:
    pos: np.ndarray  # mocap target position to reach
    yaw: float | None  # hand yaw to reach (None: keep the current one)
    grip: float  # -1 open, +1 close, commanded on the way there
    hold: int = 0  # extra steps to stay once there (for the fingers to move)
    speed: float = 1.0  # fraction of the largest step (pushing fast launches the block)


def _yaw(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def _grasp_yaw(block_yaw: float, hand_yaw: float) -> float:
    """The block's face direction (it is symmetric every 90 degrees) nearest the hand's yaw."""
    base = (block_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
    candidates = [c for c in (base - np.pi / 2, base, base + np.pi / 2) if abs(c) <= np.pi / 2 + 1e-6]
    return min(candidates, key=lambda c: abs(c - hand_yaw))


class TabletopExpert:
    """Scripted policy for every tabletop task; `chunk_length` actions per call.

    Every `chunk_length` steps of an episode it reads the phase off the simulator state and plans
    open loop: waypoints, and the actions that reach them (holding some, for the fingers to move).
    A call between two plans (the harness replanning every k < chunk_length steps: the key's step
    says where the episode is) continues the current plan instead of planning anew, so that the
    expert executes the same actions whatever the replanning: a plan made at every call would
    restart its holds at every call and never finish one (with --replan-steps 1 it closed on a
    block forever). The plan is rolled out two chunks long, so that a continuation always has a
    whole chunk to return."""

    action_dim = 7

    def __init__(self, chunk_length: int = 8):
        if chunk_length < 1:
            raise ValueError(f"chunk_length={chunk_length}: expected at least 1")
        self.chunk_length = chunk_length
        self._plans: dict[str, tuple[int, np.ndarray]] = {}  # episode -> (step planned at, actions)

    def reset(self, episode_key: str) -> None:
        self._plans.clear()  # one episode at a time per expert (it runs in each env worker)

    def act(self, observations: list[Observation], keys: list[str]) -> np.ndarray:
        chunks = []
        for obs, key in zip(observations, keys):
            p = obs.privileged
            if "target_pos" not in p:
                raise ValueError(
                    "the tabletop expert reads Observation.privileged of the tabletop env; this "
                    "observation has none (use --policy scripted only with the tabletop suite)"
                )
            episode, _, step_text = key.rpartition("@")
            step = int(step_text) if step_text.isdigit() else 0
            planned_at, actions = self._plans.get(episode, (None, None))
            if planned_at is None or not planned_at < step < planned_at + self.chunk_length:
                planned_at, actions = step, self._rollout(p, self._plan(p), 2 * self.chunk_length)
                self._plans[episode] = (planned_at, actions)
            chunks.append(actions[step - planned_at :][: self.chunk_length])
        return np.stack(chunks).astype(np.float32)

    # -- what to do next -------------------------------------------------------------------------
    def _plan(self, p: dict) -> list[Waypoint]:
        if p["kind"] == "push":
            return self._plan_push(p)
        return self._plan_pick_place(p)

    def _plan_push(self, p: dict) -> list[Waypoint]:
        direction = PUSH_DIRECTIONS[p["target"]]
        block, goal, eef, target = p["obj_pos"], p["goal_pos"], p["eef_pos"], p["target_pos"]
        if (goal[1] - block[1]) * direction <= 0.004:
            return [Waypoint(np.array([target[0], target[1], CARRY_Z]), None, 1.0)]
        # closed fingers (2 x 5 mm) touch the block's face: the hand centre stays this far behind it
        offset = BLOCK_HALF + 2 * FINGER_HALF_THICKNESS
        end = np.array([block[0], goal[1] - direction * offset, BLOCK_HALF])
        behind = (block[1] - eef[1]) * direction > offset - 0.01
        if behind and abs(eef[0] - block[0]) < 0.012 and eef[2] < 2 * BLOCK_HALF:
            # down to push height before moving on: pushing while descending wedges the block
            # against the table
            down = np.array([block[0], target[1], BLOCK_HALF])
            return [Waypoint(down, 0.0, 1.0), Waypoint(end, 0.0, 1.0, speed=PUSH_SPEED)]
        start = np.array([block[0], block[1] - direction * (offset + 0.04), BLOCK_HALF])
        above = start + np.array([0.0, 0.0, 0.07])
        path = []
        if target[2] < above[2] - 0.01:  # low and on the wrong side: go up before crossing over
            path.append(Waypoint(np.array([target[0], target[1], above[2]]), None, 1.0))
        return path + [
            Waypoint(above, 0.0, 1.0),
            Waypoint(start, 0.0, 1.0),
            Waypoint(end, 0.0, 1.0, speed=PUSH_SPEED),
        ]

    def _plan_pick_place(self, p: dict) -> list[Waypoint]:
        block, goal, eef, target = p["obj_pos"], p["goal_pos"], p["eef_pos"], p["target_pos"]
        gap = float(np.sum(p["fingers"]))
        hand_yaw = _yaw(p["target_quat"])
        up = np.array([0.0, 0.0, APPROACH_DZ])
        held = (
            np.linalg.norm(eef[:2] - block[:2]) < 0.02
            and abs(eef[2] - block[2]) < 0.025
            and 2 * BLOCK_HALF - 0.01 < gap < 2 * BLOCK_HALF + 0.01
        )
        if held:
            offset = block - eef  # where the block sits in the hand: aim the block, not the hand
            release = goal + np.array([0.0, 0.0, 0.006]) - offset
            path = []
            if np.linalg.norm(block[:2] - goal[:2]) > 0.004:
                lift = np.array([target[0], target[1], max(target[2], CARRY_Z)])
                over = np.array([release[0], release[1], CARRY_Z])
                path += [Waypoint(lift, None, 1.0), Waypoint(over, None, 1.0)]
            return path + [
                Waypoint(release, None, 1.0),
                Waypoint(release, None, -1.0, hold=3),
                Waypoint(release + up, None, -1.0),
            ]
        grasp_yaw = _grasp_yaw(_yaw(p["obj_quat"]), hand_yaw)
        grasp = block.copy()
        at_grasp = (
            np.linalg.norm(target[:2] - block[:2]) < 0.006
            and abs(target[2] - block[2]) < 0.01
            and abs(grasp_yaw - hand_yaw) < 0.08
        )
        close = [Waypoint(grasp, grasp_yaw, 1.0, hold=4), Waypoint(grasp + up, grasp_yaw, 1.0)]
        if at_grasp and gap > 2 * BLOCK_HALF - 0.004:
            return close  # closing on the block (or about to)
        path = []
        if gap < 0.07:  # closed on nothing, or half closed away from the grasp pose: open first
            path.append(Waypoint(target.copy(), None, -1.0, hold=3))
        if np.linalg.norm(target[:2] - block[:2]) > 0.01 and target[2] < block[2] + APPROACH_DZ - 0.01:
            path.append(Waypoint(np.array([target[0], target[1], block[2] + APPROACH_DZ]), None, -1.0))
        if np.linalg.norm(target[:2] - block[:2]) > 0.006 or target[2] > block[2] + APPROACH_DZ:
            path.append(Waypoint(grasp + up, grasp_yaw, -1.0))  # above it first; else straight down
        return path + [Waypoint(grasp, grasp_yaw, -1.0)] + close

    # -- how to get there ---------------------------------------------------------------------------
    def _rollout(self, p: dict, waypoints: list[Waypoint], steps: int) -> np.ndarray:
        """Integrate the mocap target through the waypoints, exactly as the env does."""
        pos = np.asarray(p["target_pos"], dtype=np.float64).copy()
        quat = np.asarray(p["target_quat"], dtype=np.float64).copy()
        actions = np.zeros((steps, 7))
        index, held_for = 0, 0
        grip = waypoints[0].grip if waypoints else -1.0
        for t in range(steps):
            while index < len(waypoints):
                wp = waypoints[index]
                grip = wp.grip
                move = self._move(pos, quat, wp)
                if np.any(np.abs(move) > 1e-9) or held_for < wp.hold:
                    break
                index, held_for = index + 1, 0  # reached and held: on to the next one
            else:
                move = np.zeros(6)
            if index < len(waypoints) and not np.any(np.abs(move) > 1e-9):
                held_for += 1
            actions[t, :6] = move
            actions[t, 6] = grip
            pos, quat = self._apply(pos, quat, move)
        return actions

    @staticmethod
    def _move(pos: np.ndarray, quat: np.ndarray, wp: Waypoint) -> np.ndarray:
        """Normalised [-1, 1] translation and rotation taking one step toward the waypoint."""
        trans = (wp.pos - pos) / MAX_STEP_POS
        trans = trans / max(1.0, float(np.max(np.abs(trans))) / wp.speed)
        goal_quat = _yaw_quat(wp.yaw if wp.yaw is not None else _yaw(quat))
        conj, err = np.zeros(4), np.zeros(4)
        mujoco.mju_negQuat(conj, quat)
        mujoco.mju_mulQuat(err, goal_quat, conj)
        if err[0] < 0:
            err = -err
        rotvec = np.zeros(3)
        mujoco.mju_quat2Vel(rotvec, err, 1.0)
        rot = rotvec / MAX_STEP_ROT
        rot = rot / max(1.0, float(np.max(np.abs(rot))))
        move = np.concatenate([trans, rot])
        move[np.abs(move) < 1e-7] = 0.0
        return move

    @staticmethod
    def _apply(pos: np.ndarray, quat: np.ndarray, move: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = pos + move[:3] * MAX_STEP_POS
        rotvec = move[3:] * MAX_STEP_ROT
        angle = float(np.linalg.norm(rotvec))
        if angle > 1e-9:
            delta, out = np.zeros(4), np.zeros(4)
            mujoco.mju_axisAngle2Quat(delta, rotvec / angle, angle)
            mujoco.mju_mulQuat(out, delta, quat)
            quat = out / np.linalg.norm(out)
        return pos, quat


def make_expert(chunk_length: int = 8) -> TabletopExpert:
    return TabletopExpert(chunk_length=chunk_length)
