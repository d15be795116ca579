"""AsyncVLA: asynchronous flow matching VLA (model, training, checkpoints). Never imports envs/evalsuite."""

from pathlib import Path

from asyncvla.config import ModelConfig
from asyncvla.policy import AsyncVLAPolicy, load

__all__ = ["AsyncVLAPolicy", "ModelConfig", "demo_checkpoint", "load"]


def demo_checkpoint() -> Path:
    """The shipped tabletop demo checkpoint (tiny config, policy + rater); `--ckpt demo` resolves here.

    Made by scripts/reproduce_tabletop.py; asyncvla/demo/manifest.json has the command, the data
    hash and the loss curves.
    """
    path = Path(__file__).resolve().parent / "demo"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the demo checkpoint is missing from {path}; reinstall the package (pip install -e .) "
            "or make it with `python scripts/reproduce_tabletop.py --stages record,demo`"
        )
    return path
