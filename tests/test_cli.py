"""The command line: pcea info, error handling, python -m pcea."""

import subprocess
import sys

import pcea
from pcea.cli import main


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
