"""Downloads against a real HTTP server on 127.0.0.1: resume, checksums, HTML, hostile archives."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tqdm import tqdm

import pcea.data.download as download_module
from pcea.cli import main
from pcea.data.download import (
    CHECKSUMS_FILE,
    FORMATS,
    MARKER,
    UnreachableError,
    archive_spec,
    download_file,
    fetch_modelnet40,
    safe_extract,
    verify_archive,
)
from pcea.errors import PceaError, PceaFileError

ARCHIVE = "modelnet40_ply_hdf5_2048.zip"
INNER = "modelnet40_ply_hdf5_2048"


def make_zip(members: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> bytes:
    """A zip archive held in memory; names in ``symlinks`` are stored as symbolic links."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = (0o120777 << 16)
            zf.writestr(info, data)
    return buffer.getvalue()


def layout_zip() -> bytes:
    """An archive shaped like modelnet40_ply_hdf5_2048.zip; the random payload makes it incompressible."""
    rng = np.random.default_rng(0)
    return make_zip({
        f"{INNER}/shape_names.txt": b"airplane\nbathtub\n",
        f"{INNER}/train_files.txt": f"data/{INNER}/ply_data_train0.h5\n".encode(),
        f"{INNER}/ply_data_train0.h5": rng.bytes(200_000),
    })


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        server: Server = self.server  # type: ignore[assignment]
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if server.html:
            page = b"<!DOCTYPE html><html><body>Mirror moved. Please log in.</body></html>"
            self._send(200, page, {"Content-Type": "text/html; charset=utf-8"})
            return
        body = server.files.get(self.path)
        if body is None:
            self._send(404, b"not found", {"Content-Type": "text/plain"})
            return
        start = 0
        requested = self.headers.get("Range")
        status, headers = 200, {"Content-Type": "application/zip"}
        if requested and not server.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(body):
                self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            status = 206
            if server.wrong_content_range:  # claim (and send) the body from byte 0 instead
                start = 0
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        time.sleep(server.delay)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if server.no_length:  # the body ends when the connection closes
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if server.drops:
            # Promise the whole body, send part of it, then drop the connection.
            cut = server.drops.pop(0)
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.html = False
        self.ignore_range = False
        self.wrong_content_range = False
        self.drops: list[int] = []  # byte counts after which the next responses are cut
        self.no_length = False  # send no Content-Length (and close the connection after the body)
        self.delay = 0.0  # seconds before each answer

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def archive(server) -> bytes:
    data = layout_zip()
    server.files[f"/{ARCHIVE}"] = data
    return data


def write_checksums(path: Path, url: str, sha256: str | None) -> Path:
    table = {"modelnet40": {"h5": {"file": ARCHIVE, "urls": [url], "sha256": sha256, "size": None,
                                   "extracts_to": INNER}}}
    path.write_text(json.dumps(table))
    return path


def fetch(tmp_path: Path, server: Server, data: bytes, *, sha256: str | None = "auto", **kwargs) -> Path:
    digest = hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256
    checksums = write_checksums(tmp_path / "checksums.json", server.url(f"/{ARCHIVE}"), digest)
    kwargs = {"backoff": 0.0, "timeout": 5.0, "progress": False, "retries": 0, **kwargs}
    return fetch_modelnet40("h5", tmp_path / "root", checksums=checksums, **kwargs)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ARCHIVE}"


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_verifies_and_extracts(tmp_path, server, archive):
    target = fetch(tmp_path, server, archive)
    assert target == tmp_path / "root" / INNER
    assert (target / "shape_names.txt").read_bytes() == b"airplane\nbathtub\n"
    assert len((target / "ply_data_train0.h5").read_bytes()) == 200_000
    marker = json.loads((target / MARKER).read_text())
    assert marker["sha256"] == hashlib.sha256(archive).hexdigest() and marker["verified"] is True
    assert leftovers(tmp_path / "root") == [INNER]  # the zip was removed, no temp dirs remain
    assert len(server.requests) == 1 and server.requests[0]["range"] is None


