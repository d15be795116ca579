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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread per test: CI machines have 2 cores, and oversubscribed threads slow
    training steps ~20x (measured while Ray workers and the simulator shared them)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
