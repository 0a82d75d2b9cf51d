"""nca_scale.files: the one atomic-write helper (files and whole directories)."""

from __future__ import annotations

import pytest

from nca_scale.files import TEMP_MARK, replacing, write_atomic


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.json"
    write_atomic(path, "old")
    write_atomic(path, b"new bytes")
    assert path.read_bytes() == b"new bytes" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text("half")
        assert tmp.parent == tmp_path and tmp.name.startswith(".f.json" + TEMP_MARK)
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_directory_is_replaced_as_a_whole(tmp_path):
    out = tmp_path / "figs"
    for name in ("a.png", "b.png"):
        with replacing(out) as tmp:
            tmp.mkdir()
            (tmp / name).write_text(name)
    assert [p.name for p in out.iterdir()] == ["b.png"] and [p.name for p in tmp_path.iterdir()] == ["figs"]
    with pytest.raises(RuntimeError), replacing(out) as tmp:
        tmp.mkdir()
        (tmp / "c.png").write_text("c")
        raise RuntimeError("failed render")
    assert [p.name for p in out.iterdir()] == ["b.png"] and [p.name for p in tmp_path.iterdir()] == ["figs"]