def test_second_call_makes_no_request(tmp_path, server, archive, capsys):
    fetch(tmp_path, server, archive)
    server.files.clear()  # a second download would now fail
    target = fetch(tmp_path, server, archive)
    assert (target / MARKER).is_file()
    assert len(server.requests) == 1
    assert "nothing to do" in capsys.readouterr().err


def test_resume_after_interrupted_transfer(tmp_path, server, archive):
    server.drops = [70_000]
    with pytest.raises(PceaError, match="interrupted.*run the same command again to resume"):
        fetch(tmp_path, server, archive)
    part = tmp_path / "root" / f"{ARCHIVE}.part"
    kept = part.stat().st_size
    assert 0 < kept <= 70_000
    target = fetch(tmp_path, server, archive)
    assert server.requests[1]["range"] == f"bytes={kept}-"
    assert json.loads((target / MARKER).read_text())["verified"] is True  # the joined file matched
    assert not part.exists()


def test_retries_resume_within_one_call(tmp_path, server, archive):
    server.drops = [50_000, 50_000]
    target = fetch(tmp_path, server, archive, retries=2)
    assert [r["range"] is not None for r in server.requests] == [False, True, True]
    assert server.requests[2]["range"] == "bytes=100000-"
    assert (target / "ply_data_train0.h5").is_file()


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, archive):
    server.drops = [60_000]
    server.ignore_range = True
    target = fetch(tmp_path, server, archive, retries=1)
    # The second answer was a 200 with the whole file: appending it would break the checksum.
    assert server.requests[1]["range"] is not None
    assert (target / MARKER).is_file()


def test_206_with_the_wrong_content_range_restarts(tmp_path, server, archive):
    server.drops = [60_000]
    server.wrong_content_range = True
    target = fetch(tmp_path, server, archive, retries=1)
    # the resumed answer started at byte 0, not where the part file ended: start over without Range
    assert [r["range"] is not None for r in server.requests] == [False, True, False]
    assert (target / MARKER).is_file()


def test_complete_part_file_answered_416(tmp_path, server, archive):
    dest = tmp_path / ARCHIVE
    (tmp_path / f"{ARCHIVE}.part").write_bytes(archive)
    download_file(server.url(f"/{ARCHIVE}"), dest, progress=False, retries=0)
    assert dest.read_bytes() == archive
    assert server.requests[0]["range"] == f"bytes={len(archive)}-"


def test_checksum_mismatch_deletes_the_file(tmp_path, server, archive):
    with pytest.raises(PceaFileError, match=r"SHA-256 mismatch \(expected 0{64}, got [0-9a-f]{64}\); "
                                            r"the file was deleted"):
        fetch(tmp_path, server, archive, sha256="0" * 64)
    assert leftovers(tmp_path / "root") == []


def test_html_page_instead_of_zip(tmp_path, server, archive):
    server.html = True
    with pytest.raises(PceaError, match="the mirror returned an HTML page, not a zip") as err:
        fetch(tmp_path, server, archive)
    assert "\n" not in str(err.value)
    assert leftovers(tmp_path / "root") == []


