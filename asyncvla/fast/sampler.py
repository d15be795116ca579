"""`FastSampler`: Alg. 1 (`asyncvla.model.sample_chunk`) on static buffers, CUDA graphs on CUDA.

It implements `ChunkPath` (`encode_prefix`, `integrate`, `rater`) with the plain-function decoder
layer of `layers` and the planned vision tower of `vision`; on CUDA `graphs` captures the whole
chunk. The package docstring (asyncvla/fast/__init__.py) says what is saved and why."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from asyncvla import flow
from asyncvla.fast.graphs import PREFIX_MULTIPLE, CapturedCall, batch_bucket, pad_rows, round_up
from asyncvla.fast.layers import LayerWeights, decoder_layer, rms_norm, rotary_tables
from asyncvla.fast.vision import VisionPlan, plan_vision, run_vision
from asyncvla.model import (
    AsyncVLA,
    ChunkResult,
    Prefix,
    additive_mask,
    check_mode,
    inpaint_chunk,
    make_attention_mask,
    sample_chunk,
)

log = logging.getLogger(__name__)

# What a failed torch.compile raises: dynamo's errors (a graph break under fullgraph=True, a backend
# or inductor failure, wrapped as BackendCompilerFailed / InductorError) derive from
# TorchDynamoException; past the recompile limit a fullgraph compile raises FailOnRecompileLimitHit
# (an Exception, not a RuntimeError) instead of running eagerly unseen.
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)
# What a failed CUDA graph capture raises: RuntimeError (an operation not permitted while capturing,
# a host synchronisation, a capture that could not begin or end; torch.AcceleratorError is one too),
# and the compile errors when the compiled layer compiles during the capture's warm-up.
CAPTURE_ERRORS = (RuntimeError, *COMPILE_ERRORS)
# the inference paths a chunk can take (`FastSampler.fast_path`)
PATHS = ("graphs+compiled", "graphs", "compiled", "no graphs")


def transient(e: BaseException) -> bool:
    """An out-of-memory error, or one raised because of it (dynamo wraps a backend's error in its
    own): it says nothing about whether the path works, so it is raised, not taken for a failed
    compile or capture that would switch the path off for the rest of the process."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, torch.OutOfMemoryError):
            return True
        seen.add(id(e))
        e = getattr(e, "inner_exception", None) or e.__cause__ or e.__context__
    return False


@dataclass
class ChunkState:
    """An encoded prefix in static buffers: what a chunk's suffix steps share, built once."""

    keys: list[torch.Tensor]  # per layer (B, heads, P + L, head_dim), the prefix's slots filled
    values: list[torch.Tensor]
    cos: torch.Tensor  # (B, L, 1, head_dim), from rotary_tables
    sin: torch.Tensor
    mask: torch.Tensor  # (B, 1, L, P + L) additive
    hidden: torch.Tensor  # (B, P, d) the prefix's last hidden states (the rater's input)


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


