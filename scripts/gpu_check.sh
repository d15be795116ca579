#!/usr/bin/env bash
# The fast inference path's GPU work in one run (under 8 minutes on one H200): the CUDA tests of
# tests/test_fast.py, then the 3B benchmark (scripts/bench_model.py) into $OUT (default
# results/bench). Without a GPU it stops at once with exit 2 and says why.
# On the lent GPU machine (torch and an older transformers installed, no network) the transformers
# wheel the project needs travels in the git-ignored .whl/ (docs/model.md, "Fast inference").
# Results name the commit they were measured at (evalsuite/tree_state.py): the script refuses
# (exit 2) to run on a tree whose tracked files differ from a commit. The GPU machine's copy has no
# .git: run `python -m evalsuite.tree_state --stamp` here first, which writes .tree_stamp.json (the
# commit and its files' hashes; untracked, so it travels with the tree). GPU_CHECK_ALLOW_DIRTY=1
# runs anyway, to try things out: the output then says it is not for committing.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/bench}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
if ! why=$(python3 -m evalsuite.tree_state --require-clean 2>&1 >/dev/null); then
  if [ "${GPU_CHECK_ALLOW_DIRTY:-}" != 1 ]; then
    echo "scripts/gpu_check.sh: refusing to write results: $why" >&2
    exit 2
  fi
  mkdir -p "$out"
  echo "GPU_CHECK_ALLOW_DIRTY=1, not for committing: $why" | tee "$out/NOT_FOR_COMMIT.txt"
fi
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
python3 -c "import torch, sys; torch.cuda.is_available() or sys.exit('scripts/gpu_check.sh: no CUDA GPU here; run it on a GPU machine')" || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_fast.py -k cuda 2>&1 | tee "$out/gpu_tests.txt"
tests=${PIPESTATUS[0]}
timeout 330 python3 scripts/bench_model.py --size qwen2.5-vl-3b --device cuda --dtype bfloat16 \
  --batch-sizes 1 16 --repeats 5 --warmup 2 --fuse --profile --out "$out"
bench=$?
exit $((tests != 0 ? tests : bench))
