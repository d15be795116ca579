"""The AsyncVLA policy through the harness: the batching policy server gives the same episodes
as the inline loop (noise is drawn per episode key, never from a global stream)."""

import json

from evalsuite.cli import main


def _records(out):
    lines = (out / "episodes.jsonl").read_text().splitlines()
    return {
        r["episode_id"]: (r["success"], r["steps"], r["info"]["policy_calls"]) for r in map(json.loads, lines)
    }


def test_asyncvla_checkpoint_runs_identically_inline_and_on_two_batched_workers(tmp_path):
    common = [
        "tabletop",
        "--ckpt",
        "demo",
        "--mode",
        "asyncvla",
        "--tasks",
        "push_green_left",
        "--episodes-per-task",
        "2",
        "--max-steps",
        "16",
        "--replan-steps",
        "4",
        "--video",
        "none",
        "-q",
        "--device",
        "cpu",
    ]
    assert main([*common, "--workers", "2", "--max-batch", "2", "--out", str(tmp_path / "ray")]) == 0
    assert main([*common, "--workers", "0", "--out", str(tmp_path / "inline")]) == 0
    ray_records, inline_records = _records(tmp_path / "ray"), _records(tmp_path / "inline")
    assert ray_records == inline_records
    assert all(
        calls == 4 for _, steps, calls in ray_records.values() if steps == 16
    )  # 16 steps / 4 per chunk
    manifest = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert manifest["policy"]["mode"] == "asyncvla" and len(manifest["checkpoint_sha256"]) == 64


def test_the_fast_and_the_reference_inference_paths_give_the_same_episodes(tmp_path):
    """--eager-inference runs asyncvla/model.py's path; the default fast path gives the same
    records (bit-identical chunks on CPU), and the two resume each other's run directory."""
    common = ["tabletop", "--ckpt", "demo", "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "12"]
    common += ["--replan-steps", "4", "--video", "none", "-q", "--device", "cpu", "--workers", "0"]
    assert main([*common, "--out", str(tmp_path / "fast")]) == 0
    assert main([*common, "--eager-inference", "--out", str(tmp_path / "eager")]) == 0
    fast = [json.loads(x) for x in (tmp_path / "fast" / "episodes.jsonl").read_text().splitlines()]
    eager = [json.loads(x) for x in (tmp_path / "eager" / "episodes.jsonl").read_text().splitlines()]
    assert [(r["success"], r["steps"], r["info"]["final_state"]) for r in fast] == [
        (r["success"], r["steps"], r["info"]["final_state"]) for r in eager
    ]
    assert (
        main([*common, "--eager-inference", "--out", str(tmp_path / "fast")]) == 0
    )  # a resume, not a refusal
