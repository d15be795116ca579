"""The fast inference path: `model.py`'s model and maths, run without per-step host work.

`AsyncVLA.sample_actions` is the readable reference: every suffix step goes through
transformers' text model (output capturing, deprecation wrappers, config look-ups), rebuilds
the positions, rotary embedding and attention mask, and grows then crops a `DynamicCache`. None
of that changes within a chunk, and on a GPU the host time it costs (about 1,500 kernel
launches a step) is most of the chunk. `FastSampler.sample_actions` computes the same chunk with:

- a static KV buffer per layer, (B, heads, P + L, head_dim): the prefix written once per chunk,
  already repeated for grouped-query attention (what `repeat_kv` would copy at every step), and
  the L action tokens' slot overwritten in place at every step;
- the suffix's rotary cos/sin, its additive attention mask and the sinusoids S(tau_k * m) of all
  Euler steps computed once per chunk;
- the decoder layers driven through their weights (`_decoder_layer`, the same operations in the
  same order as transformers' `Qwen2_5_VLDecoderLayer` with SDPA, so the CPU result is
  bit-identical; tests/test_fast.py holds it to that);
- on CUDA: the prefix's language-model pass and the whole chunk after it (SFM, rater, AFM)
  captured as CUDA graphs per (mode, batch bucket, prefix-length bucket) and replayed; a batch
  is padded to its bucket (1, 2, 4, 8, 16, then multiples of 16) with copies of its last row and
  the prefix left-padded to a multiple of 32 tokens, so that a handful of graphs serve any
  batch. Optionally (`fuse=True`) the decoder layer is compiled by `torch.compile` once per
  shape and reused by all layers, which fuses the small element-wise kernels.

Host synchronisations left in a chunk: on CUDA none between the prefix and the result (AFM
always runs; with no token masked it returns SFM's values unchanged, as the reference's early
return does); the vision tower and `get_rope_index` in `embed_prefix` stay eager (transformers'
vision path calls `tolist()`), and the result is copied to the host once. On CPU the reference's
"nothing masked, skip AFM" check is kept: there it costs nothing and saves ten steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from asyncvla import flow
from asyncvla.config import MODES
from asyncvla.model import AsyncVLA, ChunkResult, Prefix, additive_mask, make_attention_mask, time_sinusoid

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16)
PREFIX_MULTIPLE = 32  # CUDA only: prefix lengths are padded to a multiple of this (fewer graphs)


def batch_bucket(batch: int) -> int:
    """The smallest bucket that holds `batch` (multiples of 16 beyond 16)."""
    for b in BATCH_BUCKETS:
        if batch <= b:
            return b
    return -(-batch // 16) * 16


@dataclass
class LayerWeights:
    """One decoder layer's tensors, so that the layer runs as a plain function (and compiles once
    for all layers). q/k/v and gate/up are concatenated: one matrix product instead of three and
    two, with the same results (each output is the same dot product; tests/test_fast.py checks the
    whole chunk bit for bit). The cost is a second copy of those weights."""

    ln1: torch.Tensor
    w_qkv: torch.Tensor
    b_qkv: torch.Tensor
    wo: torch.Tensor
    ln2: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor

    @classmethod
    def of(cls, layer) -> LayerWeights:
        a, mlp = layer.self_attn, layer.mlp
        return cls(
            ln1=layer.input_layernorm.weight,
            w_qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
            b_qkv=torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
            wo=a.o_proj.weight,
            ln2=layer.post_attention_layernorm.weight,
            w_gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
            w_down=mlp.down_proj.weight,
        )


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Qwen2_5_VLRMSNorm's operations, in its order
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _decoder_layer(
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
    additive `mask` (B, 1, Q, K), returns (B, Q, d). cos / sin: (B, Q, 1, head_dim)."""
    B, Q, _ = x.shape
    heads, head_dim = keys.shape[1], keys.shape[3]
    kv_heads = (w.w_qkv.shape[0] // head_dim - heads) // 2
    h = _rms_norm(x, w.ln1, eps)
    qkv = F.linear(h, w.w_qkv, w.b_qkv).view(B, Q, heads + 2 * kv_heads, head_dim)
    # rotary embedding (apply_rotary_pos_emb with rotate_half) on q and k at once
    qk = qkv[:, :, : heads + kv_heads]
    half = head_dim // 2
    qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
    q = qk[:, :, :heads].transpose(1, 2)
    # the slot holds keys and values repeated for grouped-query attention, as repeat_kv makes them
    groups = heads // kv_heads
    slot = (B, kv_heads, groups, keys.shape[2], head_dim)
    keys.view(slot)[:, :, :, -Q:] = qk[:, :, heads:].transpose(1, 2)[:, :, None]
    values.view(slot)[:, :, :, -Q:] = qkv[:, :, heads + kv_heads :].transpose(1, 2)[:, :, None]
    o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=0.0, scale=head_dim**-0.5)
    x = x + F.linear(o.transpose(1, 2).reshape(B, Q, -1), w.wo)
    h = _rms_norm(x, w.ln2, eps)
    gate, up = F.linear(h, w.w_gate_up).chunk(2, dim=-1)
    # contiguous: SiLU on a strided view takes another code path, 1 ulp away from the reference's
    return x + F.linear(F.silu(gate.contiguous()) * up, w.w_down)


