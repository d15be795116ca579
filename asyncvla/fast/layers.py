"""One Qwen2.5-VL decoder layer as a plain function of its weights, against static KV buffers.

A plain function (the weights are arguments, not module state) compiles once for all layers and
captures in a CUDA graph; it runs transformers' `Qwen2_5_VLDecoderLayer` operations with SDPA in
the same order, so that on CPU the result is bit-identical (tests/test_fast.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LayerWeights:
    """One decoder layer's tensors. Matrices are held transposed, (in, out), as `linear` takes them.
    q/k/v and gate/up are concatenated: one matrix product instead of three and two, with the same
    results (each output is the same dot product). The cost is a second copy of those weights."""

    ln1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor
    o: torch.Tensor
    ln2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor

    @classmethod
    def of(cls, layer) -> LayerWeights:
        a, mlp = layer.self_attn, layer.mlp
        return cls(
            ln1=layer.input_layernorm.weight,
            qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t(),
            qkv_bias=torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
            o=a.o_proj.weight.t(),
            ln2=layer.post_attention_layernorm.weight,
            gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t(),
            down=mlp.down_proj.weight.t(),
        )


def linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight_t.t(), bias)` for a contiguous x: the matrix product F.linear makes,
    without its and matmul's dispatch layers (on CPU a tiny model's time is mostly dispatch)."""
    rows = x.view(-1, x.shape[-1])
    y = torch.mm(rows, weight_t) if bias is None else torch.addmm(bias, rows, weight_t)
    return y.view(*x.shape[:-1], weight_t.shape[1])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Qwen2_5_VLRMSNorm's operations, in its order
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Q, head_dim) cos/sin -> what `decoder_layer` takes: (B, Q, 1, head_dim), and sin with
    its first half negated, so that rotate_half(x) * sin = x.roll(half) * signed_sin exactly (a
    sign flip is exact) in two operations fewer per layer."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos[:, :, None], signed[:, :, None]


def decoder_layer(
    x: torch.Tensor,
    w: LayerWeights,
    keys: torch.Tensor,
    values: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """One Qwen2.5-VL decoder layer (transformers' operations with SDPA) for Q query tokens that
    occupy the last Q slots of `keys` / `values` ((B, heads, K, head_dim), the earlier slots
    already filled): writes their keys and values there, attends over all K slots with the
    additive `mask` (B, 1, Q, K), returns (B, Q, d). cos / sin: from `rotary_tables`."""
    B, Q, _ = x.shape
    heads, K, head_dim = keys.shape[1:]
    kv_heads = (w.qkv.shape[1] // head_dim - heads) // 2
    h = rms_norm(x, w.ln1, eps)
    qkv = linear(h, w.qkv, w.qkv_bias).view(B, Q, heads + 2 * kv_heads, head_dim)
    # rotary embedding (apply_rotary_pos_emb with rotate_half) on q and k at once
    qk = qkv.narrow(2, 0, heads + kv_heads)
    qk = qk * cos + qk.roll(head_dim // 2, dims=-1) * sin
    q = qk.narrow(2, 0, heads).transpose(1, 2)
    # the slots hold keys and values repeated for grouped-query attention, as repeat_kv makes them
    # (views made here, not passed in: a compiled function's inputs should not alias each other)
    slots = (B, kv_heads, heads // kv_heads, K, head_dim)
    keys.view(slots).narrow(3, K - Q, Q).copy_(qk.narrow(2, heads, kv_heads).transpose(1, 2).unsqueeze(2))
    values.view(slots).narrow(3, K - Q, Q).copy_(
        qkv.narrow(2, heads + kv_heads, kv_heads).transpose(1, 2).unsqueeze(2)
    )
    o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=0.0, scale=head_dim**-0.5)
    x = x + linear(o.transpose(1, 2).reshape(B, Q, -1), w.o)
    h = rms_norm(x, w.ln2, eps)
    gate, up = linear(h, w.gate_up).chunk(2, dim=-1)
    # contiguous: SiLU on a strided view takes another code path, 1 ulp away from the reference's
    return x + linear(F.silu(gate.contiguous()) * up, w.down)
