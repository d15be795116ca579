"""The LIBERO cluster projection (results/libero/projection.json) is what scripts/bench_libero.py
computes from the measurements committed beside it and the model benchmark it names: a renamed
field in either (which once made `--project` fail) or a stale projection fails here."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBERO = ROOT / "results" / "libero"
INPUTS = [
    "bench.json",
    "reset_check.json",
    "scene/scene_bench_local-mesa-egl.json",
    "scene/scene_bench_h200-egl.json",
]


def test_the_committed_projection_is_what_its_inputs_give(tmp_path):
    for name in INPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LIBERO / name, tmp_path / name)
    model_bench = ROOT / "results" / "bench" / "model_latency_qwen2.5-vl-3b_cuda.json"
    subprocess.run(
        [
            sys.executable,
            "scripts/bench_libero.py",
            "--project",
            "--out",
            str(tmp_path),
            "--model-bench",
            str(model_bench),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    projected = json.loads((tmp_path / "projection.json").read_text())
    committed = json.loads((LIBERO / "projection.json").read_text())
    # the commit each was computed at (meta) differs by nature; every figure must agree
    assert {k: v for k, v in projected.items() if k != "meta"} == {
        k: v for k, v in committed.items() if k != "meta"
    }
