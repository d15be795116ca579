"""The SQLite history: one run per checkpoint key, all-or-nothing writes (exception and kill -9)."""

import subprocess
import sys
import textwrap

import pytest

from evalsuite.regression.history import History, HistoryError, TaskResult


def results(n: int) -> list[TaskResult]:
    return [TaskResult("s", f"task{i}", 10, i, 0) for i in range(n)]


def test_the_same_checkpoint_is_registered_once(tmp_path):
    with History(tmp_path / "h.sqlite") as h:
        first = h.start_run("abc", tmp_path / "ckpt_a", ["s2", "s1"], "asyncvla", tmp_path / "run1")
        again = h.start_run("abc", tmp_path / "copy_of_a", ["s1", "s2"], "asyncvla", tmp_path / "run2")
        assert again == first and first.run_dir == str(tmp_path / "run1") and first.status == "running"
        other_mode = h.start_run("abc", tmp_path / "ckpt_a", ["s1", "s2"], "sfm", tmp_path / "run3")
        assert other_mode.id != first.id
        h.finish_run(first.id, results(3))
        assert [r.id for r in h.done_runs(["s1", "s2"], "asyncvla")] == [first.id]
        assert h.results(first.id) == results(3)
        assert h.db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 1


def test_previous_run_and_trend_follow_evaluation_order(tmp_path):
    with History(tmp_path / "h.sqlite") as h:
        ids = []
        for i, sha in enumerate(["a", "b", "c"]):
            run = h.start_run(sha, tmp_path / f"step{i}", ["s"], "asyncvla", tmp_path / f"run{i}")
            h.finish_run(run.id, [TaskResult("s", "t1", 10, i, 0), TaskResult("s", "t2", 10, 2 * i, 1)])
            ids.append(run)
        assert h.previous_run(ids[2]).id == ids[1].id and h.previous_run(ids[0]) is None
        trend = h.trend(["s"], "asyncvla")
        assert list(trend["checkpoint"]) == ["step0", "step1", "step2"]
        assert list(trend["successes"]) == [0, 3, 6] and list(trend["episodes"]) == [20, 20, 20]
        assert list(trend["errors"]) == [1, 1, 1]  # 0 + 1 per run


def test_an_exception_mid_write_leaves_no_partial_results(tmp_path):
    def failing():
        yield from results(2)
        raise RuntimeError("disk full (simulated)")

    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run("abc", tmp_path / "ckpt", ["s"], "asyncvla", tmp_path / "run")
        with pytest.raises(RuntimeError, match="disk full"):
            h.finish_run(run.id, failing())
        assert h.results(run.id) == []
        assert h.find_run("abc", ["s"], "asyncvla").status == "running"
        h.finish_run(run.id, results(3))  # the next night finishes it
        assert len(h.results(run.id)) == 3


def test_database_survives_a_process_killed_mid_write(tmp_path):
    """A child process is SIGKILLed inside finish_run's transaction after writing 50 of 100 rows."""
    db = tmp_path / "h.sqlite"
    with History(db) as h:
        run = h.start_run("abc", tmp_path / "ckpt", ["s"], "asyncvla", tmp_path / "run")
    child = textwrap.dedent(
        f"""
        import os, signal
        from evalsuite.regression.history import History, TaskResult
        def rows():
            for i in range(100):
                if i == 50:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield TaskResult("s", f"task{{i}}", 10, 1, 0)
        History({str(db)!r}).finish_run({run.id}, rows())
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    with History(db) as h:
        assert h.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert h.results(run.id) == []
        assert h.find_run("abc", ["s"], "asyncvla").status == "running"
        h.finish_run(run.id, results(4))
        assert len(h.results(run.id)) == 4


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HistoryError, match="not a nightly history database"):
        History(path)
