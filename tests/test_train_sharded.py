"""Issue 41: sharded training (`--strategy fsdp`, torch's FSDP2 on gloo), launched by our spawner
and by Ray Train, trains what one process trains on the same global batch; its sharded saves
resume exactly; the merged checkpoint is the sharded model; a launch that cannot work is refused in
one line before any process group starts.

Tolerances: the trainings run in fp32 on CPU and differ only in the order the gradients of the two
processes' samples are summed (gloo's reduce-scatter vs one process's backward), about 1e-7 of a
loss; AdamW's update divides by the gradients' running RMS, which can grow such differences over
steps, so the curves must agree to 1e-4 (relative) over these few steps. A resume replays the same
arithmetic (same processes, same shards, same order), so it must agree to 1e-6.
"""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from test_train_hostile import (
    _toy_data,
    assert_refused,
    ctrl_c_after_first_save,
    error_lines,
    refused_in_process,
    train_cli,
)

from asyncvla.backbone import Preprocessor
from asyncvla.checkpoint import load_checkpoint, read_training_record
from asyncvla.training import sharding
from asyncvla.training.datasets import ChunkDataset, read_dataset
from asyncvla.training.train import TrainConfig, collate, main, run

TESTS = Path(__file__).resolve().parent
STEPS = 6
COMMON = dict(lr=3e-3, vision_lr=3e-3, threads=1, save_every=2)


