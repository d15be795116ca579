"""scripts/bench_train.py runs the trainer's own DDP and FSDP wrapping end to end and writes its
rows (the figures themselves are results/bench/train_throughput_*; never asserted here)."""

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_training_benchmark_writes_a_row_per_strategy_with_its_commit(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # the spawned processes import it too
    import bench_train

    argv = ["--workers", "1", "--steps", "1", "--warmup", "0", "--repeats", "1", "--batch-sizes", "2"]
    environment = {key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT")}
    assert bench_train.main([*argv, "--threads", "1", "--out", str(tmp_path)]) == 0
    assert {key: os.environ.get(key) for key in environment} == environment  # nothing left behind
    result = json.loads((tmp_path / "train_throughput_tiny_cpu.json").read_text())
    rows = {row["strategy"]: row for row in result["rows"]}
    assert set(rows) == {"ddp", "fsdp"}
    for row in rows.values():
        assert row["step_s"] > 0 and row["samples_per_s"] > 0 and row["mfu"] is None  # no GPU peak
        assert row["model_flops_per_sample"] > 1e6  # FlopCounterMode counted the matmuls
    assert rows["ddp"]["model_flops_per_sample"] == rows["fsdp"]["model_flops_per_sample"]
    assert len(result["meta"]["commit"]) == 40
    assert "fsdp / ddp step time at batch 2" in (tmp_path / "train_throughput_tiny_cpu.md").read_text()