@dataclass
class ChunkState:
    """What a chunk's suffix steps share, built once per chunk."""

    keys: list[torch.Tensor]  # per layer (B, heads, P + L, head_dim)
    values: list[torch.Tensor]
    cos: torch.Tensor  # (B, L, 1, head_dim)
    sin: torch.Tensor
    mask: torch.Tensor  # (B, 1, L, P + L) additive


class FastSampler:
    """`AsyncVLA.sample_actions` without per-step host work (module docstring); same results.

    `graphs` (default: on CUDA) captures CUDA graphs; `fuse` compiles the decoder layer."""

    def __init__(self, model: AsyncVLA, graphs: bool | None = None, fuse: bool = False):
        self.model = model
        self.cfg = model.cfg
        lm = model.lm
        self.layers = [LayerWeights.of(layer) for layer in lm.layers]
        self.eps = lm.norm.variance_epsilon
        self.heads = lm.config.num_attention_heads
        self.head_dim = lm.config.hidden_size // self.heads
        taus = flow.time_grid(self.cfg.flow_steps)
        # python floats, as the reference passes them: the same float32 arithmetic, and constants
        # that a CUDA graph bakes in
        self.taus = [float(taus[k]) for k in range(self.cfg.flow_steps)]
        self.deltas = [float(taus[k] - taus[k + 1]) for k in range(self.cfg.flow_steps)]
        self.tau_column = torch.tensor(self.taus, device=model.device)[:, None, None]
        self.graphs_enabled = model.device.type == "cuda" if graphs is None else graphs
        if self.graphs_enabled and model.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.layer_fn = _decoder_layer
        if fuse:
            # one compiled function serves all layers: the weights are arguments, not constants
            # (a compile per shape: prefix and suffix of each bucket, more than dynamo's default 8)
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self.layer_fn = torch.compile(_decoder_layer, dynamic=False, fullgraph=True)
        self._graphs: dict[tuple, CapturedCall] = {}

    # -- the pieces, each the reference's maths ---------------------------------------------
    def _run_layers(self, x, keys, values, cos, sin, mask) -> torch.Tensor:
        for w, k, v in zip(self.layers, keys, values):
            x = self.layer_fn(x, w, k, v, cos, sin, mask, self.eps)
        return self.model.lm.norm(x)

    def encode_prefix(self, prefix: Prefix) -> tuple[list, list, torch.Tensor]:
        """The prefix's language-model pass into static buffers of P + L slots; hidden states."""
        m = self.model
        B, P, _ = prefix.embeds.shape
        L = self.cfg.chunk_length
        shape = (B, self.heads, P + L, self.head_dim)
        # zeros, not empty: a masked slot's weight is 0, and 0 * NaN would still be NaN
        keys = [torch.zeros(shape, dtype=m.dtype, device=m.device) for _ in self.layers]
        values = [torch.zeros(shape, dtype=m.dtype, device=m.device) for _ in self.layers]
        causal = make_attention_mask(prefix.valid, torch.ones(P, dtype=torch.bool, device=m.device))
        cos, sin = m.lm.rotary_emb(prefix.embeds, prefix.positions)
        hidden = self._run_layers(
            prefix.embeds,
            [k[:, :, :P] for k in keys],
            [v[:, :, :P] for v in values],
            cos[:, :, None],
            sin[:, :, None],
            additive_mask(causal, m.dtype),
        )
        return keys, values, hidden

    def chunk_state(self, prefix: Prefix, keys: list, values: list) -> ChunkState:
        allowed, positions, _ = self.model._suffix_layout(prefix, self.cfg.chunk_length)
        L = self.cfg.chunk_length
        probe = torch.empty(0, dtype=self.model.dtype, device=self.model.device)
        cos, sin = self.model.lm.rotary_emb(probe, positions)
        mask = additive_mask(allowed[:, -L:], self.model.dtype)
        return ChunkState(keys, values, cos[:, :, None], sin[:, :, None], mask)

    def integrate(self, state: ChunkState, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """`AsyncVLA.integrate` against the static buffers: Euler from tau = 1 to 0, masked tokens move."""
        model, cfg = self.model, self.cfg
        d = cfg.text.hidden_size
        steps = self.tau_column * m  # every step's tau_k * m at once: m is 0 or 1, so exactly
        sinusoids = time_sinusoid(steps, d, cfg.time_embed_min_period, cfg.time_embed_max_period)
        sinusoids = sinusoids.to(model.dtype)
        for k in range(cfg.flow_steps):
            x = model.time_mlp(torch.cat([sinusoids[k], model.action_in_proj(a.to(model.dtype))], dim=-1))
            x = self._run_layers(x, state.keys, state.values, state.cos, state.sin, state.mask)
            v = model.action_out_proj(x).float()
            a = flow.euler_step(a, v, self.deltas[k], m)
        return a

    def _after_prefix(self, state, hidden, valid, n_sfm, n_afm, u, mode, threshold, skip_empty_afm):
        """SFM -> rater -> AFM from an encoded prefix (Alg. 1), as `AsyncVLA.sample_actions`."""
        ones = torch.ones(n_sfm.shape[:2], device=n_sfm.device)
        sfm = self.integrate(state, n_sfm, ones)
        if mode == "sfm":
            return sfm, sfm, None, torch.zeros_like(ones)
        confidence = None
        if mode == "asyncvla":
            confidence = self.model.rater(hidden, valid, sfm)
            m = flow.rater_mask(confidence, threshold)  # T: a float, or a captured tensor
        else:
            m = (u < 0.5).float()
        if skip_empty_afm and not m.any():
            return sfm, sfm, confidence, m
        afm = self.integrate(state, flow.afm_start(sfm, n_afm, m), m)
        return afm, sfm, confidence, m

    # -- the whole chunk ----------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(
        self,
        inputs,
        generators: list[torch.Generator],
        mode: str = "asyncvla",
        threshold: float | None = None,
    ) -> ChunkResult:
        if mode not in MODES:
            raise ValueError(f"unknown inference mode {mode!r}; expected one of {MODES}")
        threshold = self.cfg.threshold if threshold is None else threshold
        n_sfm, n_afm, u = self.model._draw_noise(generators)
        prefix = self.model.embed_prefix(inputs)
        if self.graphs_enabled:
            return self._sample_with_graphs(prefix, n_sfm, n_afm, u, mode, threshold)
        return self._sample_without_graphs(prefix, n_sfm, n_afm, u, mode, threshold, skip_empty_afm=True)

    def _sample_without_graphs(self, prefix, n_sfm, n_afm, u, mode, threshold, skip_empty_afm):
        keys, values, hidden = self.encode_prefix(prefix)
        state = self.chunk_state(prefix, keys, values)
        actions, sfm, confidence, m = self._after_prefix(
            state, hidden, prefix.valid, n_sfm, n_afm, u, mode, threshold, skip_empty_afm
        )
        return ChunkResult(actions=actions, sfm=sfm, confidence=confidence, mask=m)

    def _sample_with_graphs(self, prefix, n_sfm, n_afm, u, mode, threshold) -> ChunkResult:
        B = prefix.embeds.shape[0]
        padded = pad_prefix(prefix, batch_bucket(B), _round_up(prefix.embeds.shape[1], PREFIX_MULTIPLE))
        rows = padded.embeds.shape[0]
        inputs = (
            *_prefix_tensors(padded),
            _pad_rows(n_sfm, rows),
            _pad_rows(n_afm, rows),
            _pad_rows(u, rows),
            torch.full((), threshold, device=u.device),
        )
        key = ("chunk", mode, *padded.embeds.shape[:2])
        if self._graphs.get(key, True) is None:  # its capture failed: run op by op
            return self._sample_without_graphs(prefix, n_sfm, n_afm, u, mode, threshold, skip_empty_afm=False)
        if key not in self._graphs:

            def chunk(embeds, valid, positions, next_position, n_sfm, n_afm, u, threshold):
                prefix = Prefix(embeds, valid, positions, next_position)
                keys, values, hidden = self.encode_prefix(prefix)
                state = self.chunk_state(prefix, keys, values)
                return self._after_prefix(state, hidden, valid, n_sfm, n_afm, u, mode, threshold, False)

            try:
                self._graphs[key] = CapturedCall(chunk, inputs)
            except RuntimeError as e:  # an op that cannot be captured: slower, not wrong
                log.warning("CUDA graph capture failed (%s); this shape runs without graphs", e)
                self._graphs[key] = None
                return self._sample_without_graphs(prefix, n_sfm, n_afm, u, mode, threshold, False)
        out = self._graphs[key](*inputs)
        actions, sfm, confidence, m = (None if t is None else t[:B].clone() for t in out)
        return ChunkResult(actions=actions, sfm=sfm, confidence=confidence, mask=m)

    # -- the paper-style pipeline (Appendix B) with the same optimisations, for comparison ----
    def full_velocity(self, prefix: Prefix, a: torch.Tensor, tau_m: torch.Tensor) -> torch.Tensor:
        """`AsyncVLA.full_velocity`: one uncached pass over prefix + suffix through the same layers."""
        model, L = self.model, self.cfg.chunk_length
        B, P, _ = prefix.embeds.shape
        allowed, positions, _ = model._suffix_layout(prefix, L)
        positions = torch.cat([prefix.positions, positions], dim=2)
        x = torch.cat([prefix.embeds, model.embed_suffix(a, tau_m)], dim=1)
        cos, sin = model.lm.rotary_emb(x, positions)
        shape = (B, self.heads, P + L, self.head_dim)
        keys = [torch.zeros(shape, dtype=model.dtype, device=model.device) for _ in self.layers]
        values = [torch.zeros(shape, dtype=model.dtype, device=model.device) for _ in self.layers]
        x = self._run_layers(
            x, keys, values, cos[:, :, None], sin[:, :, None], additive_mask(allowed, model.dtype)
        )
        return model.action_out_proj(x[:, -L:]).float()

    @torch.no_grad()
    def sample_actions_recompute(self, inputs, generators: list[torch.Generator]) -> torch.Tensor:
        """Paper-style SFM: the prefix, vision included, recomputed at every Euler step; on CUDA the
        language-model pass of each step replays a CUDA graph, as in `sample_actions`."""
        n_sfm, _, _ = self.model._draw_noise(generators)
        a, ones = n_sfm, torch.ones(n_sfm.shape[:2], device=n_sfm.device)
        for k in range(self.cfg.flow_steps):
            prefix = self.model.embed_prefix(inputs)
            tau_m = self.taus[k] * ones
            if self.graphs_enabled:
                key = ("recompute", *prefix.embeds.shape[:2])
                args = (*_prefix_tensors(prefix), a, tau_m)
                if key not in self._graphs:
                    self._graphs[key] = CapturedCall(
                        lambda e, va, p, n, a, t: self.full_velocity(Prefix(e, va, p, n), a, t), args
                    )
                v = self._graphs[key](*args)
            else:
                v = self.full_velocity(prefix, a, tau_m)
            a = flow.euler_step(a, v, self.deltas[k], ones)
        return a


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _prefix_tensors(prefix: Prefix) -> tuple[torch.Tensor, ...]:
    return prefix.embeds, prefix.valid, prefix.positions, prefix.next_position


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Fill a batch up to `rows` with copies of its last row (the copies' results are dropped)."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])


def pad_prefix(prefix: Prefix, batch: int, length: int) -> Prefix:
    """A prefix padded to `batch` rows (copies of the last) and left-padded to `length` tokens.

    Left padding is what the preprocessor already does for prompts of different lengths: padded
    tokens are invalid, no valid token attends to them, and they see only themselves."""
    extra = length - prefix.embeds.shape[1]
    positions = F.pad(prefix.positions, (extra, 0), value=1)
    return Prefix(
        embeds=_pad_rows(F.pad(prefix.embeds, (0, 0, extra, 0)), batch),
        valid=_pad_rows(F.pad(prefix.valid, (extra, 0), value=False), batch),
        positions=_pad_rows(positions.transpose(0, 1), batch).transpose(0, 1).contiguous(),
        next_position=_pad_rows(prefix.next_position, batch),
    )


class CapturedCall:
    """`fn(*tensors)` captured once as a CUDA graph. A call copies its tensors into the captured
    inputs, replays the graph and returns the captured outputs (valid until the next call)."""

    def __init__(self, fn, example_inputs: tuple[torch.Tensor, ...]):
        self.inputs = tuple(t.clone() for t in example_inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the capture: lazy inits, kernel choices
            for _ in range(2):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)
        log.info("captured a CUDA graph for inputs of shapes %s", [tuple(t.shape) for t in self.inputs])

    def __call__(self, *inputs: torch.Tensor):
        for captured, new in zip(self.inputs, inputs):
            captured.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.outputs
