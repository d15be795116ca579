"""`--policy vla-eval+ws://`: our harness evaluating a model server of the peer harness vla-eval
(0.8.0, the real package: its own `PredictModelServer`, its `serve_background`, its codec).

The server serves `probe_chunk`, a pure function of what vla-eval's benchmark sends (the state, the
instruction, both images), with `chunk_size=8`: it buffers each chunk and answers one action per
observation. The same function as a `module:Class` policy in this process, executing its whole
8-step chunk, must give the same trajectories state for state: the server then saw exactly the
observations an in-process policy sees, at the same steps, and its actions were executed as they
came back.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

vla_eval = pytest.importorskip("vla_eval")

from vla_eval.api import serve_background  # noqa: E402
from vla_eval.model_servers.predict import PredictModelServer  # noqa: E402
from vla_eval.specs import (  # noqa: E402
    GRIPPER_CLOSE_POS,
    IMAGE_RGB,
    LANGUAGE,
    POSITION_DELTA,
    RAW,
    ROTATION_AA,
    ROTATION_EULER,
    STATE_EEF_POS_AA_GRIP,
    check_specs,
)

from evalsuite.cli import main  # noqa: E402
from evalsuite.serving import vla_eval_suites as suites  # noqa: E402
from evalsuite.serving.vla_eval_suites import canonical_axis_angle, spec_conflicts, spec_mismatches  # noqa: E402

TASKS = ["--tasks", "push_yellow_right,red_on_blue_plate", "--episodes-per-task", "1", "--max-steps", "20"]
RUN = ["tabletop", *TASKS, "--video", "none", "-q", "--workers", "0"]
CHUNK = 8


def probe_chunk(state, instruction: str, agentview: np.ndarray, wrist: np.ndarray) -> np.ndarray:
    """(8, 7): steps towards a point chosen by the instruction's CRC-32, turned by the images' means
    (a flipped, swapped or re-encoded image changes them), the gripper closing below 5 cm."""
    crc = zlib.crc32(instruction.encode())
    target = np.array([0.4 + 0.1 * ((crc & 0xFF) / 255), -0.1 + 0.2 * (((crc >> 8) & 0xFF) / 255), 0.03])
    position = np.asarray(state, dtype=np.float64)[:3]
    action = np.zeros(7)
    action[:3] = np.clip((target - position) * 20, -1, 1)
    action[3] = agentview[: agentview.shape[0] // 2].mean() / 255 - 0.5  # the top half: a flip shows
    action[5] = wrist[:, : wrist.shape[1] // 2].mean() / 255 - 0.5
    action[6] = 1.0 if position[2] < 0.05 else -1.0
    chunk = np.repeat(action[None], CHUNK, axis=0)
    chunk[:, :3] *= np.linspace(1.0, 0.5, CHUNK)[:, None]
    return chunk.astype(np.float32)


class ProbePolicy:
    """`probe_chunk` in this process (`--policy test_vla_eval_client:ProbePolicy`)."""

    action_dim = 7
    chunk_length = CHUNK

    def act(self, observations, keys):
        return np.stack(
            [
                probe_chunk(o.state, o.instruction, o.images["agentview"], o.images["wrist"])
                for o in observations
            ]
        )

    def reset(self, episode_key: str) -> None:
        pass


class ProbeServer(PredictModelServer):
    """vla-eval's own model-server base class around `probe_chunk`; records what it is sent."""

    def __init__(self, action_spec=None, observation_params=None):
        super().__init__(chunk_size=CHUNK)
        self.events: list[tuple] = []
        self.predicted = 0
        self._action_spec = action_spec
        self._observation_params = observation_params

    def predict(self, obs, ctx):
        self.predicted += 1
        images = obs["images"]
        return {
            "actions": probe_chunk(
                obs["states"], obs["task_description"], images["agentview"], images["wrist"]
            )
        }

    async def on_episode_start(self, config, ctx):
        self.events.append(("start", config))
        await super().on_episode_start(config, ctx)

    async def on_episode_end(self, result, ctx):
        self.events.append(("end", result))
        await super().on_episode_end(result, ctx)

    async def on_observation(self, obs, ctx):
        self.events.append(("obs", obs))
        await super().on_observation(obs, ctx)

    def get_observation_params(self):
        return self._observation_params or {"send_wrist_image": True, "send_state": True}

    def get_action_spec(self):
        return self._action_spec or {
            "position": POSITION_DELTA,
            "rotation": ROTATION_AA,
            "gripper": GRIPPER_CLOSE_POS,
        }

    def get_observation_spec(self):
        return {
            "agentview": IMAGE_RGB,
            "wrist": IMAGE_RGB,
            "state": STATE_EEF_POS_AA_GRIP,
            "language": LANGUAGE,
        }


