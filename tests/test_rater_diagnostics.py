"""The rater diagnostics (scripts/rater_diagnostics.py), the regenerated-token counts in the run's
tables, and random-mask's rate (issue 42), on a tiny random model.

The model is untrained: what is tested is the bookkeeping (which tokens count as regenerated,
how AUROC ranks them), with an oracle rater that reads each token's true error, so the answer is
known without training anything."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from asyncvla import flow
from asyncvla.backbone import Preprocessor, build_tiny_tokenizer
from asyncvla.config import ModelConfig
from asyncvla.fast.sampler import FastSampler
from asyncvla.model import AsyncVLA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import rater_diagnostics as diag  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig.named("tiny")
    tok = build_tiny_tokenizer(cfg.text.vocab_size)
    torch.manual_seed(0)
    return AsyncVLA(cfg, tok).eval(), tok


def _batch(cfg, tok, n=6, seed=0):
    rng = np.random.default_rng(seed)
    images = [
        {c: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras}
        for _ in range(n)
    ]
    inputs = Preprocessor(cfg, tok)(images, ["pick up the red cube"] * n, rng.normal(size=(n, cfg.state_dim)))
    expert = torch.from_numpy(rng.normal(size=(n, cfg.chunk_length, cfg.action_dim))).float()
    return inputs, expert


class OracleRater(torch.nn.Module):
    """Scores each token by its true error to the expert: p = exp(-error) (or 1 - that, reversed),
    so its ranking of the tokens is exactly the error's."""

    def __init__(self, expert, reverse=False):
        super().__init__()
        self.expert, self.reverse = expert, reverse

    def forward(self, hidden, valid, actions):
        p = torch.exp(-((actions - self.expert) ** 2).mean(-1))
        return 1 - p if self.reverse else p


def _arrays(model, tok, reverse):
    inputs, expert = _batch(model.cfg, tok)
    saved = model.rater
    model.rater = OracleRater(expert, reverse)
    try:
        out = diag.chunk_batch(model, inputs, expert, [f"t/{i}" for i in range(len(expert))], 0.5, 0.25)
    finally:
        model.rater = saved
    arrays = {k: v.numpy() for k, v in out.items()}
    arrays["expert"] = expert.numpy()
    arrays["valid"] = np.ones(expert.shape[:2], bool)
    arrays["gripper_switch"] = np.zeros(expert.shape[:2], bool)
    arrays["chunk"] = np.repeat(np.arange(len(expert))[:, None], expert.shape[1], 1)
    return arrays


def test_auroc_of_an_oracle_rater_is_one_and_of_a_reversed_one_zero(tiny):
    model, tok = tiny
    for reverse, expected in ((False, 1.0), (True, 0.0)):
        diagnostics, _, _ = diag.analyse(_arrays(model, tok, reverse), bad_quantile=0.75)
        row = diagnostics[diagnostics["quantity"].str.startswith("AUROC")]
        assert row["value"].item() == pytest.approx(expected)


def test_auroc_counts_ties_half_and_needs_both_classes():
    assert diag.auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert np.isnan(diag.auroc(np.array([1.0, 2.0]), np.array([True, True])))
    assert diag.auroc(np.array([0.1, 0.9, 0.4]), np.array([False, True, False])) == 1.0


def test_regenerated_fraction_is_the_masks_and_kept_tokens_never_move(tiny):
    model, tok = tiny
    arrays = _arrays(model, tok, reverse=False)
    m = arrays["mask:paper"].astype(bool)
    # the oracle's mask is known independently of the script: p = exp(-error) < T
    p = np.exp(-((arrays["sfm"] - arrays["expert"]) ** 2).mean(-1))
    np.testing.assert_array_equal(m, p < 0.5)
    assert 0 < m.mean() < 1  # both kinds present, or the test proves nothing
    diagnostics, variants, _ = diag.analyse(arrays, bad_quantile=0.75)
    frac = diagnostics.set_index("quantity").loc["regenerated fraction (rater, T)", "value"]
    assert frac == pytest.approx(m.mean())
    paper = variants.set_index("variant").loc["paper"]
    assert paper["regenerated %"] == pytest.approx(100 * m.mean())
    # Alg. 1: the kept tokens are SFM's, bit for bit; the resample variant takes the second draw's
    np.testing.assert_array_equal(arrays["paper"][~m], arrays["sfm"][~m])
    np.testing.assert_array_equal(arrays["resample"][m], arrays["sfm2"][m])


def test_integrate_from_with_the_mask_as_start_times_is_alg1(tiny):
    """The soft variants' integrator reduces to Alg. 1 when kept tokens start at 0 and masked at 1."""
    model, tok = tiny
    inputs, _ = _batch(model.cfg, tok, n=2)
    with torch.inference_mode():
        prefix = model.embed_prefix(inputs)
        enc = model.encode_prefix(prefix)
        g = torch.Generator().manual_seed(0)
        sfm = torch.randn(2, model.cfg.chunk_length, model.cfg.action_dim, generator=g)
        noise = torch.randn(sfm.shape, generator=g)
        m = (torch.rand(sfm.shape[:2], generator=g) < 0.5).float()
        start = flow.afm_start(sfm, noise, m)
        torch.testing.assert_close(diag.integrate_from(model, enc, start, m), model.integrate(enc, start, m))


