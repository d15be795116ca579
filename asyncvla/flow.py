"""The flow-matching math of AsyncVLA (paper Sec. 3.1-3.3, Alg. 1 and 2), kept visible.

Conventions: tau = 1 is pure noise, tau = 0 the action; the velocity is u = n - a, so an
Euler step towards the action is a <- a - delta * v. A mask m (1 = masked = generated,
0 = kept) selects the tokens that move. All randomness takes an explicit torch.Generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

BETA_A = 1.5  # tau ~ Beta(1.5, 1) (Alg. 2, following pi0)


def sample_train_mask(batch: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Alg. 2 line 4: y ~ U(0, 1) per sample, then m_l ~ Bernoulli(y) per token. Float (B, L)."""
    y = torch.rand(batch, 1, generator=generator)
    return (torch.rand(batch, length, generator=generator) < y).float()


def sample_tau(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Alg. 2 line 5: tau ~ Beta(1.5, 1), by inverse CDF (the CDF is x^1.5) so it takes a generator."""
    u = torch.rand(batch, generator=generator)
    return u.pow(1.0 / BETA_A)


def noisy_actions(a: torch.Tensor, n: torch.Tensor, tau: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eq. (5): a_tau = a - tau (a - n) * m. a, n: (B, L, A); tau: (B,); m: (B, L)."""
    return a - tau[:, None, None] * (a - n) * m[..., None]


def target_velocity(a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Alg. 2 line 6: the ground-truth velocity u = n - a."""
    return n - a


@dataclass
class TrainDraws:
    """Alg. 2's random draws for a batch: the mask m (B, L), the time tau (B,), the noise n (B, L, A)."""

    m: torch.Tensor
    tau: torch.Tensor
    n: torch.Tensor

    def rows(self, rank: int, world: int) -> TrainDraws:
        """Process `rank`'s samples of a batch split across `world` processes (DistributedSampler
        deals the global batch out in turn: sample i goes to process i % world)."""
        return TrainDraws(self.m[rank::world], self.tau[rank::world], self.n[rank::world])


def draw_train(
    batch: int, length: int, dims: int, objective: str, generator: torch.Generator | None = None
) -> TrainDraws:
    """Alg. 2 lines 4-5 and the noise, in this order (a saved generator state replays them);
    `objective="sfm"` masks every token (m = 1: the w/o-unified-training ablation)."""
    m = torch.ones(batch, length) if objective == "sfm" else sample_train_mask(batch, length, generator)
    tau = sample_tau(batch, generator)
    return TrainDraws(m, tau, torch.randn(batch, length, dims, generator=generator))


def masked_flow_loss(
    v: torch.Tensor,
    u: torch.Tensor,
    m: torch.Tensor,
    normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Eq. (4): mean squared velocity error over masked tokens only (and over action dims).

    `normalizer` maps this batch's label count to the denominator; data-parallel training passes
    the mean count over the processes, so that the gradients they average are those of the mean over
    every process's tokens (per-process means would weigh a token by its process's count)."""
    return masked_mean((v - u).pow(2).mean(-1), m, normalizer)


def masked_mean(
    values: torch.Tensor,
    weight: torch.Tensor,
    normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The mean of `values` over the entries `weight` marks (weighted); `normalizer`: as in
    masked_flow_loss, the denominator from this batch's count."""
    count = weight.sum()
    return (values * weight).sum() / (count if normalizer is None else normalizer(count)).clamp(min=1.0)


def time_grid(steps: int) -> torch.Tensor:
    """Uniform Euler schedule 1 -> 0 in `steps` steps (paper A.2: 10)."""
    return torch.linspace(1.0, 0.0, steps + 1)


def euler_step(a: torch.Tensor, v: torch.Tensor, delta: float, m: torch.Tensor) -> torch.Tensor:
    """Alg. 1 lines 6-7 / Eq. (1): masked tokens move by -delta * v, unmasked ones stay bit-for-bit."""
    return torch.where(m[..., None].bool(), a - delta * v, a)


def afm_start(sfm_actions: torch.Tensor, noise: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eq. (2): masked tokens restart from fresh noise, unmasked ones start from (and keep) SFM's value."""
    return torch.where(m[..., None].bool(), noise, sfm_actions)


def rater_mask(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. (3): m_l = 1{p_l < T}."""
    return (confidence < threshold).float()


def pseudo_labels(
    err: torch.Tensor,
    valid: torch.Tensor | None = None,
    alpha: float = 0.01,
    beta: float = 0.98,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Eq. (6): q = 1 - alpha - beta (e - min e) / (max e - min e + eps), per chunk (last dim).

    `valid` (bool, like err) leaves padded and paused tokens out of the chunk's min and max; their
    labels are meaningless and must be masked out of the rater's loss too."""
    if valid is None:
        valid = torch.ones_like(err, dtype=torch.bool)
    lo = err.masked_fill(~valid, float("inf")).min(dim=-1, keepdim=True).values
    hi = err.masked_fill(~valid, float("-inf")).max(dim=-1, keepdim=True).values
    lo, hi = (
        torch.where(valid.any(-1, keepdim=True), lo, 0.0),
        torch.where(valid.any(-1, keepdim=True), hi, 0.0),
    )
    return 1.0 - alpha - beta * (err - lo) / (hi - lo + eps)
