"""scripts/rater_precision.py: the mask-agreement statistics on hand-made confidences, and the bf16
rater it compares leaves the model's own rater in float32 (the default is not changed)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("rater_precision", ROOT / "scripts" / "rater_precision.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("rater_precision", module)
    spec.loader.exec_module(module)
    return module


def test_agreement_counts_the_tokens_and_chunks_whose_mask_differs():
    rp = _script()
    conf32 = np.array([[0.2, 0.6, 0.9], [0.49, 0.51, 0.7]], np.float32)
    conf16 = np.array([[0.2, 0.6, 0.9], [0.51, 0.51, 0.7]], np.float32)  # one token crosses T = 0.5
    a = rp.agreement(conf32, conf16, 0.5)
    assert (a["chunks"], a["tokens"], a["tokens_differing"], a["chunks_differing"]) == (2, 6, 1, 1)
    assert a["token_disagreement"] == 1 / 6 and a["chunk_disagreement"] == 0.5
    assert abs(a["confidence_abs_diff_max"] - 0.02) < 1e-6
    assert a["tokens_near_threshold"] == 2  # 0.49 and 0.51 lie within 0.02 of T


def test_the_bf16_rater_is_a_copy_and_the_twin_counts_differences():
    from asyncvla.backbone import build_tiny_tokenizer
    from asyncvla.config import ModelConfig
    from asyncvla.model import AsyncVLA

    rp = _script()
    cfg = ModelConfig.named("tiny")
    torch.manual_seed(0)
    model = AsyncVLA(cfg, build_tiny_tokenizer(cfg.text.vocab_size)).eval()
    twin = rp.TwinRater(model.rater, 0.5, "bf16")
    assert model.rater.action_proj.weight.dtype == torch.float32  # the default stays float32
    assert twin.r16.action_proj.weight.dtype == torch.bfloat16
    hidden, valid = torch.randn(3, 5, cfg.text.hidden_size), torch.ones(3, 5, dtype=torch.bool)
    actions = torch.randn(3, cfg.chunk_length, cfg.action_dim)
    with torch.inference_mode():
        out = twin(hidden, valid, actions)
        assert torch.equal(out, twin.r16(hidden.bfloat16(), valid, actions.bfloat16()))
    assert (twin.chunks, twin.tokens) == (3, 3 * cfg.chunk_length)