def test_cluster_bootstrap_interval_contains_the_mean_and_is_degenerate_for_constants():
    mean, lo, hi = diag.cluster_bootstrap(np.ones(10), np.arange(10))
    assert mean == lo == hi == 1.0
    rng = np.random.default_rng(0)
    values = rng.normal(size=200)
    mean, lo, hi = diag.cluster_bootstrap(values, np.repeat(np.arange(50), 4))
    assert lo < mean < hi


@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0])
def test_random_mask_regenerates_tokens_at_the_given_rate(tiny, rate):
    """random-mask mode's mask is the shared draw below `mask_rate`, on both inference paths."""
    model, tok = tiny
    inputs, _ = _batch(model.cfg, tok, n=4)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    _, _, draw = model._draw_noise(gens())
    eager = model.sample_actions(inputs, gens(), "random-mask", mask_rate=rate)
    np.testing.assert_array_equal(eager.mask.numpy(), (draw < rate).float().numpy())
    fast = FastSampler(model, graphs=False).sample_actions(inputs, gens(), "random-mask", mask_rate=rate)
    torch.testing.assert_close(fast.actions, eager.actions, rtol=0, atol=0)


def test_run_tables_report_the_regenerated_share_per_chunk():
    """A run's table reports what the policy said of each chunk (evalsuite/run/episode.py)."""
    from evalsuite.tables import regenerated_tables

    records = pd.DataFrame(
        {
            "suite": ["s", "s"],
            "task": ["a", "b"],
            "mode": ["asyncvla", "asyncvla"],
            "regenerated_per_call": [[0, 2, 4], [8]],
            "chunk_tokens": [8, 8],
        }
    )
    tables = regenerated_tables(records)
    summary = tables["regenerated"].set_index("task")
    assert summary.loc["a", "regenerated % (mean)"] == pytest.approx(100 * 6 / 24)
    assert summary.loc["all tasks", "regenerated % (mean)"] == pytest.approx(100 * 14 / 32)
    assert summary.loc["all tasks", "chunks with none %"] == pytest.approx(25.0)
    dist = tables["regenerated_distribution"].set_index("task")
    assert dist.loc["all tasks", "8 of 8 %"] == pytest.approx(25.0)
    assert dist.loc["all tasks"].drop("suite").sum() == pytest.approx(100.0)


def test_an_episode_records_each_calls_regenerated_count():
    """What the policy says of each chunk (chunk_info) goes into the record, call by call."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from toy_suite import SUITES, GainPolicy, ToyEnv

    from evalsuite.records import EpisodeSpec
    from evalsuite.run.episode import run_episode

    said = {}

    class Saying(GainPolicy):
        def act(self, observations, keys):
            for k in keys:  # a different count per call, as a rater's would be
                said[k] = {"regenerated": len(said) % 5, "tokens": self.chunk_length}
            return super().act(observations, keys)

    policy = Saying(0.05)  # slow: several calls before the step budget
    spec = EpisodeSpec(suite="toy", task="reach", episode_index=0, seed=0, variant="", mode="asyncvla")
    result = run_episode(ToyEnv(), SUITES[0], spec, policy.act, None, chunk_info=said.get)
    info = result.record.info
    assert info["regenerated_per_call"] == [v["regenerated"] for v in said.values()]
    assert len(said) == info["policy_calls"] > 1 and info["chunk_tokens"] == 4
    # a policy that says nothing leaves the record as it was
    plain = run_episode(ToyEnv(), SUITES[0], spec, GainPolicy(0.05).act, None)
    assert "regenerated_per_call" not in plain.record.info


def test_rater_resample_takes_the_flagged_tokens_from_a_fresh_sfm_draw(tiny):
    """rater-resample (issue 42's best offline correction, not the paper's): the rater's mask as in
    asyncvla mode, the flagged tokens replaced by an SFM draw from AFM's noise, the rest SFM's."""
    model, tok = tiny
    inputs, _ = _batch(model.cfg, tok, n=4)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    full = model.sample_actions(inputs, gens(), "asyncvla", threshold=0.6)
    out = model.sample_actions(inputs, gens(), "rater-resample", threshold=0.6)
    torch.testing.assert_close(out.mask, full.mask, rtol=0, atol=0)  # same SFM chunk, same rater
    assert 0 < out.mask.mean() < 1
    _, n_afm, _ = model._draw_noise(gens())
    with torch.inference_mode():
        enc = model.encode_prefix(model.embed_prefix(inputs))
        fresh = model.integrate(enc, n_afm, torch.ones(out.mask.shape))
    m = out.mask.bool()
    torch.testing.assert_close(out.actions[m], fresh[m], rtol=0, atol=0)
    torch.testing.assert_close(out.actions[~m], out.sfm[~m], rtol=0, atol=0)
    fast = FastSampler(model, graphs=False).sample_actions(inputs, gens(), "rater-resample", threshold=0.6)
    torch.testing.assert_close(fast.actions, out.actions, rtol=0, atol=0)