def test_progress_off_a_terminal_is_a_line_per_tenth_in_tqdms_units(tmp_path, server, archive, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(download_module, "_CHUNK", len(archive) // 20 + 1)  # 20 chunks: every tenth is seen
    fetch(tmp_path, server, archive, progress=None)  # capsys's stderr is not a terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if ARCHIVE in line]
    size = tqdm.format_sizeof(len(archive), "B", 1024)
    assert lines[0] == f"pcea: downloading {ARCHIVE} ({size})"
    assert [line.split(": ")[2].split("%")[0] for line in lines[1:]] == [str(10 * i) for i in range(1, 11)]
    assert lines[-1] == f"pcea: {ARCHIVE}: 100% ({size})"


def test_html_already_on_disk_is_reported(tmp_path):
    page = tmp_path / ARCHIVE
    page.write_bytes(b"\n  <html><head><title>404</title></head></html>")
    with pytest.raises(PceaFileError, match="HTML page, not a zip; SHA-256 mismatch.*deleted"):
        verify_archive(page, "1" * 64, delete_on_failure=True)
    assert not page.exists()


def test_oversized_download_is_refused(tmp_path, server, archive):
    with pytest.raises(PceaError, match=r"more than the 0\.98kB allowed"):
        fetch(tmp_path, server, archive, max_download_bytes=1000)
    assert leftovers(tmp_path / "root") == []


def test_offline_gives_one_line_with_where_to_put_the_files(tmp_path, capsys):
    root = tmp_path / "root"
    url = closed_port_url()
    code = main(["download", "modelnet40", "--root", str(root), "--url", url])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and err.startswith(f"pcea: error: could not reach {url} (")
    assert f"Download {ARCHIVE} by hand and put it in {root}/" in err
    assert f"{root / INNER}/ exists" in err
    assert "--url URL --sha256 HEX (mirrors and checksums: datasets/README.md)" in err
    assert leftovers(root) == []


def test_http_error_is_reported_with_the_url(tmp_path, server):
    with pytest.raises(UnreachableError, match=r"could not reach http://127.0.0.1:\d+/missing.zip "
                                                r"\(HTTP 404 Not Found\)"):
        download_file(server.url("/missing.zip"), tmp_path / "x.zip", progress=False)


def test_archive_placed_by_hand_is_used_without_a_request(tmp_path, archive):
    root = tmp_path / "root"
    root.mkdir()
    (root / ARCHIVE).write_bytes(archive)
    checksums = write_checksums(tmp_path / "checksums.json", closed_port_url(),
                                hashlib.sha256(archive).hexdigest())
    target = fetch_modelnet40("h5", root, checksums=checksums, progress=False)
    assert (target / "shape_names.txt").is_file()


def test_unknown_checksum_warns_with_the_computed_hash(tmp_path, server, archive, capsys):
    target = fetch(tmp_path, server, archive, sha256=None)
    digest = hashlib.sha256(archive).hexdigest()
    err = capsys.readouterr().err
    assert "was NOT verified" in err and f"--sha256 {digest}" in err
    assert json.loads((target / MARKER).read_text())["verified"] is False


def test_cli_download_with_url_and_sha256(tmp_path, server, archive, capsys):
    root = tmp_path / "root"
    digest = hashlib.sha256(archive).hexdigest()
    argv = ["download", "modelnet40", "--root", str(root), "--url", server.url(f"/{ARCHIVE}"),
            "--sha256", digest.upper()]
    assert main(argv) == 0
    assert (root / INNER / MARKER).is_file()
    assert main(argv) == 0 and len(server.requests) == 1
    assert main([*argv[:-1], "abc"]) == 1
    assert "--sha256 must be 64 hexadecimal digits" in capsys.readouterr().err
    assert main([*argv, "--max-gb", "0"]) == 1
    assert "--max-gb 0.0: must be a positive" in capsys.readouterr().err


# Hostile archives: each must be refused with nothing written outside, or half-written inside, root.
HOSTILE = {
    "zip-slip": (make_zip({f"{INNER}/a.txt": b"a", f"{INNER}/../../evil.txt": b"x"}), {},
                 r"points outside the target \('\.\.'\)"),
    "absolute": (make_zip({f"{INNER}/a.txt": b"a", "/tmp/pcea-evil.txt": b"x"}), {}, "absolute path"),
    "windows-drive": (make_zip({"C:/evil.txt": b"x"}), {}, "absolute path"),
    "symlink": (make_zip({f"{INNER}/a.txt": b"a", f"{INNER}/link": b"../../../etc"},
                         symlinks=(f"{INNER}/link",)), {}, "symbolic link"),
    "too-many-members": (make_zip({f"{INNER}/{i}.txt": b"" for i in range(50)}), {"max_members": 20},
                         "has 50 members, more than the 20 allowed"),
    "bomb": (make_zip({f"{INNER}/zeros.bin": bytes(5_000_000)}), {"max_extract_bytes": 1_000_000},
             r"would expand to 4\.77MB, more than the 977kB allowed"),
    "duplicate": (make_zip({f"{INNER}/a.txt": b"a", f"{INNER}/a.txt/b": b"b"}), {}, "clashes"),
    "no-layout-dir": (make_zip({"something_else/a.txt": b"a"}), {},
                      f"does not contain the directory {INNER}/"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archive_is_refused_and_leaves_nothing(tmp_path, server, case):
    data, limits, message = HOSTILE[case]
    server.files[f"/{ARCHIVE}"] = data
    with pytest.raises(PceaFileError, match=message):
        fetch(tmp_path, server, data, keep_archive=True, **limits)
    assert leftovers(tmp_path / "root") == []  # the refused download was deleted, never to be reused
    assert leftovers(tmp_path) == ["checksums.json", "root"]
    assert not Path("/tmp/pcea-evil.txt").exists()


def test_corrupt_member_leaves_no_partial_extraction(tmp_path):
    data = bytearray(make_zip({"d/a.bin": bytes(range(256)) * 400, "d/b.txt": b"b"}))
    start = data.index(b"d/a.bin") + len("d/a.bin")
    data[start + 100:start + 200] = bytes(100)  # damage the compressed stream of the first member
    archive = tmp_path / "bad.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(PceaFileError, match="corrupt or unsupported member"):
        safe_extract(archive, tmp_path / "out")
    assert leftovers(tmp_path) == ["bad.zip"]


def test_shipped_checksums_are_honest():
    """Every entry parses; a SHA-256 is either absent (null) or a real 64-hex digest."""
    table = json.loads(CHECKSUMS_FILE.read_text())
    for fmt in FORMATS:
        spec = archive_spec("modelnet40", fmt)
        assert spec.urls and all(u.startswith(("http://", "https://")) for u in spec.urls)
        assert spec.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert table["modelnet40"][fmt]["extracts_to"] == spec.extracts_to


def test_default_root_follows_pcea_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PCEA_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(PceaError, match=f"put it in {tmp_path / 'elsewhere'}/"):
        fetch_modelnet40("h5", url=closed_port_url(), progress=False, retries=0)


def test_unwritable_places_give_one_line_errors(tmp_path, archive):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PceaFileError, match="cannot create the directory"):
        fetch_modelnet40("h5", blocker / "root", url=closed_port_url(), progress=False)
    zipped = tmp_path / ARCHIVE
    zipped.write_bytes(archive)
    with pytest.raises(PceaFileError, match="cannot write here"):
        safe_extract(zipped, blocker / "out")


PARTS = st.sampled_from(["a", "b.txt", "..", ".", "", "/", "\\", "C:", "..\\x", "c/..", "~", "\u00e9"])


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(names=st.lists(st.lists(PARTS, min_size=1, max_size=5).map("/".join), min_size=1, max_size=6))
def test_extraction_never_writes_outside_the_target(names):
    """Whatever the member names, extraction either refuses or keeps every file under the target."""
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        archive = base / "names.zip"
        with zipfile.ZipFile(archive, "w") as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are part of the attack
            for name in names:
                if name.endswith(("/", "\\")):
                    continue  # a directory entry has no data to misplace
                zf.writestr(zipfile.ZipInfo(name), b"x")
        outside_before = {p for p in base.rglob("*")}
        try:
            safe_extract(archive, base / "out" / "target")
        except PceaFileError as err:
            assert str(archive) in str(err) or str(base / "out") in str(err)
            assert not (base / "out" / "target").exists()
        created = {p for p in base.rglob("*")} - outside_before
        target = (base / "out" / "target").resolve()
        for path in created:
            resolved = path.resolve()
            assert resolved == target.parent or resolved.is_relative_to(target), path


# --- issue 16, items 14-16, and issue 15: checksums shipped with the package ----------------


@pytest.mark.parametrize("damage", ["truncated", "html", "not-a-zip"])
def test_a_refused_archive_found_in_place_is_moved_aside_and_downloaded_anew(tmp_path, server, archive,
                                                                             capsys, damage):
    root = tmp_path / "root"
    root.mkdir()
    bad = {"truncated": archive[:len(archive) // 2], "html": b"<html><body>moved</body></html>",
           "not-a-zip": b"\x00" * 1000}[damage]
    (root / ARCHIVE).write_bytes(bad)
    target = fetch(tmp_path, server, archive, sha256=None)     # no checksum: only the zip checks
    assert (target / "shape_names.txt").is_file()
    assert (root / f"{ARCHIVE}.refused").read_bytes() == bad     # kept for the user, under another name
    assert "renamed it to modelnet40_ply_hdf5_2048.zip.refused, it will not be used again" in \
        capsys.readouterr().err
    assert len(server.requests) == 1


def test_an_archive_with_the_wrong_checksum_in_place_is_not_reused(tmp_path, server, archive):
    root = tmp_path / "root"
    root.mkdir()
    (root / ARCHIVE).write_bytes(archive[:-10] + b"0123456789")
    target = fetch(tmp_path, server, archive)                  # the right SHA-256, a good --url
    assert json.loads((target / MARKER).read_text())["verified"] is True
    assert sorted(leftovers(root)) == sorted([INNER, f"{ARCHIVE}.refused"])


def test_a_download_that_cannot_be_extracted_is_deleted_and_not_reused(tmp_path, server, archive):
    truncated = archive[:len(archive) - 200]  # the zip signature is there, the central directory is not
    server.files[f"/{ARCHIVE}"] = truncated
    with pytest.raises(PceaFileError, match="not a readable zip archive.*; the download was deleted"):
        fetch(tmp_path, server, truncated)                      # its SHA-256 matches: only extraction fails
    assert leftovers(tmp_path / "root") == []
    server.files[f"/{ARCHIVE}"] = archive
    target = fetch(tmp_path, server, archive)
    assert (target / "ply_data_train0.h5").is_file()


@pytest.mark.parametrize("checksum", ["sha256", "none"])
def test_a_cut_without_content_length_is_resumed_not_taken_as_complete(tmp_path, server, archive, checksum):
    server.no_length = True
    server.drops = [80_000]
    sha256 = "auto" if checksum == "sha256" else None
    what = "the file with the expected SHA-256" if checksum == "sha256" else "a whole zip"
    with pytest.raises(PceaError, match=f"declared no size and the .* received are not {what}.*"
                                        "run the same command again to resume"):
        fetch(tmp_path, server, archive, sha256=sha256)
    part = tmp_path / "root" / f"{ARCHIVE}.part"
    assert part.stat().st_size == 80_000
    target = fetch(tmp_path, server, archive, sha256=sha256)
    assert server.requests[-1]["range"] == "bytes=80000-"
    assert (target / "ply_data_train0.h5").read_bytes() == zipfile.ZipFile(io.BytesIO(archive)).read(
        f"{INNER}/ply_data_train0.h5")


def test_a_whole_file_without_content_length_is_accepted(tmp_path, server, archive):
    server.no_length = True
    target = fetch(tmp_path, server, archive, sha256=None)
    assert (target / MARKER).is_file() and len(server.requests) == 1


def test_two_downloads_into_one_root_wait_for_each_other(tmp_path, server, archive, capsys):
    server.delay = 0.5
    results, errors = [], []

    def run():
        try:
            results.append(fetch(tmp_path, server, archive))
        except BaseException as err:  # report it in the main thread
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert results == [tmp_path / "root" / INNER] * 2
    assert len(server.requests) == 1                    # the second found the data the first installed
    err = capsys.readouterr().err
    assert "is fetching modelnet40_ply_hdf5_2048.zip" in err and "waiting for it to finish" in err
    assert leftovers(tmp_path / "root") == [INNER]      # the lock file went with the first download


def test_checksums_ship_with_the_package_and_record_the_published_values():
    import pcea

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    assert CHECKSUMS_FILE.parent == Path(pcea.__file__).parent / "data"
    pyproject = tomllib.loads((Path(pcea.__file__).parents[1] / "pyproject.toml").read_text())
    assert "checksums.json" in pyproject["tool"]["setuptools"]["package-data"]["pcea.data"]
    # ../shared/data/README.md: each value from two public sources (tensorflow/graphics and others)
    h5, mesh = archive_spec("modelnet40", "h5"), archive_spec("modelnet40", "mesh")
    assert (h5.size, h5.sha256) == (435_212_151,
                                    "07670e237db72ece0f723b9abb571534c9ad655a6456b389646587dc72bb8bae")
    assert (mesh.size, mesh.sha256) == (2_039_180_837,
                                        "42dc3e656932e387f554e25a4eb2cc0e1a1bd3ab54606e2a9eae444c60e536ac")
    table = json.loads(CHECKSUMS_FILE.read_text())["modelnet40"]
    assert "tensorflow/graphics" in table["h5"]["checksum_source"]
    assert "tensorflow/graphics" in table["mesh"]["checksum_source"]
    assert archive_spec("modelnet40", "resampled").sha256 is None  # nothing published: nothing made up


def test_the_recorded_size_refuses_a_wrong_file_before_hashing(tmp_path, archive):
    root = tmp_path / "root"
    root.mkdir()
    (root / ARCHIVE).write_bytes(archive)  # a zip, but not the published archive
    table = {"modelnet40": {"h5": {"file": ARCHIVE, "urls": [closed_port_url()], "sha256": "a" * 64,
                                   "size": 435_212_151, "extracts_to": INNER}}}
    checksums = tmp_path / "checksums.json"
    checksums.write_text(json.dumps(table))
    with pytest.raises(PceaError, match="could not reach"):
        fetch_modelnet40("h5", root, checksums=checksums, progress=False, retries=0)
    assert (root / f"{ARCHIVE}.refused").is_file()
    verify = (root / f"{ARCHIVE}.refused")
    with pytest.raises(PceaFileError, match=f"is {len(archive):,} bytes, the archive has 435,212,151"):
        verify_archive(verify, "a" * 64, delete_on_failure=False, size=435_212_151)


# --- issue 23, item 12: odd URLs ---------------------------------------------------------------


def test_a_file_url_naming_a_regular_file_is_copied_verified_and_extracted(tmp_path, archive):
    local = tmp_path / "mirror" / ARCHIVE
    local.parent.mkdir()
    local.write_bytes(archive)
    root = tmp_path / "root"
    argv = ["download", "modelnet40", "--root", str(root), "--url", local.as_uri(),
            "--sha256", hashlib.sha256(archive).hexdigest()]
    assert main(argv) == 0
    assert (root / INNER / MARKER).is_file() and local.read_bytes() == archive  # the source is untouched


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "missing"])
def test_a_file_url_naming_anything_but_a_regular_file_is_one_line(tmp_path, capsys, kind):
    special = tmp_path / "special.zip"
    if kind == "fifo":
        os.mkfifo(special)  # reading it without a writer would block for ever
    elif kind == "directory":
        special.mkdir()
    elif kind == "device":
        special = Path("/dev/zero")  # endless data
    expected = {"fifo": "is a fifo, not a regular file", "device": "is a device, not a regular file",
                "directory": "is a directory, expected a zip archive", "missing": "no such zip archive"}[kind]
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the download blocked"))
    signal.alarm(10)
    try:
        status = main(["download", "modelnet40", "--root", str(tmp_path / "root"), "--url", special.as_uri()])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    error = capsys.readouterr().err
    assert status == 1 and error.startswith("pcea: error: ") and len(error.strip().splitlines()) == 1
    assert expected in error.lower() and str(special) in error


@pytest.mark.parametrize(("url", "problem"), [
    ("http://[::1", "is not a valid URL (Invalid IPv6 URL)"),
    ("http://127.0.0.1:port/x.zip", "is not a valid URL"),
    ("ftp://example.org/x.zip", "unsupported URL scheme 'ftp'"),
    ("modelnet40.zip", "unsupported URL scheme '(none)'"),
    ("file://elsewhere/x.zip", "must name a local file"),
])
def test_malformed_or_unsupported_urls_are_one_line(tmp_path, capsys, url, problem):
    assert main(["download", "modelnet40", "--root", str(tmp_path / "root"), "--url", url]) == 1
    error = capsys.readouterr().err
    assert error.startswith("pcea: error: ") and problem in error and len(error.strip().splitlines()) == 1
