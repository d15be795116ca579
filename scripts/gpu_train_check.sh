#!/usr/bin/env bash
# Issue 41's GPU measurement in one run (under 8 minutes on one H200): the 3B's training
# throughput (scripts/bench_train.py) with FSDP and DDP, with and without activation
# checkpointing, at the largest batch that fits, on every GPU of the machine (one process each).
# Writes results/bench/train_throughput_qwen2.5-vl-3b_cuda.{json,md} (commit and GPU named).
# Without a GPU, or on a tree that is not a commit, it stops at once with exit 2 and says why
# (scripts/gpu_prelude.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
script=scripts/gpu_train_check.sh
. scripts/gpu_prelude.sh
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu_train.txt"
timeout 420 python3 scripts/bench_train.py --size qwen2.5-vl-3b --device cuda --workers "$gpus" \
  --strategies fsdp ddp --activation-checkpointing on off --find-max-batch --batch-sizes 4 \
  --steps 6 --warmup 2 --out "$out"
