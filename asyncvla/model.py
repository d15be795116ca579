"""AsyncVLA: Qwen2.5-VL prefix, asynchronous-time action suffix, SFM -> rater -> AFM.

Reads top to bottom like openpi's pi0: `embed_prefix`, `encode_prefix` (once per chunk, into a
KV-cache), `embed_suffix` (asynchronous time embedding), `velocity` (suffix only, against the
cache, which is cropped back so it is reused unchanged), `compute_loss` (Alg. 2) and
`sample_actions` (SFM, confidence rater, AFM = Alg. 1).

Alg. 1's control flow is written once, in `sample_chunk`, over a `ChunkPath`: this model (the
reference, eager path) or `asyncvla.fast.FastSampler` (static buffers, CUDA graphs). The two
paths differ only in how the prefix is encoded and how a set of tokens is integrated, never in
the order of SFM, rater, mask and AFM.

Attention: the prefix is causal as in the VLM and never sees actions; action tokens see the
whole prefix and each other (one full-attention block), built by `make_attention_mask`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import DynamicCache

from asyncvla import flow
from asyncvla.backbone import VLInputs, build_vlm
from asyncvla.config import MODES, OBJECTIVES, ModelConfig
from asyncvla.rater import ConfidenceRater


@dataclass
class Prefix:
    embeds: torch.Tensor  # (B, P, d): text + image tokens + one state token
    valid: torch.Tensor  # (B, P) bool, False on left padding
    positions: torch.Tensor  # (3, B, P) long, multimodal rope positions
    next_position: torch.Tensor  # (B,) long, first position after the prefix


@dataclass
class EncodedPrefix:
    """A prefix after its one pass through the language model: what every suffix step attends to."""

    prefix: Prefix
    cache: DynamicCache  # the prefix's keys and values; suffix passes crop back to it
    hidden: torch.Tensor  # (B, P, d) last hidden states: the rater reads them


@dataclass
class ChunkResult:
    """One call's chunks (normalised action space). `mask` is AFM's m (1 = regenerated)."""

    actions: torch.Tensor  # (B, L, A): what the policy executes
    sfm: torch.Tensor | None  # (B, L, A): the first-round SFM actions (None: an inpainted chunk has none)
    confidence: torch.Tensor | None  # (B, L): rater's p_l (asyncvla mode only)
    mask: torch.Tensor  # (B, L)


class ChunkPath(Protocol):
    """How one inference path computes Alg. 1's two kinds of work (the reference `AsyncVLA`, or
    `asyncvla.fast.FastSampler`); `sample_chunk` decides what is computed, in which order."""

    rater: nn.Module

    def encode_prefix(self, prefix: Prefix):
        """The prefix's one pass; returns a state with `.hidden` (B, P, d) that `integrate` reads."""

    def integrate(self, encoded, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Euler from tau = 1 to 0 against the encoded prefix; only tokens with m = 1 move."""


def sample_chunk(
    path: ChunkPath,
    prefix: Prefix,
    noise: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mode: str,
    threshold: float | torch.Tensor,
    skip_empty_afm: bool = True,
    mask_rate: float | torch.Tensor = 0.5,
) -> ChunkResult:
    """Alg. 1 from an embedded prefix: SFM, confidence rater, mask, AFM.

    `noise` is `AsyncVLA._draw_noise`'s (SFM noise, AFM noise, random-mask draws). `threshold` may
    be a 0-d tensor (a CUDA graph captures it as an input). `skip_empty_afm`: return SFM's chunk
    when nothing is masked (what AFM would return anyway); a CUDA graph cannot branch on a value,
    so the captured path runs AFM regardless. `mask_rate`: random-mask mode's chance that a token
    is regenerated (0.5, the paper's w/o-rater row; the rater's own firing rate makes the row a
    like-for-like comparison of which tokens are regenerated, not how many)."""
    n_sfm, n_afm, mask_draw = noise
    encoded = path.encode_prefix(prefix)  # the only pass over the prefix in this chunk
    ones = torch.ones(n_sfm.shape[:2], device=n_sfm.device)
    sfm = path.integrate(encoded, n_sfm, ones)  # SFM = every token masked
    if mode == "sfm":
        return ChunkResult(actions=sfm, sfm=sfm, confidence=None, mask=torch.zeros_like(ones))
    confidence = None
    if mode in ("asyncvla", "rater-resample"):
        confidence = path.rater(encoded.hidden, prefix.valid, sfm)
        m = flow.rater_mask(confidence, threshold)
    else:  # random-mask: the w/o-rater ablation, each token masked with p = mask_rate
        m = (mask_draw < mask_rate).float()
    if skip_empty_afm and not m.any():
        return ChunkResult(actions=sfm, sfm=sfm, confidence=confidence, mask=m)
    if mode == "rater-resample":  # the flagged tokens from a second, independent SFM draw (AFM's noise)
        fresh = path.integrate(encoded, n_afm, ones)
        return ChunkResult(torch.where(m[..., None].bool(), fresh, sfm), sfm, confidence, m)
    afm = path.integrate(encoded, flow.afm_start(sfm, n_afm, m), m)
    return ChunkResult(actions=afm, sfm=sfm, confidence=confidence, mask=m)


def inpaint_chunk(
    path: ChunkPath,
    prefix: Prefix,
    noise: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    committed: torch.Tensor,
    keep: torch.Tensor,
) -> ChunkResult:
    """AFM alone, from tokens fixed by the caller (asynchronous execution's `afm-inpaint` join).

    The tokens with `keep` = 1 are the actions a robot has already committed to (they execute while
    this chunk is computed): they enter AFM as its unmasked tokens do in Alg. 1, clean (tau * m = 0)
    and never moved, and the others (m = 1) are regenerated from AFM's noise over the full ten
    Euler steps, attending to the committed ones. Alg. 2 trains on exactly such inputs (a random
    mask m ~ Bernoulli(y) with the unmasked tokens clean), so a committed prefix is in the training
    distribution; no SFM round or rater is needed, since the caller says which tokens are known.
    `committed` (B, L, A) in normalised units (ignored where keep = 0), `keep` (B, L) of 0 / 1."""
    _, n_afm, _ = noise
    encoded = path.encode_prefix(prefix)
    m = 1.0 - keep.float()
    actions = path.integrate(encoded, flow.afm_start(committed, n_afm, m), m)
    return ChunkResult(actions=actions, sfm=None, confidence=None, mask=m)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; expected one of {MODES}")


def make_attention_mask(valid: torch.Tensor, block_starts: torch.Tensor) -> torch.Tensor:
    """(B, N) valid tokens + (N,) block-start flags -> (B, N, N) bool "query may see key".

    A token sees every valid token whose block index (cumulative count of starts) is <= its
    own: all-ones starts give a causal mask, a single start gives one full-attention block.
    """
    block = torch.cumsum(block_starts.long(), dim=0)
    allowed = (block[None, :] <= block[:, None])[None] & valid[:, None, :]
    # a left-padding query sees nothing valid: let it see itself so softmax stays finite
    return allowed | torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)[None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool (B, Q, K) -> additive float (B, 1, Q, K); a bool mask is silently wrong for eager attention."""
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]


def time_sinusoid(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """Sinusoidal encoding S(t) of (B, L) times -> (B, L, dim), periods as in openpi's pi0."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.float()[..., None] * (2 * math.pi / period)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class AsyncVLA(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        tokenizer,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        self.cfg = cfg
        self.training_record: dict | None = (
            None  # how it was trained (asyncvla.training.train), saved in config.json
        )
        self.vlm = build_vlm(cfg, tokenizer, dtype, device)
        self.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        d = cfg.text.hidden_size
        self.state_proj = nn.Linear(cfg.state_dim, d)
        self.action_in_proj = nn.Linear(cfg.action_dim, d)  # P(a_tau)
        self.time_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d))
        self.action_out_proj = nn.Linear(d, cfg.action_dim)  # the FM head
        self.rater = ConfidenceRater(cfg)
        for module in (self.state_proj, self.action_in_proj, self.time_mlp, self.action_out_proj):
            module.to(device=device, dtype=dtype)
        self.rater.to(device=device, dtype=torch.float32)  # see ConfidenceRater: fp32 in every dtype

    @property
    def lm(self):
        return self.vlm.model.language_model

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.action_in_proj.weight.device

    # -- prefix: images + prompt + state, encoded once per chunk ----------------------------
    def embed_prefix(self, inputs: VLInputs) -> Prefix:
        embeds = self.lm.embed_tokens(inputs.input_ids)
        image = self.vlm.model.get_image_features(inputs.pixel_values, image_grid_thw=inputs.image_grid_thw)
        image = torch.cat(image.pooler_output).to(embeds.dtype)
        is_image = inputs.input_ids == self.image_token_id
        embeds = embeds.masked_scatter(is_image[..., None].expand_as(embeds), image)
        positions, _ = self.vlm.model.get_rope_index(
            inputs.input_ids,
            is_image.int(),
            image_grid_thw=inputs.image_grid_thw,
            attention_mask=inputs.valid.long(),
        )
        # positions are compressed after images: the next token follows the maximum, not the length
        state_pos = positions.amax(dim=(0, 2)) + 1  # (B,)
        B = embeds.shape[0]
        return Prefix(
            embeds=torch.cat([embeds, self.state_token(inputs.state)], dim=1),
            valid=torch.cat([inputs.valid, torch.ones(B, 1, dtype=torch.bool, device=embeds.device)], dim=1),
            positions=torch.cat([positions, state_pos[None, :, None].expand(3, B, 1)], dim=2),
            next_position=state_pos + 1,
        )

    def state_token(self, state: torch.Tensor) -> torch.Tensor:
        """The projected state, (B, D) -> (B, 1, d), each sample's product computed as if alone: one
        row alone is a matrix-vector product, which rounds differently from the same row inside a
        matrix product, and a chunk must not depend on what it was batched with (policy.py)."""
        proj = self.state_proj
        weight = proj.weight.t().expand(state.shape[0], *proj.weight.t().shape)
        return torch.baddbmm(proj.bias, state.to(self.dtype)[:, None], weight)

    def encode_prefix(self, prefix: Prefix) -> EncodedPrefix:
        """Run the language model over the prefix once; keep its KV-cache and hidden states."""
        cache = DynamicCache(config=self.lm.config)
        P = prefix.embeds.shape[1]
        causal = make_attention_mask(prefix.valid, torch.ones(P, dtype=torch.bool, device=self.device))
        out = self.lm(
            inputs_embeds=prefix.embeds,
            attention_mask=additive_mask(causal, self.dtype),
            position_ids=prefix.positions,
            cache=cache,
            use_cache=True,
        )
        return EncodedPrefix(prefix, cache, out.last_hidden_state)

    # -- suffix: the action tokens with the asynchronous time embedding ---------------------
    def embed_suffix(self, noisy: torch.Tensor, tau_m: torch.Tensor) -> torch.Tensor:
        """x = MLP([S(tau * m), P(a_tau)]): (B, L, A) actions and (B, L) per-token times -> (B, L, d)."""
        d = self.cfg.text.hidden_size
        s = time_sinusoid(tau_m, d, self.cfg.time_embed_min_period, self.cfg.time_embed_max_period)
        h = torch.cat([s.to(self.dtype), self.action_in_proj(noisy.to(self.dtype))], dim=-1)
        return self.time_mlp(h)

    def _suffix_layout(self, prefix: Prefix, L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, P = prefix.valid.shape
        dev = self.device
        valid = torch.cat([prefix.valid, torch.ones(B, L, dtype=torch.bool, device=dev)], dim=1)
        starts = torch.ones(P + L, dtype=torch.bool, device=dev)
        starts[P + 1 :] = False  # the L action tokens form one full-attention block
        allowed = make_attention_mask(valid, starts)
        positions = (prefix.next_position[:, None] + torch.arange(L, device=dev))[None].expand(3, B, L)
        return allowed, positions, valid

    def velocity(
        self, cache: DynamicCache, prefix: Prefix, noisy: torch.Tensor, tau_m: torch.Tensor
    ) -> torch.Tensor:
        """V_theta for the suffix only, against the prefix cache; the cache is cropped back unchanged."""
        L = noisy.shape[1]
        allowed, positions, _ = self._suffix_layout(prefix, L)
        out = self.lm(
            inputs_embeds=self.embed_suffix(noisy, tau_m),
            attention_mask=additive_mask(allowed[:, -L:], self.dtype),
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        cache.crop(-L)  # drop the suffix's keys/values: the prefix cache is reused as it was
        return self.action_out_proj(out.last_hidden_state).float()

    def full_velocity(self, prefix: Prefix, noisy: torch.Tensor, tau_m: torch.Tensor) -> torch.Tensor:
        """V_theta from one uncached forward over prefix + suffix (training; paper-style SFM)."""
        L = noisy.shape[1]
        allowed, positions, _ = self._suffix_layout(prefix, L)
        out = self.lm(
            inputs_embeds=torch.cat([prefix.embeds, self.embed_suffix(noisy, tau_m)], dim=1),
            attention_mask=additive_mask(allowed, self.dtype),
            position_ids=torch.cat([prefix.positions, positions], dim=2),
            use_cache=False,
        )
        return self.action_out_proj(out.last_hidden_state[:, -L:]).float()

    # -- training: Alg. 2 ----------------------------------------------------------------
    def compute_loss(
        self,
        inputs: VLInputs,
        actions: torch.Tensor,
        ignore: torch.Tensor | None = None,
        objective: str = "unified",
        generator: torch.Generator | None = None,
        workers: tuple[int, int] = (0, 1),
        normalizer=None,
    ) -> torch.Tensor:
        """Unified AFM/SFM loss (Eq. 4). `objective="sfm"` sets m = 1: the w/o-unified-training ablation.
        `ignore` (B, L) bool marks tokens without a label (padding past the episode's end, pauses).
        Data-parallel training passes `workers` = (rank, world) and a `normalizer`
        (flow.masked_flow_loss): every process draws the whole global batch's masks, times and noise
        from the same generator and takes its own rows, so N processes train as one would on their
        global batch."""
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        B, L, A = actions.shape
        rank, world = workers
        draws = flow.draw_train(B * world, L, A, objective, generator).rows(rank, world)
        m, tau, n = draws.m.to(self.device), draws.tau.to(self.device), draws.n.to(self.device)
        a_tau = flow.noisy_actions(actions, n, tau, m)
        v = self.full_velocity(self.embed_prefix(inputs), a_tau, tau[:, None] * m)
        weight = m if ignore is None else m * (~ignore).float()  # padded and paused steps carry no label
        return flow.masked_flow_loss(v, flow.target_velocity(actions, n), weight, normalizer)

    # -- inference: SFM -> confidence rater -> AFM (Alg. 1) ------------------------------
    def _draw_noise(
        self, generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample draws in a fixed order (SFM noise, AFM noise, random mask), whatever the mode,
        so a sample's SFM chunk is the same in every mode and in any batch."""
        L, A = self.cfg.chunk_length, self.cfg.action_dim
        draws = [
            (torch.randn(L, A, generator=g), torch.randn(L, A, generator=g), torch.rand(L, generator=g))
            for g in generators
        ]
        return tuple(torch.stack(x).to(self.device) for x in zip(*draws))

    def integrate(self, encoded: EncodedPrefix, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Euler from tau = 1 to 0; only masked tokens move, their time is tau * m (Alg. 1 lines 3-9)."""
        taus = flow.time_grid(self.cfg.flow_steps)
        for k in range(self.cfg.flow_steps):
            tau, delta = float(taus[k]), float(taus[k] - taus[k + 1])
            v = self.velocity(encoded.cache, encoded.prefix, a, tau * m)
            a = flow.euler_step(a, v, delta, m)
        return a

    @torch.inference_mode()
    def sample_actions(
        self,
        inputs: VLInputs,
        generators: list[torch.Generator],
        mode: str = "asyncvla",
        threshold: float | None = None,
        committed: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        mask_rate: float = 0.5,
    ) -> ChunkResult:
        """Alg. 1 on the reference path (`sample_chunk` with this model as its `ChunkPath`); with
        `committed` and `keep`, the chunk is inpainted around the committed tokens instead
        (`inpaint_chunk`)."""
        check_mode(mode)
        threshold = self.cfg.threshold if threshold is None else threshold
        noise = self._draw_noise(generators)
        if committed is not None:
            return inpaint_chunk(
                self, self.embed_prefix(inputs), noise, committed.to(self.device), keep.to(self.device)
            )
        return sample_chunk(self, self.embed_prefix(inputs), noise, mode, threshold, mask_rate=mask_rate)

    @torch.inference_mode()
    def sample_actions_recompute(self, inputs: VLInputs, generators: list[torch.Generator]) -> torch.Tensor:
        """Paper-style SFM (Appendix B): the whole prefix, vision included, recomputed at every step."""
        n_sfm, _, _ = self._draw_noise(generators)
        taus = flow.time_grid(self.cfg.flow_steps)
        a, ones = n_sfm, torch.ones(n_sfm.shape[:2], device=self.device)
        for k in range(self.cfg.flow_steps):
            v = self.full_velocity(self.embed_prefix(inputs), a, float(taus[k]) * ones)
            a = flow.euler_step(a, v, float(taus[k] - taus[k + 1]), ones)
        return a
