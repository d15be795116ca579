"""The tiny AsyncVLA model: cache reuse, AFM (Alg. 1) properties, masks, batching, the 3B config path."""

import numpy as np
import pytest
import torch

from asyncvla import flow
from asyncvla.backbone import Preprocessor, build_tiny_tokenizer
from asyncvla.config import ModelConfig
from asyncvla.model import AsyncVLA, make_attention_mask


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig.named("tiny")
    tok = build_tiny_tokenizer(cfg.text.vocab_size)
    torch.manual_seed(0)
    model = AsyncVLA(cfg, tok).eval()
    pre = Preprocessor(cfg, tok)
    rng = np.random.default_rng(0)
    images = [{c: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for c in cfg.cameras} for _ in range(2)]
    # different instruction lengths: the batch is left-padded
    inputs = pre(
        images,
        ["pick up the red cube", "open the top drawer of the cabinet and stop"],
        rng.normal(size=(2, 8)),
    )
    return model, pre, inputs


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _snapshot(cache):
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def test_cached_suffix_equals_full_forward_and_cache_unchanged(tiny):
    model, _, inputs = tiny
    assert not inputs.valid.all()  # padding is exercised
    with torch.no_grad():
        prefix = model.embed_prefix(inputs)
        encoded = model.encode_prefix(prefix)
        cache = encoded.cache
        before = _snapshot(cache)
        g = torch.Generator().manual_seed(3)
        a, tau_m = torch.randn(2, 8, 7, generator=g), torch.rand(2, 8, generator=g)
        cached = model.velocity(cache, prefix, a, tau_m)
        full = model.full_velocity(prefix, a, tau_m)
        assert (cached - full).abs().max().item() < 1e-5
        ones = torch.ones(2, 8)
        sfm = model.integrate(encoded, a, ones)
        m = torch.tensor([[1, 0, 0, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0, 1]], dtype=torch.float32)
        model.integrate(encoded, flow.afm_start(sfm, torch.randn(2, 8, 7), m), m)
    after = _snapshot(cache)
    assert len(after) == len(before)
    for (k0, v0), (k1, v1) in zip(before, after):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)  # same length, same values


def test_afm_keeps_unmasked_tokens_bit_for_bit(tiny):
    model, _, inputs = tiny
    r = model.sample_actions(inputs, _gens([1, 2]), mode="random-mask")
    keep = r.mask == 0
    assert keep.any() and (~keep).any()
    assert torch.equal(r.actions[keep], r.sfm[keep])
    assert not torch.allclose(r.actions[~keep], r.sfm[~keep])


def test_afm_with_all_ones_mask_equals_sfm(tiny):
    model, _, inputs = tiny
    with torch.no_grad():
        prefix = model.embed_prefix(inputs)
        encoded = model.encode_prefix(prefix)
        n = torch.randn(2, 8, 7, generator=torch.Generator().manual_seed(5))
        ones = torch.ones(2, 8)
        sfm = model.integrate(encoded, n, ones)
        # AFM from an all-ones mask: every token restarts from the same noise and moves
        afm = model.integrate(encoded, flow.afm_start(torch.zeros_like(n), n, ones), ones)
    assert torch.equal(afm, sfm)


def test_modes_share_sfm_and_rater_mask_follows_threshold(tiny):
    model, _, inputs = tiny
    runs = {
        mode: model.sample_actions(inputs, _gens([7, 8]), mode=mode)
        for mode in ("sfm", "asyncvla", "random-mask")
    }
    assert torch.equal(runs["sfm"].sfm, runs["asyncvla"].sfm) and torch.equal(
        runs["sfm"].sfm, runs["random-mask"].sfm
    )
    assert torch.equal(runs["sfm"].actions, runs["sfm"].sfm) and runs["sfm"].mask.sum() == 0
    conf = runs["asyncvla"].confidence
    assert torch.equal(runs["asyncvla"].mask, (conf < 0.5).float())
    none = model.sample_actions(inputs, _gens([7, 8]), mode="asyncvla", threshold=1e-9)
    assert none.mask.sum() == 0 and torch.equal(none.actions, none.sfm)
    every = model.sample_actions(inputs, _gens([7, 8]), mode="asyncvla", threshold=1.0 - 1e-9)
    assert every.mask.all()


def test_chunk_does_not_depend_on_batching(tiny):
    model, pre, inputs = tiny
    both = model.sample_actions(inputs, _gens([11, 12]), mode="asyncvla")
    rng = np.random.default_rng(0)
    images = [
        {c: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for c in model.cfg.cameras} for _ in range(2)
    ]
    state = rng.normal(size=(2, 8))
    second = pre(images[1:], ["open the top drawer of the cabinet and stop"], state[1:])
    alone = model.sample_actions(second, _gens([12]), mode="asyncvla")
    assert (alone.actions[0] - both.actions[1]).abs().max().item() < 1e-4


