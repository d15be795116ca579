#!/usr/bin/env bash
# Set up a virtualenv in .venv with the project, its test tools, the LIBERO simulator and ManiSkill3.
#   scripts/setup.sh            # CPU machine
# System packages for headless MuJoCo rendering (Mesa EGL / OSMesa) are installed when apt is usable.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  pkgs="libegl1 libosmesa6 libgl1 chromium"  # chromium: headless screenshot test of the nightly report
  if ! dpkg -s $pkgs >/dev/null 2>&1; then
    apt-get install -y -q $pkgs >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $pkgs >/dev/null; }
  fi
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: a CPU build where one is available (never torchvision: see README).
python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.4"
python -m pip install -q -e ".[test,libero,maniskill3]"
echo "set up: $(python -c 'import torch, transformers, mujoco, ray; print("torch", torch.__version__, "transformers", transformers.__version__, "mujoco", mujoco.__version__, "ray", ray.__version__)')"
