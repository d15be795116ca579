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
    records = RunStore(tmp_path).open(_manifest())
    assert sorted(records) == [_record(0).episode_id, _record(1).episode_id]
    store.append(_record(2))
    lines = store.episodes_path.read_text().splitlines()
    assert [json.loads(line)["episode_index"] for line in lines] == [0, 1, 2]


def test_a_re_recorded_episode_replaces_the_earlier_record(tmp_path):
    store = RunStore(tmp_path)
    store.open(_manifest())
    store.append(_record(0, success=None))
    store.append(_record(0, success=True))
    records = store.load_records()
    assert len(records) == 1 and records[_record(0).episode_id].success is True


def test_resuming_into_a_directory_of_another_run_is_refused(tmp_path):
    RunStore(tmp_path).open(_manifest(seed=0))
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
