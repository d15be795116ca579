"""The flow-matching math of asyncvla/flow.py on small real tensors (paper Eq. 1-6, Alg. 1-2)."""

import torch

from asyncvla import flow


def test_eq5_endpoints_and_mask():
    g = torch.Generator().manual_seed(0)
    a, n = torch.randn(3, 8, 7, generator=g), torch.randn(3, 8, 7, generator=g)
    ones = torch.ones(3, 8)
    assert torch.equal(flow.noisy_actions(a, n, torch.zeros(3), ones), a)  # tau = 0: the action
    assert torch.allclose(flow.noisy_actions(a, n, torch.ones(3), ones), n)  # tau = 1: the noise
    m = torch.zeros(3, 8)
    m[:, 2] = 1
    mixed = flow.noisy_actions(a, n, torch.full((3,), 0.25), m)
    assert torch.equal(mixed[:, [0, 1, 3]], a[:, [0, 1, 3]])  # unmasked tokens stay clean
    assert torch.allclose(mixed[:, 2], 0.75 * a[:, 2] + 0.25 * n[:, 2])


def test_beta_and_bernoulli_sampling_statistics():
    g = torch.Generator().manual_seed(1)
    tau = flow.sample_tau(200_000, g)
    # Beta(1.5, 1): mean a/(a+b) = 0.6, variance ab/((a+b)^2 (a+b+1)) = 0.0686
    assert abs(tau.mean().item() - 0.6) < 0.005
    assert abs(tau.var().item() - 1.5 / (2.5**2 * 3.5)) < 0.003
    assert tau.min() >= 0 and tau.max() <= 1
    m = flow.sample_train_mask(50_000, 8, g)
    frac = m.mean(1)
    assert abs(m.mean().item() - 0.5) < 0.01  # E[y] = 1/2
    # y ~ U(0,1) per sample: the per-sample mask fraction is spread uniformly, not concentrated at 0.5
    assert abs(frac.var().item() - (1 / 12 + 1 / 6 / 8)) < 0.01  # Var(y) + E[y(1-y)]/L
    assert (frac == 1).float().mean() > 0.08  # all-masked (pure SFM) samples occur: P = 1/9


def test_loss_counts_only_masked_tokens():
    u = torch.zeros(1, 4, 2)
    v = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [100.0, 100.0], [3.0, 3.0]]])
    m = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert abs(flow.masked_flow_loss(v, u, m).item() - (1 + 4 + 9) / 3) < 1e-6
    assert flow.masked_flow_loss(v, u, torch.zeros(1, 4)).item() == 0.0


def test_euler_step_moves_only_masked_tokens():
    a, v = torch.randn(2, 8, 7), torch.randn(2, 8, 7)
    m = torch.tensor([[1, 0, 1, 0, 0, 0, 0, 1], [0] * 8], dtype=torch.float32)
    out = flow.euler_step(a, v, 0.1, m)
    keep = m[..., None].expand_as(a) == 0
    assert torch.equal(out[keep], a[keep])
    assert torch.allclose(out[~keep], (a - 0.1 * v)[~keep])
    grid = flow.time_grid(10)
    assert grid[0] == 1 and grid[-1] == 0 and len(grid) == 11


def test_pseudo_labels_range_and_extremes():
    err = torch.tensor([[0.5, 0.1, 2.0, 0.7], [3.0, 3.0, 3.0, 3.0]])
    q = flow.pseudo_labels(err)
    assert q.min() >= 0.01 - 1e-6 and q.max() <= 0.99 + 1e-6
    assert abs(q[0, 1].item() - 0.99) < 1e-6  # min error -> 1 - alpha
    assert abs(q[0, 2].item() - 0.01) < 1e-5  # max error -> 1 - alpha - beta
    assert q[0].argsort().tolist() == err[0].argsort(descending=True).tolist()
    assert torch.allclose(q[1], torch.full((4,), 0.99))  # equal errors: eps keeps it finite
    assert torch.equal(
        flow.rater_mask(torch.tensor([0.2, 0.5, 0.7, 0.49]), 0.5), torch.tensor([1.0, 0.0, 0.0, 1.0])
    )
