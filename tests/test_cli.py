"""The command line: pcea info, error handling, python -m pcea, option validation, closed pipes."""

import argparse
import errno
import os
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import SMALLEST

import pcea
from pcea.cli import build_parser, main
from pcea.engine.checkpoint import save_checkpoint
from pcea.errors import PceaFileError


def test_info_describes_a_model(capsys):
    assert main(["info", "--model", "pct"]) == 0
    out = capsys.readouterr().out
    assert f"pcea     {pcea.__version__}" in out
    assert "torch" in out and "threads" in out
    assert "pct: 2,876,136 parameters" in out
    for stage in ("embedding", "stage1", "stage2", "blocks", "fuse", "head"):
        assert stage in out


def test_unknown_model_is_one_line_and_exit_1(capsys):
    assert main(["info", "--model", "pointnet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pcea: error: unknown model 'pointnet'; choose one of pcea, pct, pct-sa"]


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "pcea", "info"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "numpy" in result.stdout


def test_usage_error_exits_2():
    result = subprocess.run([sys.executable, "-m", "pcea", "info", "--bogus"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr


# -- issue 15: the command line -----------------------------------------------------------------

# PCEA_ALLOCATOR=system: no allocator re-exec, one Python start per command.
ENV = {**os.environ, "PCEA_ALLOCATOR": "system"}


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    """(the tiny checkpoint, a 300-point cloud file)."""
    cloud = tmp_path_factory.mktemp("clouds") / "cloud.xyz"
    np.savetxt(cloud, np.random.default_rng(0).normal(size=(300, 3)))
    return tiny_checkpoint, cloud


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pcea {pcea.__version__}"


@pytest.mark.parametrize("command", [["info"], ["classify", "CKPT", "CLOUD", "--json"]])
def test_output_cut_short_ends_quietly(checkpoint, command):
    # A reader that has gone away, as after `pcea info | head -3`: every write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    argv = [str({"CKPT": checkpoint[0], "CLOUD": checkpoint[1]}.get(arg, arg)) for arg in command]
    try:
        result = subprocess.run([sys.executable, "-m", "pcea", *argv], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=ENV, timeout=600)
    finally:
        os.close(write_end)
    assert result.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert result.returncode == 141


@pytest.mark.parametrize("args, message", [
    (["--model-opt", "memory=-1"], "memory=-1: expected a positive integer"),
    (["--model-opt", "memory=abc"], "memory='abc': expected a positive integer"),
    (["--model-opt", "centers=abc"], "centers='abc': expected two positive integers"),
    (["--model-opt", "heads=0"], "heads=0: expected a positive integer"),
    (["--model-opt", "heads=3"], "heads=3 must divide the attention width"),
    (["--model-opt", "memory=2.5"], "memory=2.5: expected a positive integer"),
    (["--model-opt", "bogus=1"], "unknown model option(s) bogus"),
    (["--seed", "18446744073709551616"], "seed=18446744073709551616: need 0 <= seed <= 4294967295"),
    (["--seed", "-1"], "seed=-1: need 0 <= seed"),
    (["--lr", "inf"], "lr=inf: expected a finite number"),
    (["--lr", "nan"], "lr=nan: expected a finite number"),
    (["--threads", "100000"], "threads=100000: need 1 to"),
    (["--workers", "100000"], "workers=100000: need 0 to"),
    (["--points", "100"], "need num_points >= centers[0] >= centers[1], got 100, 512, 256"),
])
def test_bad_train_values_are_one_line_before_anything_is_created(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "no-data"), "--out", str(out), *args]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("pcea: error: ") and message in captured.err, captured.err
    assert captured.err.count("\n") == 1
    assert captured.out == ""  # no config line printed for a command that fails
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ("epochs: 2.5\n", "c.yaml: epochs=2.5: expected an integer"),
    ('normals: "no"\n', "c.yaml: normals='no': expected true or false"),
    ("batch_size: true\n", "c.yaml: batch_size=True: expected an integer"),
    ("lr: fast\n", "c.yaml: lr='fast': expected a finite number"),
    ("model_options: [1, 2]\n", "c.yaml: model_options=[1, 2]: expected a mapping"),
])
def test_bad_config_file_values_are_one_line_naming_the_file(tmp_path, capsys, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["info", "--model", "pcea", "--num-classes", "-3"], "-3: expected a positive integer"),
    (["info", "--model", "pcea", "--num-classes", "0"], "0: expected a positive integer"),
    (["classify", "CKPT", "CLOUD", "--seed", "-1"], "-1: need 0 to 4294967295"),
    (["eval", "CKPT", "--seed", "18446744073709551616"], "need 0 to 4294967295"),
    (["bench", "--threads", "100000"], "100000: need 1 to"),
    (["prepare", "modelnet40", "--src", "x", "--out", "y", "--workers", "100000"], "100000: need 1 to"),
])
def test_bad_flag_values_are_usage_errors(checkpoint, capsys, argv, message):
    argv = [str({"CKPT": checkpoint[0], "CLOUD": checkpoint[1]}.get(arg, arg)) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_max_gb_must_be_finite(value, capsys):
    assert main(["download", "modelnet40", "--max-gb", value]) == 1
    expected = f"pcea: error: --max-gb {float(value)}: must be a positive, finite number of GiB\n"
    assert capsys.readouterr().err == expected


def test_classify_refuses_too_few_points_before_printing_anything(checkpoint, capsys):
    path, cloud = checkpoint
    assert main(["classify", str(path), str(cloud), "--points", "10"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no table header before the error
    assert captured.err == "pcea: error: num_points=10: the model's first stage needs at least 32 points\n"


@pytest.mark.parametrize("change, message", [
    ({"model_config": {**SMALLEST, "memory": "abc"}},
     "malformed checkpoint: its model_config is invalid: memory='abc'"),
    ({"class_names": "abcd"}, "malformed checkpoint: 'class_names' is not a list of strings"),
    ({"model": {"weight": "w"}}, "malformed checkpoint: 'model' is not a mapping of parameter names"),
])
def test_a_malformed_checkpoint_is_one_line_in_eval_classify_and_load_model(checkpoint, tmp_path, capsys,
                                                                           change, message):
    from pcea.engine.checkpoint import load_checkpoint

    path, cloud = checkpoint
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {**load_checkpoint(path), **change})  # a valid header and hash
    with pytest.raises(PceaFileError, match=f"bad.pt: {message}"):
        pcea.load_model(bad)
    for argv in (["eval", str(bad), "--data", str(tmp_path)], ["classify", str(bad), str(cloud)]):
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert captured.err == f"pcea: error: {bad}: " + captured.err.split(f"{bad}: ", 1)[1]
        assert message in captured.err and captured.err.count("\n") == 1 and captured.out == ""


def test_baseline_accepts_synthetic(tmp_path, capsys, monkeypatch):
    from pcea.data import synth

    made = synth.generate(tmp_path / "shapes", classes=3, per_class=10, points=64)
    monkeypatch.setattr(synth, "ensure_synthetic", lambda: made)  # the default dataset takes ~30 s to make
    assert main(["baseline", "--data", "synthetic"]) == 0
    assert "D2 baseline" in capsys.readouterr().out


def test_synth_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from pcea.data import synth

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synth, "_write_h5", full)
    out = tmp_path / "shapes"
    assert main(["synth", "--out", str(out), "--classes", "2", "--per-class", "2", "--points", "16"]) == 1
    err = capsys.readouterr().err
    assert err == f"pcea: error: {out}: cannot write the dataset: No space left on device\n"
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary directory


def test_help_texts_quote_the_measured_amp_figures():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {name: sub.format_help() for name, sub in subparsers.choices.items()}
    for name in ("train", "eval", "classify"):
        assert "2x faster" not in helps[name].replace("\n", " ")
    assert "no faster than float32 for training" in " ".join(helps["train"].split())
    assert "1.4x faster inference" in " ".join(helps["eval"].split())
