"""AsyncVLA configuration: one dataclass, two named sizes (`tiny`, `qwen2.5-vl-3b`).

The config is everything needed to rebuild the network with random weights; it is saved as
`config.json` in every checkpoint. `backbone_config()` turns it into the `Qwen2_5_VLConfig`
that transformers builds, so the two named sizes differ only in numbers, never in code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PROMPT = "You are a helpful physical assistant."

# Qwen2.5-VL special token ids: the real vocabulary's, or the tiny tokenizer's (backbone.py
# builds that tokenizer so that these names exist; ids are read from it, not assumed).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# rater-resample (issue 42, not the paper's): the rater's tokens replaced by a fresh SFM draw's, no AFM
MODES = ("asyncvla", "sfm", "random-mask", "rater-resample")
OBJECTIVES = ("unified", "sfm")


@dataclass
class TextConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    mrope_section: list[int]
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True


@dataclass
class VisionConfig:
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    fullatt_block_indexes: list[int]
    window_size: int = 112
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    tokens_per_second: int = 2


@dataclass
class RaterConfig:
    num_layers: int = 4  # paper A.3: 4 transformer layers
    num_heads: int = 32  # paper A.3: 32 heads
    ffn_size: int = 6144  # paper A.3: feed-forward width 6144
    # The rater's width; None = the language model's. The paper gives 4 layers, 32 heads, FFN 6144
    # and 308M parameters but no width: at the LM's 2,048 that is 168M, while a 3,072-wide rater
    # with a 2,048 -> 3,072 input projection comes to 308.3M, the one reading that fits every
    # number given (docs/model.md, "The rater's size"). The 3B configuration uses it.
    hidden_size: int | None = None


@dataclass
class ModelConfig:
    """The whole model. Sizes come from `ModelConfig.named(size)`; fields can then be overridden."""

    size: str
    text: TextConfig
    vision: VisionConfig
    rater: RaterConfig
    chunk_length: int = 8  # L, action tokens per chunk
    action_dim: int = 7
    state_dim: int = 8
    cameras: list[str] = field(default_factory=lambda: ["agentview", "wrist"])
    image_size: int = 56  # square images, a multiple of patch x merge (28)
    flow_steps: int = 10  # paper A.2: 10 Euler steps for SFM and AFM
    threshold: float = 0.5  # T in Eq. (3)
    time_embed_min_period: float = 4e-3  # sinusoid periods as in openpi's pi0
    time_embed_max_period: float = 4.0
    backbone_dir: str | None = None  # local Qwen2.5-VL directory with weights (qwen2.5-vl-3b)

    @classmethod
    def named(cls, size: str, **overrides: Any) -> ModelConfig:
        if size not in _SIZES:
            raise ValueError(f"unknown model size {size!r}; expected one of {sorted(_SIZES)}")
        cfg = _SIZES[size]()
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise ValueError(f"unknown ModelConfig field {key!r}")
            setattr(cfg, key, value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        t, v = self.text, self.vision
        head_dim = t.hidden_size // t.num_heads
        if sum(t.mrope_section) * 2 != head_dim:
            raise ValueError(f"mrope_section {t.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
        grid = v.patch_size * v.spatial_merge_size
        if self.image_size % grid:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {grid} (patch x merge)")
        if v.window_size % grid:
            raise ValueError(f"vision window_size {v.window_size} must be a multiple of {grid}")
        if any(i >= v.depth for i in v.fullatt_block_indexes):
            raise ValueError(
                f"fullatt_block_indexes {v.fullatt_block_indexes} must be < vision depth {v.depth}"
            )
        rater_width = self.rater.hidden_size or t.hidden_size
        if rater_width % self.rater.num_heads:
            raise ValueError(f"rater heads {self.rater.num_heads} must divide its width {rater_width}")
        if self.chunk_length < 1 or self.action_dim < 1 or self.state_dim < 1:
            raise ValueError("chunk_length, action_dim and state_dim must be positive")
        if not self.cameras:
            raise ValueError("the model needs at least one camera")

    @property
    def image_tokens_per_camera(self) -> int:
        side = self.image_size // (self.vision.patch_size * self.vision.spatial_merge_size)
        return side * side

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["text"] = TextConfig(**data["text"])
        data["vision"] = VisionConfig(**data["vision"])
        data["rater"] = RaterConfig(**data["rater"])
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def backbone_config(self, token_ids: dict[str, int]):
        """The transformers `Qwen2_5_VLConfig` for this size; token ids come from the tokenizer."""
        from transformers import Qwen2_5_VLConfig

        t, v = self.text, self.vision
        return Qwen2_5_VLConfig(
            text_config={
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "num_hidden_layers": t.num_layers,
                "num_attention_heads": t.num_heads,
                "num_key_value_heads": t.num_kv_heads,
                "intermediate_size": t.intermediate_size,
                "max_position_embeddings": t.max_position_embeddings,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": t.rope_theta,
                    "mrope_section": list(t.mrope_section),
                },
                "tie_word_embeddings": t.tie_word_embeddings,
                "bos_token_id": token_ids["<|endoftext|>"],
                "eos_token_id": token_ids["<|im_end|>"],
                "pad_token_id": token_ids["<|endoftext|>"],
            },
            vision_config={
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "num_heads": v.num_heads,
                "intermediate_size": v.intermediate_size,
                "out_hidden_size": t.hidden_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "window_size": v.window_size,
                "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "temporal_patch_size": v.temporal_patch_size,
                "tokens_per_second": v.tokens_per_second,
            },
            image_token_id=token_ids["<|image_pad|>"],
            video_token_id=token_ids["<|video_pad|>"],
            vision_start_token_id=token_ids["<|vision_start|>"],
            vision_end_token_id=token_ids["<|vision_end|>"],
            tie_word_embeddings=t.tie_word_embeddings,
        )


def _tiny() -> ModelConfig:
    # Small enough to train a demo checkpoint on 2 CPU cores: 2 text layers, hidden 128,
    # a 2-block vision tower, 56x56 images (4 tokens per camera after the 2x2 merge).
    return ModelConfig(
        size="tiny",
        text=TextConfig(
            vocab_size=512,  # the tiny byte-level BPE (backbone.build_tiny_tokenizer)
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=256,
            mrope_section=[4, 6, 6],  # sums to head_dim / 2 = 16
            max_position_embeddings=2048,
        ),
        vision=VisionConfig(
            depth=2,
            hidden_size=64,
            num_heads=2,
            intermediate_size=128,
            fullatt_block_indexes=[1],
            window_size=56,
        ),
        rater=RaterConfig(num_layers=2, num_heads=4, ffn_size=256),
    )


def _qwen25_vl_3b() -> ModelConfig:
    # Qwen2.5-VL-3B-Instruct's config.json, and the paper's rater (A.3).
    return ModelConfig(
        size="qwen2.5-vl-3b",
        text=TextConfig(
            vocab_size=151936,
            hidden_size=2048,
            num_layers=36,
            num_heads=16,
            num_kv_heads=2,
            intermediate_size=11008,
            mrope_section=[16, 24, 24],
            max_position_embeddings=128000,
        ),
        vision=VisionConfig(
            depth=32,
            hidden_size=1280,
            num_heads=16,
            intermediate_size=3420,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
        ),
        rater=RaterConfig(num_layers=4, num_heads=32, ffn_size=6144, hidden_size=3072),
        image_size=224,
    )


_SIZES = {"tiny": _tiny, "qwen2.5-vl-3b": _qwen25_vl_3b}
