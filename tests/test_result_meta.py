"""No stale result files (issue 42): every committed file under results/tabletop/ (outside
archive/) has a provenance sidecar naming the shipped demo's weights, the scene and the commit it
was made with (scripts/result_meta.py)."""

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import result_meta  # noqa: E402


def test_every_committed_tabletop_result_names_the_shipped_demo():
    assert result_meta.result_files(), "no results found: the check would pass vacuously"
    assert result_meta.stale_results() == []


def _copy_results(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of one committed result and its sidecar, outside the repository."""
    source = next(f for f in result_meta.result_files() if f.suffix == ".md")
    root = tmp_path / "tabletop"
    root.mkdir()
    copy = root / source.name
    shutil.copy2(source, copy)
    shutil.copy2(str(source) + result_meta.SUFFIX, str(copy) + result_meta.SUFFIX)
    return root, copy


def test_the_check_fails_on_a_result_made_with_another_demo(tmp_path):
    root, copy = _copy_results(tmp_path)
    assert result_meta.stale_results(root) == []  # the copy as committed passes
    side = Path(str(copy) + result_meta.SUFFIX)
    meta = json.loads(side.read_text())
    meta["demo_weights_sha256"] = "0" * 64  # another demo
    side.write_text(json.dumps(meta))
    problems = result_meta.stale_results(root)
    assert len(problems) == 1 and copy.name in problems[0] and "000000000000" in problems[0]


def test_the_check_fails_on_a_result_without_a_sidecar_or_without_its_scene(tmp_path):
    root, copy = _copy_results(tmp_path)
    side = Path(str(copy) + result_meta.SUFFIX)
    meta = json.loads(side.read_text())
    del meta["scene"]
    side.write_text(json.dumps(meta))
    assert any("scene" in p for p in result_meta.stale_results(root))
    side.unlink()
    assert any("no " in p for p in result_meta.stale_results(root))


def test_archived_results_and_readmes_need_no_sidecar(tmp_path):
    root = tmp_path / "tabletop"
    (root / "archive" / "2026-12-07").mkdir(parents=True)
    (root / "archive" / "2026-12-07" / "old.md").write_text("made with the old demo")
    (root / "README.md").write_text("what is here")
    assert result_meta.result_files(root) == []
    assert result_meta.stale_results(root) == []


def test_the_weights_hash_follows_the_weights_only(tmp_path):
    """The demo-eval stage rewrites manifest.json: the hash must not change with it."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in result_meta.WEIGHTS:
        (ckpt / name).write_bytes(name.encode())
    (ckpt / "manifest.json").write_text("{}")
    before = result_meta.weights_sha256(ckpt)
    (ckpt / "manifest.json").write_text('{"tabletop_eval": 1}')
    assert result_meta.weights_sha256(ckpt) == before
    (ckpt / "model.safetensors").write_bytes(b"other")
    assert result_meta.weights_sha256(ckpt) != before