def final_states(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    return {r["task"]: (r["success"], r["steps"], r["info"]["final_state"]) for r in records}


def test_a_vla_eval_model_server_gives_the_in_process_trajectories(tmp_path):
    server = ProbeServer()
    with serve_background(server) as handle:
        url = "vla-eval+" + handle.url
        assert main([*RUN, "--policy", url, "--out", str(tmp_path / "peer")]) == 0
    assert main([*RUN, "--policy", "test_vla_eval_client:ProbePolicy", "--out", str(tmp_path / "ours")]) == 0
    peer, ours = final_states(tmp_path / "peer"), final_states(tmp_path / "ours")
    assert peer == ours and len(peer) == 2 and all(steps == 20 for _, steps, _ in peer.values())

    # what the server was sent: vla-eval's LIBERO-style observation, one per step, in episodes
    kinds = [e[0] for e in server.events]
    assert kinds[:22] == ["start", *["obs"] * 20, "end"] and kinds[22] == "start"
    assert kinds.count("obs") == 40 and server.predicted == 6  # steps 0, 8, 16 of each episode
    first = server.events[0][1]["task"]
    assert first["episode_idx"] == 0 and first["suite"] == "tabletop" and isinstance(first["task_id"], int)
    obs = server.events[1][1]
    assert sorted(obs) == ["images", "states", "task_description"] and sorted(obs["images"]) == [
        "agentview",
        "wrist",
    ]
    assert obs["images"]["agentview"].dtype == np.uint8 and obs["images"]["agentview"].shape == (128, 128, 3)
    assert obs["states"].dtype == np.float64 and obs["states"].shape == (8,)
    assert obs["task_description"] in (
        "push the yellow block to the right",
        "put the red block on the blue plate",
    )
    assert server.events[21][1] == {"steps": 20}

    manifest = json.loads((tmp_path / "peer" / "run.json").read_text())
    record = manifest["policy"]["vla_eval"]
    assert (
        record["server"]["model_server"] == "ProbeServer" and record["server"]["harness_version"] == "0.8.0"
    )
    assert record["server"]["observation_params"] == {"send_wrist_image": True, "send_state": True}
    assert record["suites"]["tabletop"]["params"] == {"send_wrist_image": True, "send_state": True}


@pytest.mark.slow
def test_two_ray_env_workers_each_hold_a_session_and_give_the_in_process_trajectories(tmp_path):
    server = ProbeServer()
    with serve_background(server) as handle:
        ray_run = [
            *RUN[:-2],
            "--workers",
            "2",
            "--policy",
            "vla-eval+" + handle.url,
            "--out",
            str(tmp_path / "ray"),
        ]
        assert main(ray_run) == 0
    assert main([*RUN, "--policy", "test_vla_eval_client:ProbePolicy", "--out", str(tmp_path / "ours")]) == 0
    assert final_states(tmp_path / "ray") == final_states(tmp_path / "ours")
    assert [e[0] for e in server.events].count("start") == 2 and [e[0] for e in server.events].count(
        "obs"
    ) == 40


def test_a_server_whose_action_spec_does_not_fit_the_suite_is_refused_before_the_first_episode(
    tmp_path, capsys
):
    server = ProbeServer(
        action_spec={"position": POSITION_DELTA, "rotation": ROTATION_EULER, "gripper": GRIPPER_CLOSE_POS}
    )
    with serve_background(server) as handle:
        code = main([*RUN, "--policy", "vla-eval+" + handle.url, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "(action [rotation]: rotation: euler_xyz vs axis_angle)" in err[0]
    assert "ProbeServer declares action {position: delta_xyz/3D, rotation: euler_xyz/3D" in err[0]
    assert (
        "declares action {position: delta_xyz/3D, rotation: axis_angle/3D, gripper: binary_close_positive/1D}"
        in err[0]
    )
    assert not server.events and not (tmp_path / "run").exists()


def test_an_option_the_harness_cannot_send_is_refused_naming_it(tmp_path, capsys):
    server = ProbeServer()
    with serve_background(server) as handle:
        code = main(
            [*RUN, "--policy", f"vla-eval+{handle.url}?quat_no_antipodal=true", "--out", str(tmp_path / "r")]
        )
    assert code == 2
    assert (
        "'quat_no_antipodal' is not an option of vla-eval's benchmark of tabletop" in capsys.readouterr().err
    )


def test_an_openpi_server_is_told_apart_from_a_vla_eval_one(tmp_path, capsys):
    from servers import start_thread_server

    from evalsuite.policy import PolicySpec

    url = start_thread_server(PolicySpec(kind="random"))
    assert main([*RUN, "--policy", "vla-eval+" + url, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "does not speak vla-eval's protocol" in err and "use --policy ws://HOST:PORT" in err


def test_our_spec_constants_are_vla_evals():
    assert suites.POSITION_DELTA == POSITION_DELTA.to_dict() and suites.ROTATION_AA == ROTATION_AA.to_dict()
    assert (
        suites.ROTATION_EULER == ROTATION_EULER.to_dict()
        and suites.GRIPPER_CLOSE_POS == GRIPPER_CLOSE_POS.to_dict()
    )
    assert suites.IMAGE_RGB == IMAGE_RGB.to_dict() and suites.LANGUAGE == LANGUAGE.to_dict()
    assert suites.STATE_EEF_POS_AA_GRIP == STATE_EEF_POS_AA_GRIP.to_dict() and suites.RAW == RAW.to_dict()
    from vla_eval.specs import DimSpec

    server = {"position": POSITION_DELTA, "rotation": ROTATION_EULER}
    bench = {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS}
    obs_s = {"wrist": IMAGE_RGB, "state": DimSpec("state", 7, "eef_pos3_axisangle3_gripper2")}
    obs_b = {"agentview": IMAGE_RGB, "state": STATE_EEF_POS_AA_GRIP}
    as_dicts = [{k: v.to_dict() for k, v in d.items()} for d in (server, bench, obs_s, obs_b)]
    assert (
        spec_mismatches(*as_dicts) == check_specs(server, bench, obs_s, obs_b)
        and len(check_specs(server, bench, obs_s, obs_b)) == 4
    )


@pytest.mark.parametrize("seed", range(4))
def test_the_canonical_axis_angle_is_vla_evals_conversion_of_the_same_quaternion(seed):
    from scipy.spatial.transform import Rotation
    from vla_eval.benchmarks.libero.benchmark import _quat_to_axisangle_robosuite
    from vla_eval.rotation import quat_to_axisangle

    quat = Rotation.random(random_state=seed).as_quat()  # x, y, z, w
    quat = quat if quat[3] < 0 else -quat  # w < 0: the case the conventions disagree on
    robosuite = _quat_to_axisangle_robosuite(quat)
    np.testing.assert_allclose(canonical_axis_angle(robosuite), quat_to_axisangle(quat), atol=2e-6)
    assert np.linalg.norm(robosuite) > np.pi > np.linalg.norm(quat_to_axisangle(quat))


class FailingServer(ProbeServer):
    """Raises inside `predict` from its second chunk on (a model that breaks mid-episode)."""

    def predict(self, obs, ctx):
        if self.predicted >= 1:
            self.predicted += 1
            raise RuntimeError("the model broke")
        return super().predict(obs, ctx)


def test_an_error_answer_fails_the_attempt_and_the_episode_is_recorded_as_an_error(tmp_path, capsys):
    server = FailingServer()
    with serve_background(server) as handle:
        args = ["tabletop", "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "12", "--retries", "1"]
        code = main([*args, "--video", "none", "-q", "--workers", "0", "--policy", "vla-eval+" + handle.url,
                     "--out", str(tmp_path / "run")])  # fmt: skip
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert code == 3 and record["success"] is None and record["attempts"] == 2
    assert "answered with an error: observation_failed: RuntimeError: the model broke" in record["error"]
    assert [e[0] for e in server.events].count("start") == 2  # the retry began a new episode on the server


def test_a_resume_against_another_model_server_is_refused_naming_what_differs(tmp_path, capsys):
    args = [
        "tabletop",
        "--tasks",
        "0",
        "--episodes-per-task",
        "1",
        "--max-steps",
        "4",
        "--video",
        "none",
        "-q",
    ]
    args += ["--workers", "0", "--out", str(tmp_path / "run")]
    with serve_background(ProbeServer()) as handle:
        assert main([*args, "--policy", "vla-eval+" + handle.url]) == 0
    other = {"send_wrist_image": True, "send_state": True, "quat_no_antipodal": False}
    with serve_background(ProbeServer(observation_params=other)) as handle:
        assert main([*args, "--policy", "vla-eval+" + handle.url]) == 2
    err = capsys.readouterr().err
    assert 'policy.vla_eval.server.observation_params.quat_no_antipodal is "(absent)" there, false now' in err


class PiLikeServer(ProbeServer):
    """Declares its specs as vla-eval's pi0 server does: `{"actions": raw}` and an `image` of its own
    naming. vla-eval warns and runs it on its LIBERO; so do we (only conflicting formats stop a run)."""

    def get_action_spec(self):
        return {"actions": RAW}

    def get_observation_spec(self):
        return {"image": IMAGE_RGB, "state": RAW, "language": LANGUAGE}


def test_a_server_that_names_its_specs_differently_runs_with_the_warnings_recorded(tmp_path):
    args = [
        "tabletop",
        "--tasks",
        "0",
        "--episodes-per-task",
        "1",
        "--max-steps",
        "4",
        "--video",
        "none",
        "-q",
    ]
    with serve_background(PiLikeServer()) as handle:
        assert (
            main(
                [*args, "--workers", "0", "--policy", "vla-eval+" + handle.url, "--out", str(tmp_path / "r")]
            )
            == 0
        )
    record = json.loads((tmp_path / "r" / "run.json").read_text())["policy"]["vla_eval"]["suites"]["tabletop"]
    assert "action: no overlapping keys between server and benchmark specs" in record["spec_warnings"]
    assert (
        "observation [image]: server expects it but benchmark doesn't provide it" in record["spec_warnings"]
    )


def test_oft_servers_announced_env_seed_must_be_the_runs_seed():
    """vla-eval's OFT server announces env_seed 0 and robosuite's axis-angle: a LIBERO run at our
    default seed 7 is refused naming --seed; at --seed 0 the options merge as vla-eval merges them."""
    from evalsuite.serving.vla_eval_suites import PeerMismatch, peer_suite
    from evalsuite.suites import registry

    announced = {"env_seed": 0, "quat_no_antipodal": True, "send_wrist_image": True, "send_state": True}
    suite = registry()["libero_spatial"]
    params, dropped = peer_suite(suite, seed=7, max_steps=None).merge(announced, {})
    with pytest.raises(PeerMismatch, match=r"env_seed=0 but this run's is 7 \(--seed\)"):
        peer_suite(suite, seed=7, max_steps=None).check(params)
    peer = peer_suite(suite, seed=0, max_steps=None)
    params, dropped = peer.merge(announced, {"quat_no_antipodal": False})  # the URL's query wins
    peer.check(params)
    assert (
        params["quat_no_antipodal"] is False
        and params["seed"] == 0
        and params["max_steps"] == 220
        and not dropped
    )
    assert (
        spec_conflicts(
            {"actions": RAW.to_dict()},
            peer.action_spec(),
            {"state": RAW.to_dict()},
            peer.observation_spec(params),
        )
        == []
    )
