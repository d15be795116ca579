"""Fake `mani_skill2_real2sim` (see ../README.md): ASSET_DIR resolved as the real package does."""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent.resolve()
ASSET_DIR = Path(os.getenv("MS2_REAL2SIM_ASSET_DIR", "data"))
