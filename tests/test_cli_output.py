"""Issue 23, items 4 and 10 and issue 22's small CLI things: what reaches the terminal.

Names too long for the system, files the user may not read, a terminal that only takes ASCII,
names that try to forge lines (from a file name or a crafted checkpoint), NaN weights, and
options typed almost right. Each ends in one line (or a skipped file), never a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pcea
from pcea.cli import main, os_error_line
from pcea.engine.checkpoint import load_checkpoint, save_checkpoint

ENV = {**os.environ, "PCEA_ALLOCATOR": "system"}  # no allocator restart: one Python start per command
LONG = "x" * 300  # a name of 300 bytes, over NAME_MAX (255)


def _cloud(path: Path, points: int = 300) -> Path:
    np.savetxt(path, np.random.default_rng(0).normal(size=(points, 3)))
    return path


def _one_error_line(err: str, *needles: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcea: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- names too long, paths over PATH_MAX ------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["classify", "LONG.pt", "CLOUD"],
    ["eval", "LONG.pt"],
    ["train", "--data", "LONG", "--out", "TMP/run", "--epochs", "1"],
    ["prepare", "modelnet40", "--src", "LONG", "--out", "TMP/out"],
    ["synth", "--out", "TMP/LONG", "--classes", "2", "--per-class", "2", "--points", "16"],
    ["export", "CKPT", "--onnx", "TMP/LONG.onnx"],
    ["bench", "--json", "TMP/LONG.json"],
])
def test_a_name_over_255_bytes_is_one_line_naming_it(argv, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cloud = _cloud(tmp_path / "cloud.xyz")
    values = {"CLOUD": str(cloud), "CKPT": str(tiny_checkpoint), "LONG": LONG}
    argv = [values.get(arg, arg).replace("TMP", str(tmp_path)).replace("LONG", LONG) for arg in argv]
    assert main(argv) == 1
    captured = capsys.readouterr()
    _one_error_line(captured.err, LONG, "too long")


def test_a_path_over_path_max_is_one_line(tiny_checkpoint, tmp_path, capsys):
    deep = "/".join(["d" * 200] * 25) + "/best.pt"  # 5,000 characters of short enough names
    assert main(["classify", deep, str(_cloud(tmp_path / "cloud.xyz"))]) == 1
    _one_error_line(capsys.readouterr().err, "too long")


def test_a_name_too_long_among_good_files_is_skipped(tiny_checkpoint, tmp_path, capsys):
    good = _cloud(tmp_path / "good.xyz")
    status = main(["classify", str(tiny_checkpoint), str(good), str(tmp_path / f"{LONG}.xyz")])
    captured = capsys.readouterr()
    assert status == 1
    assert "good.xyz" in captured.out  # the good file is still classified
    assert captured.err.count("\n") == 1 and "File name too long" in captured.err
    assert captured.err.startswith("pcea: skipped ")


def test_os_error_line_names_both_paths_of_a_rename():
    err = OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b")
    assert os_error_line(err) == "a -> b: Invalid cross-device link"
    assert os_error_line(OSError("12288 requested and 5088 written")) == "12288 requested and 5088 written"


# -- files and checkpoints the user may not read ----------------------------------------------------

def _deny(monkeypatch, name: str) -> None:
    """``os.open`` of any path ending in ``name`` fails as for a mode-600 file of another owner."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if os.fspath(path).endswith(name):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def test_an_unreadable_file_among_good_files_is_skipped(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    for name in ("a.xyz", "secret.xyz", "z.xyz"):
        _cloud(tmp_path / name)
    _deny(monkeypatch, "secret.xyz")
    assert main(["classify", str(tiny_checkpoint), str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "a.xyz" in captured.out and "z.xyz" in captured.out and "secret" not in captured.out
    assert captured.err == (f"pcea: skipped {tmp_path / 'secret.xyz'}: cannot read the point or mesh file: "
                            "Permission denied\n")


def test_an_unreadable_checkpoint_is_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    ckpt = Path(shutil.copy(tiny_checkpoint, tmp_path / "locked.pt"))
    _deny(monkeypatch, "locked.pt")
    assert main(["classify", str(ckpt), str(_cloud(tmp_path / "cloud.xyz"))]) == 1
    _one_error_line(capsys.readouterr().err, "locked.pt", "Permission denied")


def _setpriv() -> list[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run pcea as an unprivileged user")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*drop, sys.executable, "-c", "import pcea"], cwd="/", env={**ENV, "HOME": "/tmp"},
                           capture_output=True, text=True, timeout=600)
    if probe.returncode != 0:  # e.g. a clone inside a folder of mode 0700 (mktemp -d)
        pytest.skip("the unprivileged user cannot import pcea from this checkout (a folder above it is "
                    f"closed to other users): {(probe.stderr.strip().splitlines() or ['no message'])[-1]}")
    return drop


@pytest.mark.slow
def test_permissions_as_an_unprivileged_user(tiny_checkpoint):
    """Real permission bits (root reads everything, so the commands run as nobody)."""
    drop = _setpriv()
    root = Path(tempfile.mkdtemp(prefix="pcea-perm-"))  # pytest's tmp_path is closed to other users
    try:
        os.chmod(root, 0o755)
        (root / "in").mkdir(mode=0o755)
        (root / "closed").mkdir(mode=0o700)
        for name in ("a.xyz", "secret.xyz"):
            os.chmod(_cloud(root / "in" / name), 0o644)
        os.chmod(root / "in" / "secret.xyz", 0o600)  # root's, mode 600
        os.chmod(shutil.copy(tiny_checkpoint, root / "best.pt"), 0o644)
        os.chmod(shutil.copy(tiny_checkpoint, root / "locked.pt"), 0o600)

        def run(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run([*drop, sys.executable, "-m", "pcea", *argv], cwd=root,
                                  env={**ENV, "HOME": "/tmp"}, capture_output=True, text=True, timeout=600)

        skipped = run("classify", "best.pt", "in")
        assert skipped.returncode == 1, skipped.stderr
        assert "in/a.xyz" in skipped.stdout
        assert skipped.stderr == ("pcea: skipped in/secret.xyz: cannot read the point or mesh file: "
                                  "Permission denied\n")
        for argv, name in ((["classify", "locked.pt", "in"], "locked.pt"),
                           (["eval", "best.pt", "--data", "closed"], "closed"),
                           (["train", "--data", "synthetic", "--out", "closed/run"], "closed/run")):
            result = run(*argv)
            assert result.returncode == 1, result.stderr
            _one_error_line(result.stderr, name, "Permission denied")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- encodings: an ASCII-only terminal ----------------------------------------------------------

@pytest.mark.slow
def test_non_ascii_names_print_on_an_ascii_only_stdout(tiny_checkpoint, tmp_path):
    cloud = _cloud(tmp_path / "caf\u00e9.xyz")
    env = {**ENV, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    for argv in (["classify", str(tiny_checkpoint), str(cloud)],
                 ["classify", str(tiny_checkpoint), str(tmp_path / "gon\u00e9.xyz")]):
        result = subprocess.run([sys.executable, "-m", "pcea", *argv], env=env, capture_output=True,
                                timeout=600)
        assert b"Traceback" not in result.stderr, result.stderr.decode()
        assert b"caf\\xe9.xyz" in result.stdout or b"gon\\xe9.xyz: no such file" in result.stderr


# -- names that try to forge lines or move the cursor ------------------------------------------------

def test_a_file_name_cannot_forge_a_warning_line(tiny_checkpoint, tmp_path, capsys):
    # 50 points for a 128-point model: load_points warns, naming the file.
    forged = _cloud(tmp_path / "a\npcea: error: forged.xyz", points=50)
    assert main(["classify", str(tiny_checkpoint), str(forged)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pcea: warning: ")
    assert "a\\npcea: error: forged.xyz" in err


def test_class_names_from_a_checkpoint_are_escaped(tiny_checkpoint, tmp_path, capsys):
    crafted = tmp_path / "crafted.pt"
    names = ["chair\npcea: error: forged", "\x1b[2Jsofa", "box", "rod"]
    save_checkpoint(crafted, {**load_checkpoint(tiny_checkpoint), "class_names": names})
    assert main(["classify", str(crafted), str(_cloud(tmp_path / "cloud.xyz"))]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and len(out.splitlines()) == 2  # the header and one row
    assert "chair\\npcea: error: forged" in out and "\\x1b[2Jsofa" in out


def test_nan_weights_are_an_error_naming_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    payload = load_checkpoint(tiny_checkpoint)
    state = dict(payload["model"])
    name = [key for key in state if key.endswith("weight")][-1]
    state[name] = torch.full_like(state[name], float("nan"))
    body = io.BytesIO()
    torch.save({**payload, "model": state}, body)  # save_checkpoint itself refuses NaN
    poisoned = tmp_path / "nan.pt"
    data = body.getvalue()
    header = f"PCEA-CHECKPOINT/1 {hashlib.sha256(data).hexdigest()} {len(data)}\n"
    poisoned.write_bytes(header.encode() + data)
    cloud = _cloud(tmp_path / "cloud.xyz")
    assert main(["classify", str(poisoned), str(cloud)]) == 1
    captured = capsys.readouterr()
    assert "nan" not in captured.out
    _one_error_line(captured.err, str(poisoned), "not finite")
    with pytest.raises(pcea.PceaError, match="nan.pt: the model's outputs are not finite"):
        pcea.classify(cloud, poisoned)


# -- options typed almost right ---------------------------------------------------------------------

def test_a_mistyped_option_gets_a_suggestion(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(tiny_checkpoint), str(_cloud(tmp_path / "c.xyz")), "--topk", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "pcea classify: error: unrecognized arguments: --topk 3 (did you mean --top-k?)" in err
    with pytest.raises(SystemExit):
        main(["info", "--bogus"])
    assert "did you mean" not in capsys.readouterr().err


def test_a_bad_option_value_is_a_usage_error_as_the_readme_says(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(tiny_checkpoint), str(_cloud(tmp_path / "c.xyz")), "--top-k", "0"])
    assert exit_info.value.code == 2
    assert "--top-k: 0: expected a positive integer" in capsys.readouterr().err
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "an option value out of range" in readme and "exit with status 2" in readme



CPU_ALLOCATOR_GAVE_UP = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                     "not enough memory: you tried to allocate 7 TB")


@pytest.mark.parametrize("error", [MemoryError(), CPU_ALLOCATOR_GAVE_UP])
def test_running_out_of_memory_anywhere_is_one_line(error, monkeypatch, capsys):
    """Issue 23 item 6: counts are bounded before allocating, but a model's own peak is not; a
    MemoryError (or torch's CPU allocator giving up) anywhere in a command is one line, status 1."""
    import pcea.cli

    def explode(args):
        raise error

    monkeypatch.setattr(pcea.cli, "_cmd_info", explode)
    assert pcea.cli.main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pcea: error: out of memory in pcea info (") and err.count("\n") == 1
    assert "Traceback" not in err


def test_other_runtime_errors_are_not_reported_as_memory(monkeypatch):
    import pcea.cli

    def explode(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pcea.cli, "_cmd_info", explode)
    with pytest.raises(RuntimeError, match="a bug"):
        pcea.cli.main(["info"])
