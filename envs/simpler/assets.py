"""The asset files a SimplerEnv episode needs, checked before the env is built.

SAPIEN does not stop on a missing mesh: it logs `[SAPIEN] [error] File not found` and the episode
runs without it (objects fall off a missing table; `notes/simplerenv-on-cpu.md`). Large files are
often missing from a checkout, so every episode is checked first and refused with the missing
names. The paths follow ManiSkill2_real2sim ef7a4d4: scenes `{ASSET_DIR}/hab2_bench_assets/stages/
{scene}.glb` (`cs/base_env.py:140-153`), objects `{ASSET_DIR}/custom/models/{id}/collision.obj` plus
one of `textured.{obj,dae,glb}` (`cs/base_env.py:471-489`), cabinets `{ASSET_DIR}/custom/
{station}.urdf` and the meshes it references (`cs/open_drawer_in_scene.py:125`), overlays
`{ASSET_DIR}/real_inpainting/*.png`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from envs.base import SetupError
from envs.simpler.sweep import SweepConfig

# Objects each env loads by default (read from the env classes in ManiSkill2_real2sim
# envs/custom_scenes/*.py at ef7a4d4); `model_ids` / `distractor_config` kwargs change them.
_BRIDGE = {
    "PutSpoonOnTableClothInScene-v0": ["bridge_spoon_generated_modified", "table_cloth_generated_shorter"],
    "PutCarrotOnPlateInScene-v0": ["bridge_carrot_generated_modified", "bridge_plate_objaverse_larger"],
    "StackGreenCubeOnYellowCubeBakedTexInScene-v0": ["baked_green_cube_3cm", "baked_yellow_cube_3cm"],
    # the target is an invisible plane, and the env adds the sink (put_on_in_scene.py:376-448)
    "PutEggplantInBasketScene-v0": ["eggplant", "dummy_sink_target_plane", "sink"],
}
_MOVE_NEAR_BAKED = ["blue_plastic_bottle", "baked_opened_pepsi_can", "orange", "baked_opened_7up_can"]
_MOVE_NEAR_BAKED += ["baked_apple", "baked_sponge", "baked_opened_coke_can", "baked_opened_redbull_can"]
_MOVE_NEAR = ["blue_plastic_bottle", "opened_pepsi_can", "orange", "opened_7up_can", "apple", "sponge"]
_MOVE_NEAR += ["opened_coke_can", "opened_redbull_can"]
_DISTRACTORS = {  # grasp_single_in_scene.py:711-741
    "less": ["opened_pepsi_can", "apple", "sponge", "orange"],
    "more": ["opened_7up_can", "opened_sprite_can", "sponge", "orange", "opened_fanta_can"]
    + ["bridge_spoon_generated_modified"],
}


class MissingAssets(SetupError):
    """Files an episode needs are absent; the run stops instead of recording a broken episode."""


def object_models(config: SweepConfig) -> list[str]:
    env, kwargs = config.env_name, config.env_build_kwargs
    if env in _BRIDGE:
        return list(_BRIDGE[env])
    if env.startswith("GraspSingleOpenedCokeCan"):
        models = ["opened_coke_can"]
        if "Distractor" in env:
            models += _DISTRACTORS[str(kwargs.get("distractor_config", "less"))]
        return models
    if env.startswith("MoveNear"):
        return list(_MOVE_NEAR_BAKED if "BakedTex" in env else _MOVE_NEAR)
    if env.startswith("PlaceIntoClosed"):
        ids = kwargs.get("model_ids", "baked_apple_v2")
        return [ids] if isinstance(ids, str) else list(ids)
    return []  # open / close drawer: only the cabinet


def required_files(config: SweepConfig, asset_dir: Path) -> list[Path]:
    """Files whose absence SAPIEN would only log; the overlay is checked by the env itself, but early here."""
    files: list[Path] = []
    if config.scene_name and "dummy" not in config.scene_name:
        files.append(asset_dir / "hab2_bench_assets" / "stages" / f"{config.scene_name}.glb")
    if config.rgb_overlay_path:
        files.append(asset_dir / "real_inpainting" / Path(config.rgb_overlay_path).name)
    for model in object_models(config):
        files.append(asset_dir / "custom" / "models" / model / "collision.obj")
    if "Drawer" in config.env_name:
        station = str(config.env_build_kwargs.get("station_name", "mk_station"))
        files.append(asset_dir / "custom" / f"{station}.urdf")
    return files


def missing_files(config: SweepConfig, asset_dir: Path) -> list[Path]:
    missing = [f for f in required_files(config, asset_dir) if not f.is_file()]
    for model in object_models(config):
        folder = asset_dir / "custom" / "models" / model
        if folder.is_dir() and not any(
            (folder / f"textured.{ext}").is_file() for ext in ("obj", "dae", "glb")
        ):
            missing.append(folder / "textured.{obj,dae,glb}")
    for urdf in (f for f in required_files(config, asset_dir) if f.suffix == ".urdf" and f.is_file()):
        missing += [m for m in urdf_meshes(urdf) if not m.is_file()]
    return missing


def urdf_meshes(urdf: Path) -> list[Path]:
    """Mesh files a URDF references, resolved against its folder."""
    meshes = ET.parse(urdf).getroot().iter("mesh")
    return sorted({(urdf.parent / m.attrib["filename"]).resolve() for m in meshes if "filename" in m.attrib})


INSTALL_FIX = (
    "Fetch the large files of ManiSkill2_real2sim/data (git lfs pull, or its README's download) "
    "or set MS2_REAL2SIM_ASSET_DIR to a complete copy; see docs/simpler.md#install"
)


def check_assets(config: SweepConfig, asset_dir: Path) -> None:
    """Raise `MissingAssets` naming every absent file of this configuration."""
    missing = missing_files(config, asset_dir)
    if missing:
        names = ", ".join(str(m) for m in missing)
        raise MissingAssets(
            f"{config.env_name} ({config.task_name}) needs files missing under {asset_dir}: {names}. "
            + INSTALL_FIX
        )


def check_plan_assets(configs: list[SweepConfig], asset_dir: Path) -> None:
    """Check every configuration a run will build before its first episode, and name every missing
    file in one message, grouped by the paper's task (one rerun fixes all of them)."""
    by_task: dict[str, dict[Path, None]] = {}
    affected: dict[str, int] = {}
    for config in configs:
        missing = missing_files(config, asset_dir)
        if missing:
            by_task.setdefault(config.task, {}).update(dict.fromkeys(missing))
            affected[config.task] = affected.get(config.task, 0) + 1
    if not by_task:
        return
    lines = [
        f"SimplerEnv assets missing under {asset_dir} "
        f"({len({f for files in by_task.values() for f in files})} files); nothing was run or written:"
    ]
    for task, files in by_task.items():
        names = ", ".join(_relative(f, asset_dir) for f in files)
        lines.append(f"  {task} ({affected[task]} of the planned configurations): {names}")
    lines.append(INSTALL_FIX)
    raise MissingAssets("\n".join(lines))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:  # a URDF mesh outside the asset folder
        return str(path)