class FastSampler:
    """`AsyncVLA.sample_actions` without per-step host work; same results.

    `graphs` (default: on CUDA) captures CUDA graphs; `fuse` (default: with graphs) compiles the
    decoder layer. A compile or capture that fails falls back (slower, not wrong); which path each
    call actually ran is recorded: `fast_path` (the last call's, one of `PATHS`: `graphs+compiled`,
    `graphs`, `compiled` without graphs, `no graphs`), `paths_run` (calls per path: a chunk, or a
    step of the paper-style pipeline) and `fallbacks` (why each fallback happened), so that a
    silent fallback cannot pass for the optimised path (in the policy, run.json and the benchmark)."""

    def __init__(self, model: AsyncVLA, graphs: bool | None = None, fuse: bool | None = None):
        self.model = model
        self.cfg = model.cfg
        self.rater = model.rater
        lm = model.lm
        self._load_weights()
        self.eps = lm.norm.variance_epsilon
        self.heads = lm.config.num_attention_heads
        self.head_dim = lm.config.hidden_size // self.heads
        taus = flow.time_grid(self.cfg.flow_steps)
        # python floats, as the reference passes them: the same float32 arithmetic, and constants
        # that a CUDA graph bakes in
        self.taus = [float(taus[k]) for k in range(self.cfg.flow_steps)]
        self.deltas = [float(taus[k] - taus[k + 1]) for k in range(self.cfg.flow_steps)]
        self.graphs_enabled = model.device.type == "cuda" if graphs is None else graphs
        if self.graphs_enabled and model.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.layer_fn = decoder_layer
        if self.graphs_enabled if fuse is None else fuse:
            # one compiled function serves all layers: the weights are arguments, not constants
            # (a compile per shape: prefix and suffix of each bucket, more than dynamo's default 8)
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self.layer_fn = torch.compile(decoder_layer, dynamic=False, fullgraph=True)
        self._graphs: dict[tuple, CapturedCall | None] = {}
        self._graph_paths: dict[tuple, str] = {}  # per captured graph: with the compiled layer or not
        self.fast_path: str | None = None
        self.paths_run: dict[str, int] = {}
        self.fallbacks: list[str] = []
        self._plans: dict[tuple, VisionPlan] = {}
        self._positions: dict[tuple, torch.Tensor] = {}

    # -- the decoder's weights, as `layers` takes them ------------------------------------------
    def _load_weights(self) -> None:
        lm = self.model.lm
        self.layers = [LayerWeights.of(layer) for layer in lm.layers]
        self.norm = lm.norm.weight
        self._weights_seen = self._weights_signature()

    def _weights_signature(self) -> tuple:
        """Which tensors the decoder's weights are and how often each was modified in place (every
        in-place operation bumps `_version`: an optimiser step, `load_state_dict`, `p.add_`)."""
        lm = self.model.lm
        return tuple((p.data_ptr(), p._version) for p in (*lm.layers.parameters(), lm.norm.weight))

    def _refresh_weights(self) -> None:
        """`LayerWeights` holds copies (q/k/v and gate/up concatenated): when the model's weights
        changed since they were made (a training loop's model, evaluated between steps), make them
        again, and drop the CUDA graphs that captured the old ones. A write through `.data` bypasses
        `_version` and is not seen: build a new sampler after one."""
        if self._weights_signature() != self._weights_seen:
            log.info("the model's weights changed since the fast path copied them; copying them again")
            self._load_weights()
            self._graphs.clear()

    # -- ChunkPath: the prefix's one pass, and Euler steps against it ---------------------------
    def run_layers(self, x, keys, values, cos, sin, mask) -> torch.Tensor:
        """The decoder layers over x, whose tokens fill the last slots of `keys` / `values`."""
        for w, k, v in zip(self.layers, keys, values):
            x = self.layer_fn(x, w, k, v, cos, sin, mask, self.eps)
        return rms_norm(x, self.norm, self.eps)

    def _kv_buffers(self, batch: int, slots: int) -> tuple[list, list]:
        """Per-layer key and value buffers (batch, heads, slots, head_dim); zeros, not empty: a
        masked slot's weight is 0, and 0 * NaN would still be NaN."""
        m, shape = self.model, (batch, self.heads, slots, self.head_dim)
        return tuple(
            [torch.zeros(shape, dtype=m.dtype, device=m.device) for _ in self.layers] for _ in range(2)
        )

    def encode_prefix(self, prefix: Prefix) -> ChunkState:
        """The prefix's language-model pass into static buffers of P + L slots, and the suffix's
        rotary tables and attention mask (the same at every step of the chunk)."""
        m, L = self.model, self.cfg.chunk_length
        B, P, _ = prefix.embeds.shape
        keys, values = self._kv_buffers(B, P + L)
        causal = make_attention_mask(prefix.valid, torch.ones(P, dtype=torch.bool, device=m.device))
        cos, sin = rotary_tables(*m.lm.rotary_emb(prefix.embeds, prefix.positions))
        hidden = self.run_layers(
            prefix.embeds,
            [k[:, :, :P] for k in keys],
            [v[:, :, :P] for v in values],
            cos,
            sin,
            additive_mask(causal, m.dtype),
        )
        allowed, positions, _ = m._suffix_layout(prefix, L)
        probe = torch.empty(0, dtype=m.dtype, device=m.device)
        cos, sin = rotary_tables(*m.lm.rotary_emb(probe, positions))
        return ChunkState(keys, values, cos, sin, additive_mask(allowed[:, -L:], m.dtype), hidden)

    def integrate(self, state: ChunkState, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """`AsyncVLA.integrate` against the static buffers: Euler from tau = 1 to 0, masked tokens move."""
        model = self.model
        for tau, delta in zip(self.taus, self.deltas):
            x = model.embed_suffix(a, tau * m)
            x = self.run_layers(x, state.keys, state.values, state.cos, state.sin, state.mask)
            v = model.action_out_proj(x).float()
            a = flow.euler_step(a, v, delta, m)
        return a

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
            ids, valid, state = pad_rows(ids, rows), pad_rows(valid, rows), pad_rows(state, rows)
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
        key = tuple(grid.flatten().tolist())
        if key not in self._plans:
            self._plans[key] = plan_vision(self.model.vlm.model.visual, grid, self.model.device)
        return self._plans[key]

    def embed(self, plan, input_ids, pixel_values, state, image_slots) -> torch.Tensor:
        """`AsyncVLA.embed_prefix`'s embeddings: image features in the image tokens' slots, then the
        projected state token; (B, P + 1, d)."""
        m = self.model
        embeds = m.lm.embed_tokens(input_ids)
        image = run_vision(m.vlm.model.visual, pixel_values, plan).to(embeds.dtype)
        B, P, d = embeds.shape
        embeds = embeds.reshape(B * P, d).index_copy(0, image_slots, image).view(B, P, d)
        return torch.cat([embeds, m.state_token(state)], dim=1)

    def _prefix(self, plan, input_ids, pixel_values, state, image_slots, valid, positions, next_position):
        embeds = self.embed(plan, input_ids, pixel_values, state, image_slots)
        return Prefix(embeds, valid, positions, next_position)

    # -- the whole chunk ----------------------------------------------------------------------
    def _chunk(self, plan, mode, skip_empty_afm, *tensors) -> ChunkResult:
        """From host-prepared prefix tensors and noise to Alg. 1's result."""
        prefix = self._prefix(plan, *tensors[:7])
        n_sfm, n_afm, mask_draw, threshold, mask_rate = tensors[7:]
        noise = (n_sfm, n_afm, mask_draw)
        return sample_chunk(self, prefix, noise, mode, threshold, skip_empty_afm, mask_rate)

    @torch.inference_mode()
    def sample_actions(
        self,
        inputs,
        generators: list[torch.Generator],
        mode: str = "asyncvla",
        threshold: float | None = None,
        committed: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        mask_rate: float = 0.5,
    ) -> ChunkResult:
        check_mode(mode)
        self._refresh_weights()
        threshold = self.cfg.threshold if threshold is None else threshold
        noise = self.model._draw_noise(generators)
        if committed is not None:  # op by op, also on CUDA: no graph is captured for inpainting
            host = self.host_prefix(inputs)
            dev = self.model.device

            def inpaint():
                prefix = self._prefix(host.plan, *host.tensors())
                return inpaint_chunk(self, prefix, noise, committed.to(dev), keep.to(dev))

            return self._op_by_op(inpaint)
        if not self.graphs_enabled:
            host = self.host_prefix(inputs)
            return self._op_by_op(
                functools.partial(
                    self._chunk, host.plan, mode, True, *host.tensors(), *noise, threshold, mask_rate
                )
            )
        B, rows = len(generators), batch_bucket(len(generators))
        host = self.host_prefix(inputs, rows, round_up(inputs.input_ids.shape[1], PREFIX_MULTIPLE))
        args = (
            *host.tensors(),
            *(pad_rows(t, rows) for t in noise),
            torch.full((), threshold, device=self.model.device),
            torch.full((), mask_rate, device=self.model.device),
        )
        key = ("chunk", mode, *host.input_ids.shape, host.plan.key)
        chunk = functools.partial(self._chunk, host.plan, mode, False)
        out = self._graphed(key, chunk, args)
        return ChunkResult(
            *(None if t is None else t[:B].clone() for t in (out.actions, out.sfm, out.confidence, out.mask))
        )

    # -- which path runs, and the fallbacks ------------------------------------------------------
    @property
    def compiled(self) -> bool:
        return self.layer_fn is not decoder_layer

    def _ran(self, path: str) -> None:
        self.fast_path = path
        self.paths_run[path] = self.paths_run.get(path, 0) + 1

    def _fell_back(self, what: str, e: BaseException) -> None:
        why = f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        log.warning("%s", why)
        self.fallbacks.append(why)

    def _drop_compiled(self, e: BaseException) -> None:
        self._fell_back("the compiled decoder layer failed; using the uncompiled one", e)
        self.layer_fn = decoder_layer
        self._graphs.clear()  # they hold the compiled layer's kernels: captured again without

    def _op_by_op(self, fn):
        """`fn()` without graphs, with the compiled layer if there is one; a compile that fails
        drops it and runs `fn` again uncompiled. Only compile errors are caught: an out-of-memory
        error, a time limit (a BaseException) or a bug propagates."""
        compiled = self.compiled
        try:
            out = fn()
        except COMPILE_ERRORS as e:
            if not compiled or transient(e):
                raise
            self._drop_compiled(e)
            compiled, out = False, fn()
        self._ran("compiled" if compiled else "no graphs")
        return out

    def _graphed(self, key, fn, args):
        """`fn(*args)` through the CUDA graph for `key`, or op by op where capture failed."""
        call = self._captured(key, fn, args)
        if call is None:
            return self._op_by_op(functools.partial(fn, *args))
        out = call(*args)
        self._ran(self._graph_paths[key])
        return out

    def _captured(self, key, fn, args) -> CapturedCall | None:
        """The CUDA graph for `key`, captured on first use; None where capture failed (that shape
        then runs op by op: slower, not wrong). A failure with the compiled layer drops it and
        captures again without it. Only what a failed compile or capture raises is caught (module
        constants); an out-of-memory error (transient: it would switch the path off for the whole
        process) and BaseExceptions such as the harness's time limit propagate."""
        if key not in self._graphs:
            compiled = self.compiled
            try:
                self._graphs[key] = CapturedCall(fn, args)
                self._graph_paths[key] = "graphs+compiled" if compiled else "graphs"
            except CAPTURE_ERRORS as e:
                if transient(e):
                    raise
                if compiled:
                    self._drop_compiled(e)
                    return self._captured(key, fn, args)
                self._fell_back(f"CUDA graph capture failed; shape {key} runs without graphs", e)
                self._graphs[key] = None
        return self._graphs[key]

    # -- the paper-style pipeline (Appendix B) with the same optimisations, for comparison ----
    def full_velocity(self, prefix: Prefix, a: torch.Tensor, tau_m: torch.Tensor) -> torch.Tensor:
        """`AsyncVLA.full_velocity`: one uncached pass over prefix + suffix through the same layers."""
        model, L = self.model, self.cfg.chunk_length
        B, P, _ = prefix.embeds.shape
        allowed, positions, _ = model._suffix_layout(prefix, L)
        positions = torch.cat([prefix.positions, positions], dim=2)
        x = torch.cat([prefix.embeds, model.embed_suffix(a, tau_m)], dim=1)
        cos, sin = rotary_tables(*model.lm.rotary_emb(x, positions))
        keys, values = self._kv_buffers(B, P + L)
        x = self.run_layers(x, keys, values, cos, sin, additive_mask(allowed, model.dtype))
        return model.action_out_proj(x[:, -L:]).float()

    def _full_step(self, plan, *tensors):
        *prefix_tensors, a, tau_m = tensors
        return self.full_velocity(self._prefix(plan, *prefix_tensors), a, tau_m)

    @torch.inference_mode()
    def sample_actions_recompute(self, inputs, generators: list[torch.Generator]) -> torch.Tensor:
        """Paper-style SFM: the prefix, vision included, recomputed at every Euler step (each step
        one CUDA graph on CUDA, as the chunk is in `sample_actions`)."""
        self._refresh_weights()
        n_sfm, _, _ = self.model._draw_noise(generators)
        host = self.host_prefix(inputs)
        a, ones = n_sfm, torch.ones(n_sfm.shape[:2], device=n_sfm.device)
        step = functools.partial(self._full_step, host.plan)
        for tau, delta in zip(self.taus, self.deltas):
            args = (*host.tensors(), a, tau * ones)
            if self.graphs_enabled:
                v = self._graphed(("recompute", *host.input_ids.shape, host.plan.key), step, args)
            else:
                v = self._op_by_op(functools.partial(step, *args))
            a = flow.euler_step(a, v, delta, ones)
        return a
