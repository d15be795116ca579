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
  batch; and (`fuse`, on by default with graphs) the decoder layer compiled by `torch.compile`
  once per shape and reused by all 36 layers, which fuses the small element-wise kernels (about
  10 s of compiling per batch bucket, against tens of milliseconds saved on every chunk: see
  results/bench/model_latency_qwen2.5-vl-3b_cuda.md). A compile that fails falls back to the
  uncompiled layer, and a capture that fails to running op by op, each with a warning.

Host synchronisations left in a chunk: on CUDA none between the prefix and the result (AFM
always runs; with no token masked it returns SFM's values unchanged, as the reference's early
return does); the vision tower and `get_rope_index` in `embed_prefix` stay eager (transformers'
vision path calls `tolist()`), and the result is copied to the host once. On CPU the reference's
"nothing masked, skip AFM" check is kept: there it costs nothing and saves ten steps.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import (
    get_vision_attention_seqlens,
    get_vision_position_ids,
    get_vision_window_index,
)

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
    for all layers). Matrices are held transposed, (in, out), as `_linear` takes them. q/k/v and
    gate/up are concatenated: one matrix product instead of three and two, with the same results
    (each output is the same dot product; tests/test_fast.py checks the whole chunk bit for bit).
    The cost is a second copy of those weights."""

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


def _linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight_t.t(), bias)` for a contiguous x: the matrix product F.linear makes,
    without its and matmul's dispatch layers (on CPU a tiny model's time is mostly dispatch)."""
    rows = x.view(-1, x.shape[-1])
    y = torch.mm(rows, weight_t) if bias is None else torch.addmm(bias, rows, weight_t)
    return y.view(*x.shape[:-1], weight_t.shape[1])


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Qwen2_5_VLRMSNorm's operations, in its order
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Q, head_dim) cos/sin -> what `_decoder_layer` takes: (B, Q, 1, head_dim), and sin with
    its first half negated, so that rotate_half(x) * sin = x.roll(half) * signed_sin exactly (a
    sign flip is exact) in two operations fewer per layer."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos[:, :, None], signed[:, :, None]


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
    additive `mask` (B, 1, Q, K), returns (B, Q, d). cos / sin: from `_rotary_tables`."""
    B, Q, _ = x.shape
    heads, K, head_dim = keys.shape[1:]
    kv_heads = (w.qkv.shape[1] // head_dim - heads) // 2
    h = _rms_norm(x, w.ln1, eps)
    qkv = _linear(h, w.qkv, w.qkv_bias).view(B, Q, heads + 2 * kv_heads, head_dim)
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
    x = x + _linear(o.transpose(1, 2).reshape(B, Q, -1), w.o)
    h = _rms_norm(x, w.ln2, eps)
    gate, up = _linear(h, w.gate_up).chunk(2, dim=-1)
    # contiguous: SiLU on a strided view takes another code path, 1 ulp away from the reference's
    return x + _linear(F.silu(gate.contiguous()) * up, w.down)


@dataclass
class ChunkState:
    """What a chunk's suffix steps share, built once per chunk."""

    keys: list[torch.Tensor]  # per layer (B, heads, P + L, head_dim)
    values: list[torch.Tensor]
    cos: torch.Tensor  # (B, L, 1, head_dim), from _rotary_tables
    sin: torch.Tensor
    mask: torch.Tensor  # (B, 1, L, P + L) additive

    def layer_inputs(self) -> tuple:
        """`FastSampler._run_layers`'s arguments after x."""
        return self.keys, self.values, self.cos, self.sin, self.mask


