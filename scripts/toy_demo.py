"""Regenerate results/nightly/toy/: three nights of `asyncvla-eval nightly` on the toy suite.

The toy suite is tests/toy_suite.py (a 1-D point that must reach a goal); its "checkpoints" are
directories whose config.json holds a gain, loaded by a stand-in for `asyncvla.load` (the toy
observations do not fit the real model). Everything else is the real nightly job: discovery by
hash, evaluate() into dated run directories with videos, the SQLite history, Fisher + Holm,
the report. Run from the repository root:  python scripts/toy_demo.py
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, "tests")
os.environ["ASYNCVLA_SUITE_MODULES"] = "toy_suite"
from toy_suite import GainPolicy  # noqa: E402

import asyncvla  # noqa: E402
from evalsuite.cli import main  # noqa: E402

asyncvla.load = lambda path, **kw: GainPolicy(json.loads((Path(path) / "config.json").read_text())["gain"])

out, ckpts = Path("results/nightly/toy"), Path("/tmp/toy-demo-ckpts")
shutil.rmtree(out, ignore_errors=True)
shutil.rmtree(ckpts, ignore_errors=True)
codes = {}
for date, name, gain in [
    ("2026-11-25", "step1000", 1.0),
    ("2026-11-26", "step2000", 0.12),
    ("2026-11-27", "step3000", 1.0),
]:
    (ckpts / name).mkdir(parents=True)
    (ckpts / name / "model.safetensors").write_bytes(f"toy weights {name}".encode())
    (ckpts / name / "config.json").write_text(json.dumps({"gain": gain}))
    time.sleep(0.05)  # distinct mtimes: evaluation order = training order
    argv = ["nightly", "toy", "--ckpt-dir", str(ckpts), "--out-root", str(out), "--date", date]
    codes[date] = main([*argv, "--workers", "0", "--device", "cpu", "--video", "all", "-q"])
print("exit codes per night:", codes)
