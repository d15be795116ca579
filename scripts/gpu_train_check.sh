#!/usr/bin/env bash
# Issue 41's GPU measurement in one run (under 8 minutes on one H200): the 3B's training
# throughput (scripts/bench_train.py) with FSDP, with and without activation checkpointing, at the
# largest batch that fits, and DDP beside it; on two GPUs the same with 2 processes. Writes
# results/bench/train_throughput_qwen2.5-vl-3b_cuda.{json,md} (commit and GPU named). Without a GPU
# it stops at once with exit 2 and says why. The transformers wheel the project needs travels in
# the git-ignored .whl/ as for scripts/gpu_check.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/bench}"
mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
python3 -c "import torch, sys; torch.cuda.is_available() or sys.exit('scripts/gpu_train_check.sh: no CUDA GPU here; run it on a GPU machine')" || exit 2
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu_train.txt"
timeout 420 python3 scripts/bench_train.py --size qwen2.5-vl-3b --device cuda --workers "$gpus" \
  --strategies fsdp ddp --activation-checkpointing on off --find-max-batch --batch-sizes 4 \
  --steps 6 --warmup 2 --out "$out"
