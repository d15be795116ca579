#!/usr/bin/env bash
# The fast inference path's GPU work in one run (under 8 minutes on one H200): the CUDA tests of
# tests/test_fast.py, then the 3B benchmark (scripts/bench_model.py) into $OUT (default
# results/bench). Without a GPU, or on a tree that is not a commit, it stops at once with exit 2
# and says why (scripts/gpu_prelude.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
script=scripts/gpu_check.sh
. scripts/gpu_prelude.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_fast.py -k cuda 2>&1 | tee "$out/gpu_tests.txt"
tests=${PIPESTATUS[0]}
timeout 330 python3 scripts/bench_model.py --size qwen2.5-vl-3b --device cuda --dtype bfloat16 \
  --batch-sizes 1 16 --repeats 5 --warmup 2 --fuse --profile --out "$out"
bench=$?
exit $((tests != 0 ? tests : bench))
