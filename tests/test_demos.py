"""Demo recording on the real tabletop simulator: a valid asyncvla-episodes dataset that round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asyncvla.training.datasets import read_asyncvla_episodes
from envs.tabletop import make_env
from evalsuite import demos


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "push"
    return demos.record_demos(
        "tabletop", out, episodes_per_task=1, tasks=["push_yellow_right"], image_size=32, workers=0
    )


def test_recorded_dataset_has_the_contract_layout(dataset):
    info = json.loads((dataset / "info.json").read_text())
    assert info["format"] == "asyncvla-episodes" and info["version"] == 1
    assert info["cameras"] == ["agentview", "wrist"]
    assert (info["state_dim"], info["action_dim"], info["fps"], info["num_episodes"]) == (8, 7, 20, 1)
    assert info["split"] == "train" and info["tasks"]["push_yellow_right"]["episodes"] == 1
    env = make_env(image_size=32)
    assert info["render"] == env.render_settings and "shadows" in info["render"]  # how the images look
    env.close()
    files = sorted((dataset / "episodes").glob("*.npz"))
    assert [f.name for f in files] == ["000000.npz"]
    with np.load(files[0], allow_pickle=False) as z:
        t = len(z["action"])
        assert 15 < t < 160
        for cam in info["cameras"]:
            assert z[f"image.{cam}"].shape == (t, 32, 32, 3) and z[f"image.{cam}"].dtype == np.uint8
        assert z["state"].shape == (t, 8) and z["state"].dtype == np.float32
        assert z["action"].dtype == np.float32 and np.abs(z["action"]).max() <= 1.0
        assert str(z["instruction"]) == "push the yellow block to the right"
        assert str(z["task"]) == "push_yellow_right"


def test_dataset_round_trips_through_the_training_reader_and_replays(dataset):
    episodes, info = read_asyncvla_episodes(dataset)
    (ep,) = episodes
    assert ep.instruction == "push the yellow block to the right"
    # step t pairs the observation at t with the action at t: replaying the actions from the
    # same training layout reproduces every recorded state and ends in success
    env = make_env(image_size=32, split="train")
    try:
        obs = env.reset("push_yellow_right", 0, 0)
        success = False
        for t, action in enumerate(ep.action):
            np.testing.assert_allclose(obs.state, ep.state[t], atol=1e-6)
            if t == 0:
                np.testing.assert_array_equal(obs.images["wrist"], ep.images["wrist"][0])
            obs, _, success, _ = env.step(action, render=False)
        assert success
    finally:
        env.close()


def test_recording_refuses_bad_requests(tmp_path, dataset, capsys):
    with pytest.raises(FileExistsError, match="not empty"):
        demos.record_demos("tabletop", dataset, episodes_per_task=1)
    with pytest.raises(KeyError, match="unknown task"):
        demos.record_demos("tabletop", tmp_path / "a", episodes_per_task=1, tasks=["fly"])
    with pytest.raises(ValueError, match="episodes_per_task"):
        demos.record_demos("tabletop", tmp_path / "b", episodes_per_task=0)
    with pytest.raises(ValueError, match="no scripted expert"):
        demos.record_demos("libero_spatial", tmp_path / "d", episodes_per_task=1)
    assert demos.main(["tabletop", "--out", str(tmp_path / "c"), "--tasks", "fly"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'fly'" in err[0]
