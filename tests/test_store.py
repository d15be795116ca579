import json

import pytest

from evalsuite.records import EpisodeRecord, EpisodeSpec
from evalsuite.store import RunDirError, RunStore


def _record(k: int, success=True) -> EpisodeRecord:
    return EpisodeRecord.for_spec(
        EpisodeSpec("s", "t", k, 0, "", "m"), success=success, steps=5, wall_time_s=0.1
    )


def _manifest(**kw):
    return {
        "suites": ["s"],
        "policy": {"kind": "random"},
        "protocol": {},
        "checkpoint_sha256": None,
        "seed": 0,
        "replan_steps": 8,
        **kw,
    }


def test_torn_last_line_is_dropped_and_the_file_stays_appendable(tmp_path):
    store = RunStore(tmp_path)
    store.open(_manifest())
    store.append(_record(0))
    store.append(_record(1))
    with store.episodes_path.open("a") as f:
        f.write('{"episode_id": "s/t/-/ep002/se')  # killed mid-write
    del store  # dropping the store releases its lock, as the end of a process does
    store = RunStore(tmp_path)
    records = store.open(_manifest())
    assert sorted(records) == [_record(0).episode_id, _record(1).episode_id]
    store.append(_record(2))
    lines = store.episodes_path.read_text().splitlines()
    assert [json.loads(line)["episode_index"] for line in lines] == [0, 1, 2]


def test_an_error_record_is_replaced_by_a_later_record_but_an_outcome_is_final(tmp_path, caplog):
    store = RunStore(tmp_path)
    store.open(_manifest())
    store.append(_record(0, success=None))  # crashed on every attempt
    store.append(_record(0, success=True))  # --retry-errors ran it again
    store.append(_record(1, success=False))
    store.append(_record(1, success=True))  # a second outcome (two writers, or an edit): ignored
    records = store.load_records()
    assert records[_record(0).episode_id].success is True
    assert records[_record(1).episode_id].success is False
    assert "first recorded outcome counts" in caplog.text


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("success", "false", "field 'success' is 'false', expected bool or null"),
        ("suite", 5, "field 'suite' is 5, expected str"),
        ("steps", True, "field 'steps' is True, expected int"),
        ("colour", "red", "unknown field(s) ['colour']"),
    ],
)
def test_a_record_of_the_wrong_type_is_refused_with_its_line(tmp_path, field, value, message):
    store = RunStore(tmp_path)
    store.open(_manifest())
    store.append(_record(0))
    bad = {**_record(1).to_json_dict(), field: value}
    with store.episodes_path.open("a") as f:
        f.write(json.dumps(bad) + "\n")
    with pytest.raises(RunDirError, match=":2 is not a valid episode record") as e:
        store.load_records()
    assert message in str(e.value)


def test_a_second_writer_is_refused_with_the_holders_pid_and_host(tmp_path):
    import os
    import socket

    first = RunStore(tmp_path)
    first.open(_manifest())
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(
        RunDirError, match=f"in use by another run \\(pid {os.getpid()} on host {socket.gethostname()}"
    ):
        RunStore(tmp_path).open(_manifest())
    first.close()
    assert ".lock" not in {p.name for p in tmp_path.iterdir()} and ".lock" in before
    RunStore(tmp_path).open(_manifest())  # free again


def test_a_moved_checkpoint_or_another_device_resumes_the_same_run(tmp_path):
    policy = {"kind": "asyncvla", "checkpoint": "/old/ckpt", "device": "cuda", "mode": "asyncvla"}
    RunStore(tmp_path).open(_manifest(policy=policy, checkpoint_sha256="abc"))
    moved = {**policy, "checkpoint": "/new/ckpt", "device": "cpu"}
    store = RunStore(tmp_path)
    store.open(_manifest(policy=moved, checkpoint_sha256="abc"))
    store.close()
    with pytest.raises(RunDirError, match="different 'checkpoint_sha256'"):
        RunStore(tmp_path).open(_manifest(policy=moved, checkpoint_sha256="def"))


def test_speed_only_env_options_do_not_make_another_run(tmp_path):
    """A LIBERO run begun before `cheap_reset` existed (or with rendering ungated) resumes with
    it: both options give bit-identical states and images. The render size is what is measured."""
    before = {"libero_spatial": {"seed": 7, "env_kwargs": {"resolution": 256, "skip_unused_renders": False}}}
    RunStore(tmp_path).open(_manifest(protocol=before))
    now = {
        "libero_spatial": {
            "seed": 7,
            "env_kwargs": {"resolution": 256, "skip_unused_renders": True, "cheap_reset": True},
        }
    }
    store = RunStore(tmp_path)
    store.open(_manifest(protocol=now))
    store.close()
    other = {"libero_spatial": {"seed": 7, "env_kwargs": {"resolution": 224, "cheap_reset": True}}}
    with pytest.raises(RunDirError, match="different 'protocol'"):
        RunStore(tmp_path).open(_manifest(protocol=other))


@pytest.mark.parametrize(
    "content, message", [("[1, 2]", "holds a JSON list"), ('{"seed": 0}', "no list of 'suites'")]
)
def test_a_run_json_of_the_wrong_shape_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(RunDirError, match=message):
        RunStore(tmp_path).read_manifest()


def test_records_are_read_without_writing_when_not_repairing(tmp_path):
    """`report` on a read-only file system: a torn tail is skipped in memory, the file untouched."""
    store = RunStore(tmp_path)
    store.open(_manifest())
    store.append(_record(0))
    with store.episodes_path.open("a") as f:
        f.write('{"episode_id": "s/t/-/ep00')
    before = store.episodes_path.read_bytes()
    store.episodes_path.chmod(0o444)
    assert list(store.load_records(repair=False)) == [_record(0).episode_id]
    assert store.episodes_path.read_bytes() == before


def test_resuming_into_a_directory_of_another_run_is_refused(tmp_path):
    RunStore(tmp_path).open(_manifest(seed=0))  # a dropped store releases its lock
    with pytest.raises(RunDirError, match="different 'seed'"):
        RunStore(tmp_path).open(_manifest(seed=7))


def test_resume_keeps_creation_time_and_counts_resumes(tmp_path):
    RunStore(tmp_path).open(_manifest(created="first"))
    RunStore(tmp_path).open(_manifest(created="second"))
    manifest = RunStore(tmp_path).read_manifest()
    assert manifest["created"] == "first" and manifest["resumed"] == 1


def test_a_damaged_middle_line_is_reported_with_its_line_number(tmp_path):
    store = RunStore(tmp_path)
    store.open(_manifest())
    store.append(_record(0))
    with store.episodes_path.open("a") as f:
        f.write("not json\n")
    store.append(_record(1))
    with pytest.raises(RunDirError, match=":2 is not a valid episode record"):
        store.load_records()