def test_attention_mask_pattern():
    valid = torch.tensor([[False, True, True, True, True]])
    starts = torch.tensor([True, True, True, True, False])  # 3 causal prefix tokens + a 2-token block
    m = make_attention_mask(valid, starts)[0]
    assert m[2].tolist() == [False, True, True, False, False]  # causal prefix, pad excluded
    assert m[1, 2].item() is False  # prefix never sees later tokens
    assert m[3].tolist() == [False, True, True, True, True] and m[4].tolist() == [
        False,
        True,
        True,
        True,
        True,
    ]
    assert m[0].tolist() == [True, False, False, False, False]  # a pad row sees only itself


def test_3b_config_matches_qwen25_vl_3b_and_scaled_copy_builds_in_bf16():
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = ModelConfig.named("qwen2.5-vl-3b")
    # the real Qwen2.5 vocabulary's special-token ids
    ids = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652}
    ids |= {"<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    hf = cfg.backbone_config(ids)
    t, v = hf.text_config, hf.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (
        2048,
        36,
        16,
        2,
    )
    assert (t.intermediate_size, t.vocab_size, t.rope_parameters["mrope_section"]) == (
        11008,
        151936,
        [16, 24, 24],
    )
    assert (v.depth, v.hidden_size, v.out_hidden_size, v.fullatt_block_indexes) == (
        32,
        1280,
        2048,
        [7, 15, 23, 31],
    )
    assert hf.image_token_id == 151655
    # the same code path at 1/16 width and 2 layers: random init directly in bf16
    small = ModelConfig.named("qwen2.5-vl-3b")
    small.text.hidden_size, small.text.num_layers, small.text.intermediate_size = 128, 2, 688
    small.text.num_heads, small.text.num_kv_heads = 4, 2
    small.text.mrope_section = [4, 6, 6]  # head_dim 32: sums to 16, the 3B's 16:24:24 proportions
    small.vision.depth, small.vision.hidden_size, small.vision.intermediate_size, small.vision.num_heads = (
        4,
        80,
        214,
        1,
    )
    small.vision.fullatt_block_indexes = [1, 3]
    small.rater.num_heads, small.rater.ffn_size, small.rater.num_layers = 4, 384, 1
    small.rater.hidden_size = 192  # wider than the LM, as the 3B's 3,072 vs 2,048
    small.image_size = 56
    small.validate()
    tok = build_tiny_tokenizer(512)
    small.text.vocab_size = 512
    model = AsyncVLA(small, tok, dtype=torch.bfloat16).eval()
    assert isinstance(model.vlm, Qwen2_5_VLForConditionalGeneration)
    rater = {id(p) for p in model.rater.parameters()}
    assert {p.dtype for p in model.parameters() if id(p) not in rater} == {torch.bfloat16}
    assert {p.dtype for p in model.rater.parameters()} == {torch.float32}  # the rater stays fp32
    pre = Preprocessor(small, tok)
    rng = np.random.default_rng(0)
    inputs = pre(
        [{c: rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for c in small.cameras}],
        ["go"],
        np.zeros((1, 8)),
    )
    r = model.sample_actions(inputs, _gens([0]), mode="asyncvla")
    assert r.actions.shape == (1, 8, 7) and torch.isfinite(r.actions).all()


def test_the_3b_raters_size_matches_the_paper():
    """Paper A.3: 4 layers, 32 heads, FFN 6,144, 308M parameters (docs/model.md: the width reading)."""
    from asyncvla.config import ModelConfig
    from asyncvla.rater import ConfidenceRater

    with torch.device("meta"):
        rater = ConfidenceRater(ModelConfig.named("qwen2.5-vl-3b"))
    params = sum(p.numel() for p in rater.parameters())
    assert 308.0e6 < params < 308.6e6, params


def test_the_rater_runs_in_float32_in_a_bf16_model():
    from asyncvla.backbone import build_tiny_tokenizer
    from asyncvla.config import ModelConfig
    from asyncvla.model import AsyncVLA

    cfg = ModelConfig.named("tiny")
    model = AsyncVLA(cfg, build_tiny_tokenizer(cfg.text.vocab_size), dtype=torch.bfloat16)
    assert {p.dtype for p in model.rater.parameters()} == {torch.float32}
    assert model.action_in_proj.weight.dtype == torch.bfloat16
    hidden = torch.randn(2, 5, cfg.text.hidden_size, dtype=torch.bfloat16)
    p = model.rater(
        hidden, torch.ones(2, 5, dtype=torch.bool), torch.randn(2, cfg.chunk_length, cfg.action_dim)
    )
    assert p.dtype == torch.float32 and p.shape == (2, cfg.chunk_length)


def test_the_rater_ignores_bf16_autocast():
    """Training runs the model under bf16 autocast on CUDA; the rater must still compute in float32
    (autocast on the CPU changes nn.Linear the same way, so the CPU shows it)."""
    from asyncvla.config import ModelConfig
    from asyncvla.rater import ConfidenceRater

    cfg = ModelConfig.named("tiny")
    torch.manual_seed(0)
    rater = ConfidenceRater(cfg)
    args = (
        torch.randn(2, 5, cfg.text.hidden_size),
        torch.ones(2, 5, dtype=torch.bool),
        torch.randn(2, cfg.chunk_length, cfg.action_dim),
    )
    reference = rater(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = rater(*args)
        assert torch.nn.Linear(4, 4)(torch.randn(1, 4)).dtype == torch.bfloat16  # autocast is on
    assert torch.equal(p, reference)
