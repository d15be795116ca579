"""Table 4's assembly (scripts/table4.py) on hand-made episode records: paired McNemar against
AsyncVLA, Wilson intervals, the regenerated share, the paper's values beside ours."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import table4  # noqa: E402


def _frame(successes, regenerated=None):
    n = len(successes)
    frame = pd.DataFrame(
        {
            "suite": ["tabletop"] * n,
            "task": ["a", "b"] * (n // 2),
            "episode_index": range(n),
            "seed": [0] * n,
            "success": successes,
        }
    )
    if regenerated is not None:
        frame["regenerated_per_call"] = [regenerated] * n
        frame["chunk_tokens"] = 8
    return frame


def test_rows_are_paired_against_asyncvla_and_carry_the_regenerated_share():
    full = _frame([True, True, False, False, True, False], regenerated=[2, 0])
    wo_afm = _frame([True, False, False, False, True, True])  # wins 1 (ep 5), loses 1 (ep 1)
    frames = {"AsyncVLA": full, "w/o AFM inference": wo_afm}
    table, per_task = table4.build_table(frames, {"AsyncVLA": "unified"})
    rows = table.set_index("variant")
    assert rows.loc["w/o AFM inference", "wins / losses vs AsyncVLA"] == "1 / 1"
    assert rows.loc["w/o AFM inference", "McNemar p"] == pytest.approx(1.0)
    assert rows.loc["AsyncVLA", "ours (%)"] == pytest.approx(50.0)
    assert rows.loc["AsyncVLA", "tokens regenerated per chunk (%)"] == pytest.approx(100 * 1 / 8)
    assert rows.loc["w/o AFM inference", "tokens regenerated per chunk (%)"] == 0.0
    assert rows.loc["AsyncVLA", "successes / episodes"] == "3 / 6"
    if table4.PAPER.is_file():  # the paper's own Table 4 average, beside ours
        assert rows.loc["AsyncVLA", "paper (WidowX, %)"] == pytest.approx(70.8)
    assert list(per_task.columns) == ["variant", "a", "b"]


def test_the_random_mask_rate_is_the_mean_over_every_chunk():
    frame = _frame([True, False], regenerated=None)
    frame["regenerated_per_call"] = [[8, 0, 0, 0], [4]]  # 12 tokens of 5 chunks x 8
    frame["chunk_tokens"] = 8
    assert table4.regenerated_share(frame) == pytest.approx(12 / 40)
