"""Qwen2.5-VL's vision tower with its host work done once per image grid.

transformers' `get_image_features` derives the window order, the rotary tables and the segment
lengths from the image grid at every call (with `tolist()`, a host synchronisation). An episode
sends images of one size at every chunk, so `plan_vision` derives them once per grid and
`run_vision` runs the tower from the plan alone: the same operations, capturable in a CUDA graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import (
    get_vision_attention_seqlens,
    get_vision_position_ids,
    get_vision_window_index,
)


@dataclass
class VisionPlan:
    """The vision tower's per-grid host work: window order, rotary tables, segment lengths."""

    window_index: torch.Tensor
    reverse_index: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    full: tuple[int, ...]  # patches per image (full-attention blocks)
    windows: tuple[int, ...]  # patches per window (windowed blocks)
    key: tuple  # the grid it was made for


def plan_vision(visual, grid: torch.Tensor, device: torch.device) -> VisionPlan:
    """What the vision tower's forward derives from the image grid (cameras x (t, h, w)) alone."""
    position_ids = get_vision_position_ids(grid, visual.spatial_merge_size)
    cu_seqlens, _ = get_vision_attention_seqlens(grid, visual.config)
    window_index, cu_windows = get_vision_window_index(
        grid,
        spatial_merge_size=visual.spatial_merge_size,
        window_size=visual.window_size,
        patch_size=visual.patch_size,
    )
    window_index, seq_len = window_index.to(device), position_ids.shape[0]
    cos, sin = visual.rotary_pos_emb(window_index, position_ids.to(device))
    return VisionPlan(
        window_index=window_index,
        reverse_index=torch.argsort(window_index),
        cos=visual.permute_input_for_window_attn(cos, window_index, seq_len=seq_len),
        sin=visual.permute_input_for_window_attn(sin, window_index, seq_len=seq_len),
        full=tuple(cu_seqlens.diff().tolist()),
        windows=tuple(cu_windows.diff().tolist()),
        key=tuple(grid.flatten().tolist()),
    )


def run_vision(visual, pixel_values: torch.Tensor, plan: VisionPlan) -> torch.Tensor:
    """`get_image_features` (images concatenated) from a plan: merged patch features, in order."""
    x = visual.patch_embed(pixel_values.type(visual.dtype))
    x = visual.permute_input_for_window_attn(x, plan.window_index, seq_len=x.shape[0])
    for i, block in enumerate(visual.blocks):
        lengths = plan.full if i in visual.fullatt_block_indexes else plan.windows
        x = x + _attention(block.attn, block.norm1(x), plan.cos, plan.sin, lengths)
        x = x + block.mlp(block.norm2(x))
    return visual.merger(x)[plan.reverse_index]


def _attention(attn, h: torch.Tensor, cos, sin, lengths: tuple[int, ...]) -> torch.Tensor:
    """Qwen2_5_VLVisionAttention with SDPA over segments of `lengths` patches. Equal segments (every
    image, or every window of same-size images) run as one batched call instead of one call each."""
    S = h.shape[0]
    q, k, v = attn.qkv(h).reshape(S, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    if len(set(lengths)) == 1:
        n = len(lengths)
        q, k, v = (t.view(n, lengths[0], attn.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling).transpose(1, 2)
    else:
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o = torch.cat(
            [
                F.scaled_dot_product_attention(qi, ki, vi, scale=attn.scaling).transpose(1, 2)
                for qi, ki, vi in zip(*(t.split(lengths, dim=2) for t in (q, k, v)))
            ],
            dim=1,
        )
    return attn.proj(o.reshape(S, -1).contiguous())
