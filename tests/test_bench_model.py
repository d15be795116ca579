"""scripts/bench_model.py runs end to end on the tiny model and writes every row it promises.

The GPU machine is lent for minutes at a time, and its one run is this script (scripts/gpu_check.sh):
a row that breaks must fail here, on CPU, first. Nothing here checks a timing; it checks what the
rows must be whatever the machine's speed."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def test_the_model_benchmark_writes_every_row_and_its_profile(tmp_path):
    head_before = _head()
    subprocess.run(
        [
            sys.executable,
            "scripts/bench_model.py",
            "--size",
            "tiny",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--batch-sizes",
            "1",
            "2",
            "--profile",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    stored = json.loads((tmp_path / "model_latency_cpu.json").read_text())
    rows = stored["rows"]
    # the commit measured, and whether the tree was exactly it (a figure from a dirty tree is no commit's)
    # (HEAD read before and after: the shared tree may gain a commit while the benchmark runs)
    assert stored["meta"]["commit"] in (head_before, _head())
    head = stored["meta"]["commit"]
    assert isinstance(stored["meta"]["clean_tree"], bool)
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert not [k for k in r if k.endswith("_error")], r
        for key in (
            "eager_ms",
            "hf_static_ms",
            "fast_no_graphs_ms",
            "fast_no_grad_ms",
            "fast_prefix_ms",
            "fast_steps_ms",
            "fast_rater_ms",
            "act_fast_ms",
            "fast_paper_style_ms",
        ):
            assert r[key] > 0, key
        assert r["default_row"] == "fast_no_graphs_ms"
        # the floor is the arithmetic share of the fast chunk, so below it, and the ratios are
        # derived from the row's own figures
        assert 0 < r["floor_ms"] < r["fast_no_graphs_ms"]
        assert r["eager_over_floor"] == r["eager_ms"] / r["floor_ms"]
        assert r["speedup_fast_vs_eager"] == r["eager_ms"] / r["fast_no_graphs_ms"]
        assert "profile_table" not in r  # it goes to the profile file, not the record
    profile = (tmp_path / "model_latency_cpu_profile.txt").read_text()
    assert profile.count("one chunk, fast path without graphs") == 2
    assert "aten::mm" in profile
    table = (tmp_path / "model_latency_cpu.md").read_text()
    assert f"at commit {head[:7]}" in table
    assert "| floor (profiled) | eager / floor |" in table
    assert "| default: prefix | default: 10 steps | default: rater |" in table