def losses(out: Path, stage: str = "policy") -> np.ndarray:
    return np.array([float(r["loss"]) for r in csv.DictReader(open(out / f"loss_{stage}.csv"))])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two episodes of 10 steps the toy suite can evaluate the checkpoint on: 20 chunks, so the six
    steps of batch 4 cross an epoch."""
    return _toy_data(tmp_path_factory.mktemp("data") / "data")


@pytest.fixture(scope="module")
def one(tmp_path_factory, data) -> Path:
    """One process, global batch 4: the reference."""
    out = tmp_path_factory.mktemp("one") / "ckpt"
    run(TrainConfig(dataset=str(data), out=str(out), steps=STEPS, batch_size=4, **COMMON))
    return out


@pytest.fixture(scope="module")
def on_ray(tmp_path_factory, data) -> Path:
    """Two FSDP processes of batch 2 started by Ray Train on a local Ray cluster, evaluating the
    last save on the toy suite (rank 0's evaluation subprocess, as under torchrun)."""
    out = tmp_path_factory.mktemp("ray") / "ckpt"
    with pytest.MonkeyPatch.context() as patch:  # toy_suites, for a module-scoped fixture
        patch.setenv("ASYNCVLA_SUITE_MODULES", "toy_suite")
        patch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        run(
            TrainConfig(
                dataset=str(data),
                out=str(out),
                steps=STEPS,
                batch_size=2,
                num_workers=2,
                strategy="fsdp",
                ray_address="local",
                eval_every=STEPS,
                eval_suite="toy",
                eval_args="--tasks 0 --max-steps 5 --video none --workers 0",
                **COMMON,
            )
        )
    return out


def test_two_fsdp_processes_on_ray_train_as_one_process_on_their_global_batch(one, on_ray):
    assert len(losses(on_ray)) == STEPS
    np.testing.assert_allclose(losses(on_ray), losses(one), rtol=1e-4)
    settings = read_training_record(on_ray)["stages"]["policy"]["settings"]
    assert (settings["strategy"], settings["num_workers"]) == ("fsdp", 2)
    assert (on_ray / "sharded_policy" / ".metadata").is_file()  # every process's shard, torch DCP
    curve = list(csv.DictReader(open(on_ray / "eval_curve.csv")))
    assert [(r["step"], r["status"]) for r in curve] == [(str(STEPS), "done")]
    # the same checkpoint layout; weights are not compared: AdamW turns the rounding noise of
    # gradients that are zero in exact arithmetic (the key projection's bias, which softmax ignores)
    # into steps of the size of the learning rate
    assert load_file(on_ray / "model.safetensors").keys() == load_file(one / "model.safetensors").keys()
    evaluation = {"sharded_policy", "eval_curve.csv", "eval_curve.png", "evals"}
    assert sorted(p.name for p in one.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in on_ray.iterdir() if not p.name.startswith(".") and p.name not in evaluation
    )


def test_the_merged_checkpoint_is_the_sharded_model(on_ray, data):
    """The checkpoint asyncvla-eval loads (merged on rank 0) against the shards read straight into an
    unsharded model: the same weights bit for bit, hence the same actions."""
    merged, tokenizer, stats = load_checkpoint(on_ray)
    from_shards, _, _ = load_checkpoint(on_ray)
    state = {"model": from_shards.state_dict()}
    for tensor in state["model"].values():
        tensor.zero_()  # whatever the merge wrote is gone: only the shards fill it
    dcp.load(state, checkpoint_id=str(on_ray / "sharded_policy"))
    from_shards.load_state_dict(state["model"])
    for (name, a), (_, b) in zip(merged.state_dict().items(), from_shards.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    samples = ChunkDataset(read_dataset(data)[0], merged.cfg.chunk_length)
    inputs, _, _ = collate(
        [samples[i] for i in (0, 5, 13)], Preprocessor(merged.cfg, tokenizer), stats, "cpu"
    )
    actions = [
        model.eval().sample_actions(inputs, [torch.Generator().manual_seed(i) for i in range(3)]).actions
        for model in (merged, from_shards)
    ]
    assert torch.equal(actions[0], actions[1])


def test_a_sharded_training_stopped_mid_run_resumes_to_the_uninterrupted_run(tmp_path, data, on_ray):
    """Ctrl-C a training on Ray Train after its first sharded save: exit 130 and the line saying how to
    resume (Ray Train's own handler aborted with exit 1 and no such line); the resume reads the shards
    (weights and AdamW states), the generator and the data position, and ends where the
    uninterrupted run ended."""
    out = tmp_path / "ckpt"
    args = [data, "--out", out, "--steps", STEPS, "--batch-size", 2, "--num-workers", 2, "--strategy", "fsdp"]
    args += ["--ray-address", "local"]
    args += ["--lr", 3e-3, "--vision-lr", 3e-3, "--threads", 1, "--save-every", 2]
    stopped = ctrl_c_after_first_save(args, out)
    assert stopped.returncode == 130, stopped.stderr
    last = error_lines(stopped.stderr)[-1]
    saved = int(last.split("the last save is of step ")[1].split(";")[0])
    assert saved < STEPS, last  # stopped mid-run, so the resume has steps to train
    resume = shlex.split(last.split("resume with: ")[1])
    done = train_cli(*resume[1:])
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(losses(out), losses(on_ray), rtol=1e-6)
    ours, theirs = load_file(out / "model.safetensors"), load_file(on_ray / "model.safetensors")
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-7, msg=key)


def test_the_rater_stage_sharded_on_two_processes_trains_as_one_process(tmp_path, data, one):
    """The rater stage on the 1-process policy: FSDP over the frozen backbone and the fp32 rater, the
    blocks' weights freed after each forward (ZeRO-3)."""
    outs = {}
    for name, workers, batch in (("one", 1, 4), ("fsdp", 2, 2)):
        outs[name] = tmp_path / name
        cfg = TrainConfig(
            dataset=str(data),
            out=str(outs[name]),
            stage="rater",
            init=str(one),
            steps=4,
            batch_size=batch,
            num_workers=workers,
            strategy="fsdp" if workers > 1 else None,
            fsdp_reshard_after_forward=workers > 1,  # ZeRO-3's path here, ZeRO-2's (the default) above
            lr=3e-3,
            threads=1,
        )
        run(cfg)
    np.testing.assert_allclose(losses(outs["fsdp"], "rater"), losses(outs["one"], "rater"), rtol=1e-4)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--backend", "nccl"], {}, "NCCL runs on CUDA devices only"),
        (["--num-workers", "3"], {"WORLD_SIZE": "2", "RANK": "0"}, "torchrun, which started 2 processes"),
        (["--ray-address", "local"], {"WORLD_SIZE": "2", "RANK": "0"}, "--ray-address under torchrun"),
        (["--strategy", "zero3"], {}, "invalid choice: 'zero3'"),
        (["--fsdp-reshard-after-forward"], {}, "add --strategy fsdp"),
        (["--backend", "gloo"], {}, "--backend gloo with one process"),
        (["--ray-address", "127.0.0.1:1"], {}, "no Ray cluster answers there"),
        (["--ray-address", "headnode"], {}, "expected HOST:PORT"),
    ],
)
def test_a_launch_that_cannot_work_is_one_line_before_any_process_group(
    tmp_path, data, capsys, monkeypatch, args, env, message
):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    refused_in_process([data, "--out", tmp_path / "ckpt", "--steps", 2, *args], capsys, message)
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "ckpt").exists()


