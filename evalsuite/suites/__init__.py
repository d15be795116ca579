"""The suite registry: every module here exports `SUITES`; suites are data, not subclasses."""

from __future__ import annotations

import importlib
import logging
import os

from evalsuite.errors import EvalError, UnknownName
from evalsuite.suites.spec import SuiteSpec, TaskSpec, import_object

_FAMILIES = ["tabletop", "libero", "libero_pro", "simpler"]
# Extra registry modules (comma-separated import paths, each exporting SUITES): a user's own
# suites, or the toy suites of the test-suite, without editing this package (README, "Your own suites").
EXTRA_MODULES_ENV = "ASYNCVLA_SUITE_MODULES"
log = logging.getLogger(__name__)


class PluginError(EvalError):
    """ASYNCVLA_SUITE_MODULES names a module that cannot be imported or exports no suites."""


def registry() -> dict[str, SuiteSpec]:
    suites: dict[str, SuiteSpec] = {}
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f"evalsuite.suites.{family}")
        except ModuleNotFoundError as e:  # a family not written yet; its simulator is imported lazily anyway
            if e.name != f"evalsuite.suites.{family}":
                raise
            continue
        for suite in module.SUITES:
            suites[suite.name] = suite
    for name in filter(None, (n.strip() for n in os.environ.get(EXTRA_MODULES_ENV, "").split(","))):
        for suite in plugin_suites(name):
            if suite.name in suites:
                log.warning("%s: %s replaces the built-in suite %r", EXTRA_MODULES_ENV, name, suite.name)
            suites[suite.name] = suite
    return suites


def plugin_suites(module_name: str) -> list[SuiteSpec]:
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # a plug-in is user code: any failure to import is reported, not raised through
        raise PluginError(
            f"{EXTRA_MODULES_ENV}={os.environ.get(EXTRA_MODULES_ENV)!r}: cannot import {module_name!r} "
            f"({type(e).__name__}: {e}); fix the module or its PYTHONPATH, or unset the variable"
        ) from e
    suites = getattr(module, "SUITES", None)
    if not isinstance(suites, (list, tuple)) or not all(isinstance(s, SuiteSpec) for s in suites):
        raise PluginError(
            f"{EXTRA_MODULES_ENV}: module {module_name!r} must export SUITES, a list of "
            "evalsuite.suites.SuiteSpec"
        )
    return list(suites)


def unavailable_suites() -> dict[str, str]:
    """suite -> why a run of it would be refused (missing files), from the families that can tell
    without building a simulator (a module-level `unavailable()`); for `asyncvla-eval list`."""
    out: dict[str, str] = {}
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f"evalsuite.suites.{family}")
        except ModuleNotFoundError as e:
            if e.name != f"evalsuite.suites.{family}":
                raise
            continue
        if hasattr(module, "unavailable"):
            out.update(module.unavailable())
    return out


def get_suite(name: str) -> SuiteSpec:
    suites = registry()
    if name not in suites:
        raise UnknownName(f"unknown suite {name!r}; available: {', '.join(sorted(suites))}")
    return suites[name]


__all__ = ["SuiteSpec", "TaskSpec", "registry", "get_suite", "import_object", "unavailable_suites"]
