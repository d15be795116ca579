# Sourced by the GPU scripts (scripts/gpu_check.sh, scripts/gpu_train_check.sh) after `cd` to the
# repository root, with $script naming the caller: sets $out (default results/bench) and
# PYTHONPATH, refuses a tree that is not a commit, installs the carried wheels, needs a CUDA GPU.
# Results name the commit they were measured at (evalsuite/tree_state.py): a tree whose tracked
# files differ from a commit is refused (exit 2). The GPU machine's copy has no .git: run
# `python -m evalsuite.tree_state --stamp` here first, which writes .tree_stamp.json (the commit
# and its files' hashes; untracked, so it travels with the tree). GPU_CHECK_ALLOW_DIRTY=1 runs
# anyway, to try things out: the output then says it is not for committing.
# On the lent GPU machine (torch and an older transformers installed, no network) the transformers
# wheel the project needs travels in the git-ignored .whl/ (docs/model.md, "Fast inference").
out="${OUT:-results/bench}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
if ! why=$(python3 -m evalsuite.tree_state --require-clean 2>&1 >/dev/null); then
  if [ "${GPU_CHECK_ALLOW_DIRTY:-}" != 1 ]; then
    echo "$script: refusing to write results: $why" >&2
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
python3 -c "import torch, sys; torch.cuda.is_available() or sys.exit('$script: no CUDA GPU here; run it on a GPU machine')" || exit 2
