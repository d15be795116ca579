"""The suite registry: every module here exports `SUITES`; suites are data, not subclasses."""

from __future__ import annotations

import importlib
import logging
import os

from evalsuite.suites.spec import SuiteSpec, TaskSpec, import_object

_FAMILIES = ["tabletop", "libero", "simpler"]
# Extra registry modules (comma-separated import paths, each exporting SUITES): a user's own
# suites, or the toy suites of the test-suite, without editing this package.
EXTRA_MODULES_ENV = "ASYNCVLA_SUITE_MODULES"
log = logging.getLogger(__name__)


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
    for name in filter(None, os.environ.get(EXTRA_MODULES_ENV, "").split(",")):
        for suite in importlib.import_module(name.strip()).SUITES:
            suites[suite.name] = suite
    return suites


def get_suite(name: str) -> SuiteSpec:
    suites = registry()
    if name not in suites:
        raise KeyError(f"unknown suite {name!r}; available: {', '.join(sorted(suites))}")
    return suites[name]


__all__ = ["SuiteSpec", "TaskSpec", "registry", "get_suite", "import_object"]
