"""pcea.digest: the one file SHA-256 behind downloads, ``--init`` streams and the built-in weights' check."""

from __future__ import annotations

import hashlib
import io

import pytest

import pcea.digest as digest_module
from pcea.digest import file_sha256


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (5 << 19) + 7])
def test_matches_the_digest_of_the_whole_file_across_chunk_boundaries(tmp_path, size):
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_reads_in_chunks_not_the_whole_file_at_once(tmp_path, monkeypatch):
    # A 3-byte chunk: the 10-byte file takes four reads of at most 3 bytes and a fifth that finds its end,
    # and still gives its digest.
    sizes = []

    class Recording(io.FileIO):
        def read(self, size=-1):
            sizes.append(size)
            return super().read(size)

    monkeypatch.setattr(digest_module, "_CHUNK", 3)
    monkeypatch.setattr(digest_module, "open", lambda path, mode: Recording(path, mode), raising=False)
    path = tmp_path / "file.bin"
    path.write_bytes(b"0123456789")
    assert file_sha256(path) == hashlib.sha256(b"0123456789").hexdigest()
    assert sizes == [3, 3, 3, 3, 3]  # the last read returns nothing and ends the loop


def test_a_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "absent.bin")
