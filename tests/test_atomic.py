"""write_atomic: whole files or none, and one-line errors."""

import os
from pathlib import Path

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


# --- issue 15: what pcea writes through a temporary name gets the user's usual permissions ----


@pytest.fixture(params=[0o022, 0o027, 0o002], ids=["umask022", "umask027", "umask002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_temporary_files_and_directories_follow_the_umask(tmp_path, umask):
    from pcea.atomic import make_temp_dir, make_temp_file

    fd, name = make_temp_file(tmp_path, prefix=".x.")
    os.close(fd)
    assert mode(Path(name)) == 0o666 & ~umask
    assert mode(make_temp_dir(tmp_path, prefix=".d.")) == 0o777 & ~umask
    write_atomic(tmp_path / "a.txt", "a")
    assert mode(tmp_path / "a.txt") == 0o666 & ~umask


def test_synth_prepare_and_extract_write_readable_data(tmp_path):
    import zipfile

    from pcea.data.download import safe_extract
    from pcea.data.prepare import prepare_modelnet40
    from pcea.data.synth import generate

    umask = 0o027  # neither mkstemp's 0600 nor mkdtemp's 0700, nor the common 0644/0755
    previous = os.umask(umask)
    try:
        check_modes(tmp_path, umask, generate, prepare_modelnet40, safe_extract, zipfile)
    finally:
        os.umask(previous)


def check_modes(tmp_path, umask, generate, prepare_modelnet40, safe_extract, zipfile):
    out = generate(tmp_path / "shapes", classes=2, per_class=3, points=64, workers=1)
    assert mode(out) == 0o777 & ~umask                                   # was mkdtemp's 0700
    assert mode(out / "h5" / "ply_data_train0.h5") == 0o666 & ~umask
    prepared = tmp_path / "prepared"
    prepare_modelnet40(out / "mesh", prepared, points=32, workers=1, progress=False, log=lambda line: None)
    for h5 in prepared.glob("*.h5"):
        assert mode(h5) == 0o666 & ~umask, h5                          # was mkstemp's 0600
    assert list(prepared.glob("*.h5"))
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/x.txt", b"x")
    extracted = safe_extract(archive, tmp_path / "extracted")
    assert mode(extracted) == 0o777 & ~umask


# --- issue 23 item 10: never replace a device, a FIFO or a socket; clean what killed writers left ---


def _special_paths(tmp_path: Path) -> dict[str, Path]:
    import socket

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    null = tmp_path / "null"
    null.symlink_to(os.devnull)  # as `--onnx /dev/null`, without touching the real one
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    return {"a FIFO": fifo, "a device": null, "a socket": sock_path}


def test_a_device_fifo_or_socket_is_never_replaced(tmp_path):
    for kind, path in _special_paths(tmp_path).items():
        before = os.stat(path).st_mode
        with pytest.raises(PceaFileError, match=f"is {kind}, not a regular file"):
            write_atomic(path, "data")
        assert os.stat(path).st_mode == before  # still the device, FIFO or socket
    assert os.path.islink(tmp_path / "null") and sorted(p.name for p in tmp_path.iterdir()) == [
        "fifo", "null", "sock"]  # and no temporary file left


_KILLED_WRITER = """
import os, sys, time
from pcea.atomic import replacing, temporary_dir
kind, target = sys.argv[1], sys.argv[2]
if kind == "file":
    with replacing(target) as tmp:
        tmp.write_bytes(b"half")
        print(tmp, flush=True)
        time.sleep(1000)
else:
    with temporary_dir(os.path.dirname(target), prefix="pcea-test-") as tmp:
        print(tmp, flush=True)
        time.sleep(1000)
"""


def _writer(kind: str, target: Path):
    """A process stopped inside a write (kill it to leave what kill -9 leaves): (process, its temp)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, kind, str(target)],
                               stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


@pytest.mark.slow
def test_stale_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    import signal

    from pcea.atomic import remove_stale_temporaries, temporary_pattern

    target = tmp_path / "m[1].onnx"  # glob characters in the name are matched literally
    killed, stale = _writer("file", target)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    live, kept = _writer("file", target)
    try:
        assert stale.exists() and kept.exists()
        assert remove_stale_temporaries(tmp_path, [temporary_pattern(target.name)]) == [stale]
        assert not stale.exists() and kept.exists()  # a live writer's file is locked, so left alone
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(tmp_path, [temporary_pattern(target.name)]) == [kept]


@pytest.mark.slow
def test_a_temporary_dir_of_a_killed_process_goes_with_the_next_one(tmp_path):
    import signal

    from pcea.atomic import temporary_dir

    killed, stale = _writer("dir", tmp_path / "x")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    live, kept = _writer("dir", tmp_path / "x")
    try:
        with temporary_dir(tmp_path, prefix="pcea-test-") as mine:
            assert mine.is_dir() and kept.is_dir() and not stale.exists()
    finally:
        live.kill()
        live.wait()
    assert not mine.exists()
