"""Checkpoint directories: round trip, the policy contract, and every bad-checkpoint case."""

import json

import numpy as np
import pytest
import torch

import asyncvla
from asyncvla.backbone import build_tiny_tokenizer
from asyncvla.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from asyncvla.config import ModelConfig
from asyncvla.model import AsyncVLA
from asyncvla.normalize import NormStats
from envs.base import Observation


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = ModelConfig.named("tiny")
    tok = build_tiny_tokenizer(cfg.text.vocab_size)
    torch.manual_seed(0)
    model = AsyncVLA(cfg, tok)
    stats = NormStats(
        state_mean=[0.1] * 8,
        state_std=[2.0] * 8,
        action_mean=[0.5, -0.5, 0, 0, 0, 0, 1.0],
        action_std=[0.1] * 7,
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, tok, stats), model


def _obs(seed, instruction="put the cube in the bowl"):
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for c in ("agentview", "wrist")}
    return Observation(images=images, state=rng.normal(size=8).astype(np.float32), instruction=instruction)


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_save_load_identical_actions_and_no_unpickling(ckpt, monkeypatch):
    path, model = ckpt
    assert sum(f.stat().st_size for f in path.iterdir()) < 20e6
    for name in ("pickle.load", "pickle.loads", "torch.load"):  # loading must never unpickle
        monkeypatch.setattr(name, lambda *a, **k: pytest.fail("checkpoint loading unpickled something"))
    loaded, _, stats = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    policy = asyncvla.load(str(path), mode="asyncvla")
    obs = [_obs(1), _obs(2, "open the drawer")]
    a1 = policy.act(obs, ["ep0@0", "ep1@0"])
    a2 = asyncvla.load(str(path), mode="asyncvla").act(obs, ["ep0@0", "ep1@0"])
    assert a1.dtype == np.float32 and a1.shape == (2, 8, 7)
    assert np.array_equal(a1, a2)


def test_policy_contract_keys_and_normalisation(ckpt):
    from evalsuite.policy import Policy, seed_from_key

    path, _ = ckpt
    policy = asyncvla.load(str(path), mode="random-mask", threshold=0.5)
    assert isinstance(policy, Policy) and policy.chunk_length == 8 and policy.action_dim == 7
    assert asyncvla.policy.seed_from_key("ep@3") == seed_from_key("ep@3")
    batch = policy.act([_obs(1), _obs(2)], ["a@0", "b@0"])
    alone = policy.act([_obs(2)], ["b@0"])
    assert np.abs(batch[1] - alone[0]).max() < 1e-4  # noise comes from the key, not the batch position
    assert not np.allclose(policy.act([_obs(1)], ["a@8"])[0], batch[0])  # a new key draws new noise
    ex = policy.explain(_obs(1), "a@0")
    assert np.abs(ex.afm_actions - batch[0]).max() < 1e-4
    keep = ex.mask == 0
    assert np.array_equal(ex.afm_actions[keep], ex.sfm_actions[keep])
    # un-normalised with the checkpoint statistics: mean + std * (model output)
    raw = (
        policy.model.sample_actions(
            policy.preprocessor(
                [_obs(1).images], [_obs(1).instruction], policy.stats.normalize_state(_obs(1).state)[None]
            ),
            [torch.Generator().manual_seed(seed_from_key("a@0"))],
            mode="random-mask",
        )
        .actions[0]
        .numpy()
    )
    assert np.allclose(batch[0], raw * 0.1 + np.array([0.5, -0.5, 0, 0, 0, 0, 1.0]), atol=1e-5)


def test_policy_rejects_bad_observations_and_options(ckpt):
    path, _ = ckpt
    policy = asyncvla.load(str(path))
    bad_state = _obs(0)
    bad_state.state = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="5-D state"):
        policy.act([bad_state], ["k@0"])
    no_wrist = _obs(0)
    del no_wrist.images["wrist"]
    with pytest.raises(ValueError, match="no image for camera 'wrist'"):
        policy.act([no_wrist], ["k@0"])
    with pytest.raises(ValueError, match="one key per observation"):
        policy.act([_obs(0)], [])
    with pytest.raises(ValueError, match="unknown inference mode"):
        asyncvla.load(str(path), mode="afm-only")
    with pytest.raises(ValueError, match=r"threshold T must lie in \(0, 1\)"):
        asyncvla.load(str(path), threshold=1.5)


@pytest.mark.parametrize(
    "name", ["config.json", "model.safetensors", "rater.safetensors", "norm_stats.json", "tokenizer.json"]
)
def test_missing_file_is_named(ckpt, tmp_path, name):
    bad = _copy(ckpt[0], tmp_path / "bad")
    (bad / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name} is missing"):
        asyncvla.load(str(bad))


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        asyncvla.load(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["model.safetensors", "rater.safetensors"])
def test_truncated_weights_are_named(ckpt, tmp_path, name):
    bad = _copy(ckpt[0], tmp_path / "bad")
    data = (bad / name).read_bytes()
    (bad / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{name}: unreadable, truncated"):
        asyncvla.load(str(bad))


def test_config_mismatching_weights_is_named(ckpt, tmp_path):
    bad = _copy(ckpt[0], tmp_path / "bad")
    data = json.loads((bad / "config.json").read_text())
    data["model"]["action_dim"] = 6
    (bad / "config.json").write_text(json.dumps(data))
    data["model"]["action_dim"], data["model"]["state_dim"] = 7, 8
    # action_dim 6 -> the FM head's shape and the statistics disagree; the statistics are checked first
    with pytest.raises(CheckpointError, match=r"norm_stats.json: action_mean has 7 values, expected 6"):
        asyncvla.load(str(bad))
    stats = json.loads((bad / "norm_stats.json").read_text())
    stats["action_mean"], stats["action_std"] = stats["action_mean"][:6], stats["action_std"][:6]
    (bad / "norm_stats.json").write_text(json.dumps(stats))
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors: tensor action_in_proj.weight has shape \(128, 7\), config.json expects \(128, 6\)",
    ):
        asyncvla.load(str(bad))


def test_wrong_format_and_bad_json_are_named(ckpt, tmp_path):
    bad = _copy(ckpt[0], tmp_path / "bad")
    (bad / "config.json").write_text(json.dumps({"format": "lerobot", "version": 1}))
    with pytest.raises(CheckpointError, match="config.json: format is 'lerobot'"):
        asyncvla.load(str(bad))
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not readable JSON"):
        asyncvla.load(str(bad))
    good = _copy(ckpt[0], tmp_path / "bad2")
    (good / "norm_stats.json").write_text("[]")
    with pytest.raises(CheckpointError, match="norm_stats.json: unreadable normalisation statistics"):
        asyncvla.load(str(good))


def test_a_large_resize_from_the_training_images_is_warned_about_once(caplog):
    from types import SimpleNamespace

    import numpy as np

    import asyncvla

    policy = asyncvla.load(str(asyncvla.demo_checkpoint()), mode="sfm")
    policy.model.training_record = {"data_image_size": [56, 56]}
    cfg = policy.model.cfg
    obs = SimpleNamespace(
        images={c: np.zeros((256, 256, 3), np.uint8) for c in cfg.cameras},
        state=np.zeros(cfg.state_dim, np.float32),
        instruction="put the red block on the plate",
    )
    policy.act([obs], ["k@0"])
    policy.act([obs], ["k@1"])
    warnings = [r for r in caplog.records if "the checkpoint was trained on 56x56" in r.getMessage()]
    assert len(warnings) == len(cfg.cameras) and "4.6x apart" in warnings[0].getMessage()
