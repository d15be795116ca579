"""AsyncVLA: asynchronous flow matching VLA (model, training, checkpoints). Never imports envs/evalsuite."""

from asyncvla.config import ModelConfig
from asyncvla.policy import AsyncVLAPolicy, load

__all__ = ["AsyncVLAPolicy", "ModelConfig", "load"]