def test_ddp_of_the_3b_on_a_gpu_too_small_for_a_full_copy_is_refused(monkeypatch):
    """A 48 GiB GPU cannot hold the 3B's fp32 weights, gradients and AdamW states (65 GB): DDP is
    refused with the figures and the fix; FSDP over two such GPUs fits."""

    class Props:
        total_memory = 48 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    with pytest.raises(ValueError, match=r"need 61 GiB per GPU .* 48 GiB; use --strategy fsdp"):
        sharding.check_fits("ddp", sharding.estimated_params("qwen2.5-vl-3b"), 2, "cuda")
    sharding.check_fits("fsdp", sharding.estimated_params("qwen2.5-vl-3b"), 2, "cuda")


def test_a_resume_with_another_strategy_or_world_size_is_refused_naming_both(tmp_path, data, capsys):
    """The shards of one strategy are not the state of another: a resume that changes --strategy
    or the number of processes is refused, naming the setting and both values."""
    out = tmp_path / "ckpt"
    rendezvous = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    environment = {key: os.environ.get(key) for key in rendezvous}
    base = [data, "--out", out, "--steps", 2, "--batch-size", 2, "--threads", 1]
    assert main([str(a) for a in base]) == 0
    refused_in_process(
        [*base, "--resume", "--strategy", "fsdp"], capsys, "--strategy 'ddp' saved, 'fsdp' now"
    )
    # and nothing of the refused FSDP process's group stays in this process (its environment was
    # read as a torchrun launch by the next call)
    assert not torch.distributed.is_initialized()
    assert {key: os.environ.get(key) for key in rendezvous} == environment
    refused_in_process([*base, "--resume", "--num-workers", 2], capsys, "--num-workers 1 saved, 2 now")


def test_a_ray_cluster_with_fewer_cpus_than_workers_is_refused_before_training(tmp_path, data):
    """A one-CPU cluster (`ray start --head --num-cpus 1`) cannot host two CPU workers: Ray Train
    would wait for them forever; the command says so in one line, exit 2, nothing written."""
    port = 6490 + os.getpid() % 100
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--num-cpus", "1", "--port", str(port),
         "--block", "--include-dashboard", "false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out = tmp_path / "ckpt"
        args = [data, "--out", out, "--steps", 2, "--num-workers", 2, "--ray-address", f"127.0.0.1:{port}"]
        deadline = time.monotonic() + 60
        while True:  # until the head answers (a refused connection is the other refusal)
            refused = train_cli(*args, env=env)
            if "no Ray cluster answers" not in refused.stderr or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert_refused(refused, "--num-workers 2", "has 1 CPU(s)", started=True)
        assert not out.exists()
    finally:
        head.terminate()
        head.wait(timeout=60)
