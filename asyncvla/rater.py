"""The confidence rater (paper Sec. 3.2, A.3): how far to trust each SFM action token.

Transformer layers with full attention over the VL tokens' hidden states (from the prefix
pass whose KV-cache the flow reuses, so the VLM is not run again) and the linearly
projected SFM actions; a linear rate head and a sigmoid give p_l in (0, 1) per action token.
"""

from __future__ import annotations

import torch
from torch import nn

from asyncvla.config import ModelConfig


class ConfidenceRater(nn.Module):
    """Runs in float32 whatever the model's dtype: p near the threshold T must not flip between a
    bf16 evaluation and the fp32 weights it was trained with."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_lm = cfg.text.hidden_size
        d = cfg.rater.hidden_size or d_lm
        self.vl_norm = nn.LayerNorm(d_lm)
        self.vl_proj = nn.Linear(d_lm, d) if d != d_lm else nn.Identity()
        self.action_proj = nn.Linear(cfg.action_dim, d)
        # which slot of the chunk a token is: full attention alone is order-blind
        self.action_pos = nn.Parameter(torch.zeros(cfg.chunk_length, d))
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=cfg.rater.num_heads,
            dim_feedforward=cfg.rater.ffn_size,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, cfg.rater.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.rate_head = nn.Linear(d, 1)

    def forward(self, vl_hidden: torch.Tensor, vl_valid: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """vl_hidden (B, P, d_lm), vl_valid (B, P) bool, actions (B, L, A) normalised -> p (B, L), float32.

        Autocast is off in here: under training's bf16 autocast (CUDA) the rater would otherwise
        run its matrix products in bf16 although its weights and inputs are float32."""
        with torch.autocast(vl_hidden.device.type, enabled=False):
            dtype = self.action_proj.weight.dtype
            act = self.action_proj(actions.to(dtype)) + self.action_pos
            x = torch.cat([self.vl_proj(self.vl_norm(vl_hidden.to(dtype))), act], dim=1)
            pad = torch.cat(
                [~vl_valid, torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)], dim=1
            )
            h = self.layers(x, src_key_padding_mask=pad)
            logits = self.rate_head(self.norm(h[:, -actions.shape[1] :])).squeeze(-1).float()
            # the sigmoid one sample at a time: on CPU a sample alone falls in the scalar tail of
            # the vectorised loop and a batch in its vector body, which round exp() differently,
            # and a chunk must not depend on what it was batched with (asyncvla/policy.py)
            return torch.cat([torch.sigmoid(row) for row in logits.split(1)])
