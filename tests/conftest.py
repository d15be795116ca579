import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def toy_suites(monkeypatch):
    """Register tests/toy_suite.py with the registry, in this process and in Ray workers."""
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("ASYNCVLA_SUITE_MODULES", "toy_suite")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    sys.modules.pop("toy_suite", None)
    from evalsuite.suites import get_suite

    return get_suite
