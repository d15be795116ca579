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
        # the path each fast row and act() ran, recorded (CPU: no graphs, nothing compiled)
        assert r["act_fast_path"] == r["fast_no_graphs_path"] == "no graphs"
        assert not [k for k in r if k.endswith("_fallbacks")], r
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
    assert "| default path (act()) |" in table and "paths run at B = 2: fast_no_graphs: no graphs" in table
    assert "| floor (profiled) | eager / floor |" in table
    assert "| default: prefix | default: 10 steps | default: rater |" in table


def test_the_default_row_is_the_one_that_ran_act_paths():
    """On CUDA the compiled row was labelled the default whenever nothing raised; a row whose
    compile fell back (to graphs without it) measured another path and must not stand for it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "scripts" / "bench_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = {"fast_fused_ms": 1.0, "fast_ms": 2.0, "fast_no_graphs_ms": 9.0}
    paths = {"fast_fused_path": "graphs+compiled", "fast_path": "graphs", "fast_no_graphs_path": "no graphs"}
    assert bench.default_row({**row, **paths, "act_fast_path": "graphs+compiled"}) == "fast_fused_ms"
    # act() fell back to graphs without the compiled layer: the graphs row is the default
    no_fused_row = {k: v for k, v in {**row, **paths}.items() if not k.startswith("fast_fused")}
    assert bench.default_row({**no_fused_row, "act_fast_path": "graphs"}) == "fast_ms"
    # the compiled row fell back, act() did not: no row measured act()'s path, and the row says so
    fell_back = {**row, **paths, "fast_fused_path": "graphs", "act_fast_path": "graphs+compiled"}
    bench.default_row(fell_back)
    assert "graphs+compiled" in fell_back["default_row_note"]