class FastSampler:
    """`AsyncVLA.sample_actions` without per-step host work (module docstring); same results.

    `graphs` (default: on CUDA) captures CUDA graphs; `fuse` (default: with graphs) compiles the
    decoder layer."""

    def __init__(self, model: AsyncVLA, graphs: bool | None = None, fuse: bool | None = None):
        self.model = model
        self.cfg = model.cfg
        lm = model.lm
        self.layers = [LayerWeights.of(layer) for layer in lm.layers]
        self.norm = lm.norm.weight
        self.eps = lm.norm.variance_epsilon
        # the suffix's small projections, transposed for _linear: (weight.t(), bias)
        first, _, second = model.time_mlp
        self.action_in, self.time_in, self.time_out, self.action_out = (
            (p.weight.t(), p.bias) for p in (model.action_in_proj, first, second, model.action_out_proj)
        )
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
        if self.graphs_enabled if fuse is None else fuse:
            # one compiled function serves all layers: the weights are arguments, not constants
            # (a compile per shape: prefix and suffix of each bucket, more than dynamo's default 8)
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self.layer_fn = torch.compile(_decoder_layer, dynamic=False, fullgraph=True)
        self._graphs: dict[tuple, CapturedCall | None] = {}
        self._plans: dict[tuple, VisionPlan] = {}
        self._positions: dict[tuple, torch.Tensor] = {}

    # -- the pieces, each the reference's maths ---------------------------------------------
    def _run_layers(self, x, keys, values, cos, sin, mask) -> torch.Tensor:
        """The decoder layers over x, whose tokens fill the last slots of `keys` / `values`."""
        for w, k, v in zip(self.layers, keys, values):
            x = self.layer_fn(x, w, k, v, cos, sin, mask, self.eps)
        return _rms_norm(x, self.norm, self.eps)

    def _kv_buffers(self, batch: int, slots: int) -> tuple[list, list]:
        """Per-layer key and value buffers (batch, heads, slots, head_dim); zeros, not empty: a
        masked slot's weight is 0, and 0 * NaN would still be NaN."""
        m, shape = self.model, (batch, self.heads, slots, self.head_dim)
        return tuple(
            [torch.zeros(shape, dtype=m.dtype, device=m.device) for _ in self.layers] for _ in range(2)
        )

    def encode_prefix(self, prefix: Prefix) -> tuple[list, list, torch.Tensor]:
        """The prefix's language-model pass into static buffers of P + L slots; hidden states."""
        m = self.model
        B, P, _ = prefix.embeds.shape
        L = self.cfg.chunk_length
        keys, values = self._kv_buffers(B, P + L)
        causal = make_attention_mask(prefix.valid, torch.ones(P, dtype=torch.bool, device=m.device))
        cos, sin = _rotary_tables(*m.lm.rotary_emb(prefix.embeds, prefix.positions))
        hidden = self._run_layers(
            prefix.embeds,
            [k[:, :, :P] for k in keys],
            [v[:, :, :P] for v in values],
            cos,
            sin,
            additive_mask(causal, m.dtype),
        )
        return keys, values, hidden

    def chunk_state(self, prefix: Prefix, keys: list, values: list) -> ChunkState:
        allowed, positions, _ = self.model._suffix_layout(prefix, self.cfg.chunk_length)
        L = self.cfg.chunk_length
        probe = torch.empty(0, dtype=self.model.dtype, device=self.model.device)
        cos, sin = _rotary_tables(*self.model.lm.rotary_emb(probe, positions))
        mask = additive_mask(allowed[:, -L:], self.model.dtype)
        return ChunkState(keys, values, cos, sin, mask)

    def integrate(self, state: ChunkState, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """`AsyncVLA.integrate` against the static buffers: Euler from tau = 1 to 0, masked tokens move."""
        model, cfg = self.model, self.cfg
        d = cfg.text.hidden_size
        steps = self.tau_column * m  # every step's tau_k * m at once: m is 0 or 1, so exactly
        sinusoids = time_sinusoid(steps, d, cfg.time_embed_min_period, cfg.time_embed_max_period)
        sinusoids = sinusoids.to(model.dtype)
        moving = m[..., None].bool()
        for k in range(cfg.flow_steps):
            # AsyncVLA.embed_suffix: time_mlp([S(tau * m), P(a)])
            h = torch.cat([sinusoids[k], _linear(a.to(model.dtype), *self.action_in)], dim=-1)
            x = _linear(F.silu(_linear(h, *self.time_in)), *self.time_out)
            x = self._run_layers(x, *state.layer_inputs())
            v = _linear(x, *self.action_out).float()
            a = torch.where(moving, a - self.deltas[k] * v, a)  # flow.euler_step
        return a

    def _after_prefix(self, state, hidden, valid, n_sfm, n_afm, mask_draw, mode, threshold, skip_empty_afm):
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
            m = (mask_draw < 0.5).float()
        if skip_empty_afm and not m.any():
            return sfm, sfm, confidence, m
        afm = self.integrate(state, flow.afm_start(sfm, n_afm, m), m)
        return afm, sfm, confidence, m

    # -- the prefix's embedding: vision tower, token embeddings, state token -------------------
    def host_prefix(self, inputs, rows: int | None = None, length: int | None = None) -> HostPrefix:
        """Everything about the prefix that the host derives from token ids and the image grid (rope
        positions, where image tokens go, the vision tower's windows), with the batch padded to
        `rows` (copies of its last sample) and the prompt left-padded to `length` tokens if given."""
        m = self.model
        ids, valid, grid = inputs.input_ids.cpu(), inputs.valid.cpu(), inputs.image_grid_thw.cpu()
        pixels, state = inputs.pixel_values, inputs.state
        B, P = ids.shape
        if length and length > P:  # left padding, as the preprocessor pads shorter prompts
            ids = F.pad(ids, (length - P, 0), value=0)
            valid = F.pad(valid, (length - P, 0), value=False)
        if rows and rows > B:
            per_sample, cams = pixels.shape[0] // B, grid.shape[0] // B
            pixels = torch.cat([pixels, pixels[-per_sample:].repeat(rows - B, 1)])
            grid = torch.cat([grid, grid[-cams:].repeat(rows - B, 1)])
            ids, valid, state = _pad_rows(ids, rows), _pad_rows(valid, rows), _pad_rows(state, rows)
        is_image = ids == m.image_token_id
        positions = torch.cat(
            [self._rope_positions(ids[i], valid[i], grid) for i in range(ids.shape[0])], dim=1
        )
        # as AsyncVLA.embed_prefix: the state token follows the largest position
        state_pos = positions.amax(dim=(0, 2)) + 1
        n = ids.shape[0]
        dev = m.device
        return HostPrefix(
            input_ids=ids.to(dev),
            pixel_values=pixels.to(dev),
            state=state.to(dev),
            image_slots=is_image.view(-1).nonzero().squeeze(1).to(dev),
            valid=torch.cat([valid, torch.ones(n, 1, dtype=torch.bool)], dim=1).to(dev),
            positions=torch.cat([positions, state_pos[None, :, None].expand(3, n, 1)], dim=2).to(dev),
            next_position=(state_pos + 1).to(dev),
            plan=self._vision_plan(grid),
        )

    def _rope_positions(self, ids: torch.Tensor, valid: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """One prompt's multimodal rope positions (3, 1, P), remembered: an episode asks with the
        same prompt at every chunk, and transformers' `get_rope_index` loops in Python."""
        key = (ids.numpy().tobytes(), valid.numpy().tobytes())
        if key not in self._positions:
            if len(self._positions) > 4096:
                self._positions.clear()
            cams = len(self.cfg.cameras)
            self._positions[key], _ = self.model.vlm.model.get_rope_index(
                ids[None],
                (ids == self.model.image_token_id).int()[None],
                image_grid_thw=grid[:cams],
                attention_mask=valid.long()[None],
            )
        return self._positions[key]

    def _vision_plan(self, grid: torch.Tensor) -> VisionPlan:
        """What the vision tower's forward derives from the image grid alone, once per grid."""
        key = tuple(grid.flatten().tolist())
        if key not in self._plans:
            v, dev = self.model.vlm.model.visual, self.model.device
            position_ids = get_vision_position_ids(grid, v.spatial_merge_size)
            cu_seqlens, _ = get_vision_attention_seqlens(grid, v.config)
            window_index, cu_windows = get_vision_window_index(
                grid,
                spatial_merge_size=v.spatial_merge_size,
                window_size=v.window_size,
                patch_size=v.patch_size,
            )
            window_index, seq_len = window_index.to(dev), position_ids.shape[0]
            cos, sin = v.rotary_pos_emb(window_index, position_ids.to(dev))
            self._plans[key] = VisionPlan(
                window_index=window_index,
                reverse_index=torch.argsort(window_index),
                cos=v.permute_input_for_window_attn(cos, window_index, seq_len=seq_len),
                sin=v.permute_input_for_window_attn(sin, window_index, seq_len=seq_len),
                full=tuple(cu_seqlens.diff().tolist()),
                windows=tuple(cu_windows.diff().tolist()),
                key=key,
            )
        return self._plans[key]

    def _vision(self, pixel_values: torch.Tensor, plan: VisionPlan) -> torch.Tensor:
        """Qwen2.5-VL's vision tower (`get_image_features`, images concatenated) with its host work
        (`tolist()`, window bookkeeping) moved into `plan`: capturable in a CUDA graph."""
        v = self.model.vlm.model.visual
        x = v.patch_embed(pixel_values.type(v.dtype))
        x = v.permute_input_for_window_attn(x, plan.window_index, seq_len=x.shape[0])
        for i, block in enumerate(v.blocks):
            lengths = plan.full if i in v.fullatt_block_indexes else plan.windows
            x = x + _vision_attention(block.attn, block.norm1(x), plan.cos, plan.sin, lengths)
            x = x + block.mlp(block.norm2(x))
        return v.merger(x)[plan.reverse_index]

    def _embed(self, plan, input_ids, pixel_values, state, image_slots) -> torch.Tensor:
        """`AsyncVLA.embed_prefix`'s embeddings: image features in the image tokens' slots, then the
        projected state token; (B, P + 1, d)."""
        m = self.model
        embeds = m.lm.embed_tokens(input_ids)
        image = self._vision(pixel_values, plan).to(embeds.dtype)
        B, P, d = embeds.shape
        embeds = embeds.reshape(B * P, d).index_copy(0, image_slots, image).view(B, P, d)
        return torch.cat([embeds, m.state_token(state)], dim=1)

    # -- the whole chunk ----------------------------------------------------------------------
    def _chunk(self, plan, mode, skip_empty_afm, *tensors):
        """From host-prepared prefix tensors and noise to (actions, sfm, confidence, mask)."""
        input_ids, pixel_values, state, image_slots, valid, positions, next_position = tensors[:7]
        n_sfm, n_afm, mask_draw, threshold = tensors[7:]
        prefix = Prefix(
            self._embed(plan, input_ids, pixel_values, state, image_slots), valid, positions, next_position
        )
        keys, values, hidden = self.encode_prefix(prefix)
        state = self.chunk_state(prefix, keys, values)
        return self._after_prefix(
            state, hidden, valid, n_sfm, n_afm, mask_draw, mode, threshold, skip_empty_afm
        )

    @torch.inference_mode()
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
        noise = self.model._draw_noise(generators)
        if not self.graphs_enabled:
            host = self.host_prefix(inputs)
            return ChunkResult(*self._chunk(host.plan, mode, True, *host.tensors(), *noise, threshold))
        B, rows = len(generators), batch_bucket(len(generators))
        host = self.host_prefix(inputs, rows, _round_up(inputs.input_ids.shape[1], PREFIX_MULTIPLE))
        args = (
            *host.tensors(),
            *(_pad_rows(t, rows) for t in noise),
            torch.full((), threshold, device=self.model.device),
        )
        key = ("chunk", mode, *host.input_ids.shape, host.plan.key)
        call = self._captured(key, functools.partial(self._chunk, host.plan, mode, False), args)
        out = call(*args) if call else self._chunk(host.plan, mode, False, *args)
        actions, sfm, confidence, m = (None if t is None else t[:B].clone() for t in out)
        return ChunkResult(actions=actions, sfm=sfm, confidence=confidence, mask=m)

    def _captured(self, key, fn, args) -> CapturedCall | None:
        """The CUDA graph for `key`, captured on first use; None where capture failed (that shape
        then runs op by op: slower, not wrong). A failed compile drops the compiled layer first."""
        if key not in self._graphs:
            try:
                self._graphs[key] = CapturedCall(fn, args)
            except Exception as e:  # torch.compile's and CUDA's errors have no common base
                if self.layer_fn is _decoder_layer:
                    log.warning("CUDA graph capture failed (%s); shape %s runs without graphs", e, key)
                    self._graphs[key] = None
                else:
                    log.warning("the compiled decoder layer failed (%s); using the uncompiled one", e)
                    self.layer_fn = _decoder_layer
                    self._graphs.clear()
                    return self._captured(key, fn, args)
        return self._graphs[key]

    # -- the paper-style pipeline (Appendix B) with the same optimisations, for comparison ----
    def full_velocity(self, prefix: Prefix, a: torch.Tensor, tau_m: torch.Tensor) -> torch.Tensor:
        """`AsyncVLA.full_velocity`: one uncached pass over prefix + suffix through the same layers."""
        model, L = self.model, self.cfg.chunk_length
        B, P, _ = prefix.embeds.shape
        allowed, positions, _ = model._suffix_layout(prefix, L)
        positions = torch.cat([prefix.positions, positions], dim=2)
        x = torch.cat([prefix.embeds, model.embed_suffix(a, tau_m)], dim=1)
        cos, sin = _rotary_tables(*model.lm.rotary_emb(x, positions))
        keys, values = self._kv_buffers(B, P + L)
        x = self._run_layers(x, keys, values, cos, sin, additive_mask(allowed, model.dtype))
        return model.action_out_proj(x[:, -L:]).float()

    def _full_step(self, plan, *tensors):
        input_ids, pixel_values, state, image_slots, valid, positions, next_position, a, tau_m = tensors
        prefix = Prefix(
            self._embed(plan, input_ids, pixel_values, state, image_slots), valid, positions, next_position
        )
        return self.full_velocity(prefix, a, tau_m)

    @torch.inference_mode()
    def sample_actions_recompute(self, inputs, generators: list[torch.Generator]) -> torch.Tensor:
        """Paper-style SFM: the prefix, vision included, recomputed at every Euler step (each step
        one CUDA graph on CUDA, as the chunk is in `sample_actions`)."""
        n_sfm, _, _ = self.model._draw_noise(generators)
        host = self.host_prefix(inputs)
        a, ones = n_sfm, torch.ones(n_sfm.shape[:2], device=n_sfm.device)
        step = functools.partial(self._full_step, host.plan)
        for k in range(self.cfg.flow_steps):
            args = (*host.tensors(), a, self.taus[k] * ones)
            call = None
            if self.graphs_enabled:
                call = self._captured(("recompute", *host.input_ids.shape, host.plan.key), step, args)
            v = call(*args) if call else step(*args)
            a = flow.euler_step(a, v, self.deltas[k], ones)
        return a


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


@dataclass
class HostPrefix:
    """A batch's prefix inputs on the model's device, with what the host derived from them."""

    input_ids: torch.Tensor  # (B, P)
    pixel_values: torch.Tensor
    state: torch.Tensor
    image_slots: torch.Tensor  # flat (B * P) indices of the image tokens, in order
    valid: torch.Tensor  # (B, P + 1), the state token included
    positions: torch.Tensor  # (3, B, P + 1)
    next_position: torch.Tensor  # (B,)
    plan: VisionPlan

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (
            self.input_ids,
            self.pixel_values,
            self.state,
            self.image_slots,
            self.valid,
            self.positions,
            self.next_position,
        )


def _vision_attention(attn, h: torch.Tensor, cos, sin, lengths: tuple[int, ...]) -> torch.Tensor:
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


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Fill a batch up to `rows` with copies of its last row (the copies' results are dropped)."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])


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
