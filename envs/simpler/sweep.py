"""SimplerEnv's published evaluation sweeps as data: one `SweepConfig` per script invocation.

`sweeps.csv` is a copy of `protocol/simpler/sweeps.csv` (every `main_inference.py` call of
SimplerEnv's `scripts/*.sh`, read at SimplerEnv 4ab7178, ManiSkill2_real2sim ef7a4d4). A config
expands into episodes with the loop order of SimplerEnv's evaluator
(`simpler_env/evaluation/maniskill2_evaluator.py:180-215`): robot x, robot y, robot quaternion,
then object x, object y (mode `xy`) or the object episode id (mode `episode`), innermost last.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

GROUPS = ("widowx", "google_vm", "google_va")
# The camera the evaluator overlays and the policy sees (`simpler_env/utils/env/env_builder.py:7-15`).
POLICY_CAMERA = {"widowx": "3rd_view_camera", "google_robot": "overhead_camera"}


@dataclass(frozen=True)
class SweepConfig:
    """One configuration line of a SimplerEnv script: an env build plus a grid of initial states."""

    row_id: int
    family: str  # rt1 (canonical sweep) | octo | misc_alt_urdf
    group: str  # widowx | google_vm | google_va
    task: str  # e.g. pick_coke_can
    subtask: str  # coke-can orientation, drawer level, "" where none
    variant: str  # urdf=...|overlay=... (VM), base / lighting_darker / camera_1 ... (VA)
    va_category: str
    in_official_aggregate: bool
    env_name: str
    scene_name: str
    robot: str
    control_mode: str
    control_freq: int
    sim_freq: int
    max_episode_steps: int
    rgb_overlay_path: str  # relative to the SimplerEnv repo root; "" for variant aggregation
    robot_init_xs: tuple[float, ...]
    robot_init_ys: tuple[float, ...]
    robot_init_quats_wxyz: tuple[tuple[float, ...], ...]
    obj_variation_mode: str  # xy | episode
    obj_episode_ids: tuple[int, ...]
    obj_init_xs: tuple[float, ...]
    obj_init_ys: tuple[float, ...]
    env_build_kwargs: dict[str, Any] = field(hash=False)  # effective kwargs (shader_dir first if ray tracing)
    octo_init_rng: int = 0

    @property
    def episodes(self) -> int:
        n_robot = len(self.robot_init_xs) * len(self.robot_init_ys) * len(self.robot_init_quats_wxyz)
        if self.obj_variation_mode == "episode":
            return n_robot * len(self.obj_episode_ids)
        return n_robot * len(self.obj_init_xs) * len(self.obj_init_ys)

    @property
    def robot_kind(self) -> str:
        return "widowx" if "widowx" in self.robot else "google_robot"

    @property
    def task_name(self) -> str:
        """Unique within a group: task, subtask, variant ("|" -> "+" so it is safe in file names)."""
        parts = [self.task, self.subtask]
        if self.group != "widowx":  # WidowX has one "base" configuration per task
            parts.append(self.variant.replace("|", "+"))
        return ".".join(p for p in parts if p)

    @property
    def aggregate_variant(self) -> str:
        """The unit SimplerEnv's calc_metrics averages over (its per-variant result directory).

        Visual matching averages URDF directories, each pooling all overlays / robot poses
        (`tools/calc_metrics_evaluation_videos.py:73-82, 455-466`); variant aggregation averages
        the variant lines themselves.
        """
        if self.group == "google_vm":
            return self.variant.split("|")[0]
        return self.variant

    def gym_make_kwargs(self, overlay_path: str | None) -> dict[str, Any]:
        """`gym.make` kwargs exactly as `maniskill2_evaluator.py:44-64` + `env_builder.py:5-16` build them."""
        kwargs: dict[str, Any] = dict(self.env_build_kwargs)
        kwargs.update(
            obs_mode="rgbd",
            robot=self.robot,
            sim_freq=self.sim_freq,
            control_mode=self.control_mode,
            control_freq=self.control_freq,
            max_episode_steps=self.max_episode_steps,
            scene_name=self.scene_name,
            camera_cfgs={"add_segmentation": True},
            rgb_overlay_path=overlay_path,
        )
        if overlay_path is not None:
            kwargs["rgb_overlay_cameras"] = [POLICY_CAMERA[self.robot_kind]]
        return kwargs

    def reset_options(self, episode_index: int) -> dict[str, Any]:
        """Reset options of episode `episode_index`, decoded with the evaluator's loop order."""
        if not 0 <= episode_index < self.episodes:
            raise IndexError(
                f"episode {episode_index} out of range for {self.task_name!r} ({self.episodes} episodes)"
            )
        if self.obj_variation_mode == "episode":
            rest, obj = divmod(episode_index, len(self.obj_episode_ids))
            obj_options: dict[str, Any] = {"episode_id": self.obj_episode_ids[obj]}
        else:
            rest, obj = divmod(episode_index, len(self.obj_init_xs) * len(self.obj_init_ys))
            ox, oy = divmod(obj, len(self.obj_init_ys))
            obj_options = {"init_xy": [self.obj_init_xs[ox], self.obj_init_ys[oy]]}
        rest, q = divmod(rest, len(self.robot_init_quats_wxyz))
        x, y = divmod(rest, len(self.robot_init_ys))
        return {
            "robot_init_options": {
                "init_xy": [self.robot_init_xs[x], self.robot_init_ys[y]],
                "init_rot_quat": list(self.robot_init_quats_wxyz[q]),
            },
            "obj_init_options": obj_options,
        }

    @classmethod
    def from_row(cls, row: dict[str, str]) -> SweepConfig:
        def floats(text: str) -> tuple[float, ...]:
            return tuple(float(v) for v in json.loads(text)) if text else ()

        ids: tuple[int, ...] = ()
        if row["obj_variation_mode"] == "episode":
            start, end = (int(v) for v in row["obj_episode_range"].split(","))
            ids = tuple(range(start, end))
        return cls(
            row_id=int(row["row_id"]),
            family=row["family"],
            group=row["group"],
            task=row["task"],
            subtask=row["subtask"],
            variant=row["variant"],
            va_category=row["va_category"],
            in_official_aggregate=row["in_official_aggregate"] == "1",
            env_name=row["env_name"],
            scene_name=row["scene_name"],
            robot=row["robot"],
            control_mode=row["control_mode"],
            control_freq=int(row["control_freq"]),
            sim_freq=int(row["sim_freq"]),
            max_episode_steps=int(row["max_episode_steps"]),
            rgb_overlay_path=row["rgb_overlay_path"],
            robot_init_xs=floats(row["robot_init_xs"]),
            robot_init_ys=floats(row["robot_init_ys"]),
            robot_init_quats_wxyz=tuple(tuple(q) for q in json.loads(row["robot_init_quats_wxyz"])),
            obj_variation_mode=row["obj_variation_mode"],
            obj_episode_ids=ids,
            obj_init_xs=floats(row["obj_init_xs"]),
            obj_init_ys=floats(row["obj_init_ys"]),
            env_build_kwargs=json.loads(row["effective_env_build_kwargs"]),
            octo_init_rng=int(row["octo_init_rng"] or 0),
        )


@cache
def load_sweeps(family: str = "rt1") -> tuple[SweepConfig, ...]:
    """Every configuration of one script family, in file order (`rt1` = the canonical sweep)."""
    text = resources.files("envs.simpler").joinpath("sweeps.csv").read_text()
    rows = [r for r in csv.DictReader(text.splitlines()) if r["family"] == family]
    if not rows:
        raise ValueError(f"no sweep rows for family {family!r}; expected rt1, octo or misc_alt_urdf")
    return tuple(SweepConfig.from_row(r) for r in rows)


@cache
def configs_by_name(group: str, family: str = "rt1") -> dict[str, SweepConfig]:
    if group not in GROUPS:
        raise ValueError(f"unknown SimplerEnv group {group!r}; expected one of {', '.join(GROUPS)}")
    return {c.task_name: c for c in load_sweeps(family) if c.group == group}
