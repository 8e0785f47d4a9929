"""write_atomic: whole files or none, and one-line errors."""

import os

import pytest

from pcea.atomic import write_atomic
from pcea.errors import PceaFileError


def test_writes_text_and_bytes_with_the_usual_permissions(tmp_path):
    write_atomic(tmp_path / "a.txt", "héllo\n")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(PceaFileError, match=r"metrics.jsonl: cannot write: No space left on device"):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_missing_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(PceaFileError, match="nowhere/x.json: cannot write"):
        write_atomic(tmp_path / "nowhere" / "x.json", "{}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
