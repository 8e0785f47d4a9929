"""The process settings of pcea's commands: the restart decision (from the environment, never timed),
the restart itself from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pcea
from pcea import runtime
from pcea.runtime import FAST_ENV, MARKER, THREAD_ENV, allocator_env, describe_allocator, keep_freed_memory

LINUX = dict(system="linux", libc="glibc")


@pytest.mark.parametrize("command", ["train", "bench"])
def test_training_commands_get_the_fast_configuration(command):
    env = allocator_env({"PATH": "/bin"}, command, **LINUX)
    assert env is not None
    assert {name: env[name] for name in FAST_ENV} == FAST_ENV
    assert env["GOMP_SPINCOUNT"] == THREAD_ENV["GOMP_SPINCOUNT"] == "10000"
    assert env["PATH"] == "/bin" and env[MARKER] == "1"


@pytest.mark.parametrize("command", ["eval", "classify"])
def test_inference_commands_keep_the_default_malloc(command):
    """issue 22: the malloc settings only held memory for inference; the OpenMP setting stays."""
    env = allocator_env({"PATH": "/bin"}, command, **LINUX)
    assert env is not None and env["GOMP_SPINCOUNT"] == "10000" and env[MARKER] == "1"
    assert not any(name in env for name in FAST_ENV)


@pytest.mark.parametrize(
    "environ, malloc, omp",
    [
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, False, True),  # the user's own glibc settings are kept
        ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, False, True),  # another allocator is in charge
        ({"OMP_WAIT_POLICY": "ACTIVE"}, True, False),  # the user's own OpenMP choices are kept
        ({"GOMP_SPINCOUNT": "0"}, True, False),
        ({"KMP_BLOCKTIME": "0"}, True, False),
    ],
)
def test_a_users_own_choice_is_kept_and_the_rest_is_set(environ, malloc, omp):
    env = allocator_env(environ, "train", **LINUX)
    assert env is not None and env[MARKER] == "1"
    assert all(name in env for name in FAST_ENV) == malloc
    assert ("GOMP_SPINCOUNT" in env and env["GOMP_SPINCOUNT"] == "10000") == omp
    assert all(env[name] == value for name, value in environ.items())


def test_musl_gets_the_wait_policy_only():
    env = allocator_env({}, "train", **dict(system="linux", libc="musl"))
    assert env is not None and env["GOMP_SPINCOUNT"] == "10000"
    assert not any(name in env for name in FAST_ENV)


@pytest.mark.parametrize(
    "environ, command, device, platform_kwargs",
    [
        ({}, "info", None, LINUX),  # not a heavy command
        ({}, "download", "cpu", LINUX),
        ({"PCEA_ALLOCATOR": "system"}, "train", None, LINUX),  # the documented opt-out
        ({"PCEA_ALLOCATOR": "SYSTEM"}, "bench", None, LINUX),
        ({MARKER: "1"}, "train", None, LINUX),  # already re-executed: no loop
        ({"MALLOC_TRIM_THRESHOLD_": "0", "OMP_WAIT_POLICY": "ACTIVE"}, "train", None, LINUX),  # the user's
        ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4", "GOMP_SPINCOUNT": "0"}, "eval", None, LINUX),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "classify", None, LINUX),  # inference: nothing left to set
        ({}, "train", "cuda", LINUX),
        ({}, "train", "cuda:1", LINUX),
        ({}, "train", "mps", LINUX),
        ({}, "train", None, dict(system="darwin", libc="")),
    ],
)
def test_no_reexec(environ, command, device, platform_kwargs):
    assert allocator_env(environ, command, device, **platform_kwargs) is None


def test_reexec_env_is_stable_under_a_second_decision():
    env = allocator_env({}, "bench", "cpu", **LINUX)
    assert allocator_env(env, "bench", "cpu", **LINUX) is None


def test_reexec_if_needed_replaces_the_process_with_pcea_on_the_same_import_path(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime.os, "execve", lambda *args: calls.append(args))
    monkeypatch.setattr(runtime, "allocator_env", lambda environ, command, device: {"X": "1"})
    runtime.reexec_if_needed("train", None, ["train", "--epochs", "1"])
    (path, argv, env), = calls
    assert path == sys.executable and argv == runtime.restart_argv(["train", "--epochs", "1"])
    assert argv[0] == path and argv[1] == "-c" and argv[3:] == ["train", "--epochs", "1"]
    assert "-m" not in argv and repr(sys.path) in argv[2]  # not ``-m``: that puts the cwd first
    assert env == {"X": "1"}


def test_reexec_failure_is_not_fatal(monkeypatch):
    tried = []

    def refuse(*args):
        tried.append(args)
        raise PermissionError("no exec here")

    monkeypatch.setattr(runtime.os, "execve", refuse)
    monkeypatch.setattr(runtime, "allocator_env", lambda environ, command, device: {"X": "1"})
    assert runtime.reexec_if_needed("train", None, ["train"]) is None  # returns, pcea runs as it is
    assert tried == [(sys.executable, runtime.restart_argv(["train"]), {"X": "1"})]  # it was tried


def _shadowing_folder(tmp_path: Path) -> Path:
    """A folder holding a ``pcea/`` package that must never be imported (a clone, a user's project)."""
    (tmp_path / "pcea").mkdir()
    (tmp_path / "pcea" / "__init__.py").write_text(
        'raise ImportError("imported the pcea folder of the current directory")\n')
    return tmp_path


@pytest.mark.slow
def test_the_restart_command_imports_this_pcea_from_any_folder(tmp_path):
    result = subprocess.run(runtime.restart_argv(["--version"]), cwd=_shadowing_folder(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pcea {pcea.__version__}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pcea restarts itself on Linux only")
@pytest.mark.slow
def test_the_cli_restarts_itself_from_a_folder_holding_a_pcea_folder(tmp_path):
    """issue 22: ``cd`` next to the clone, run ``.venv/bin/pcea ...``: the restart must import this pcea."""
    script = Path(sys.executable).with_name("pcea")  # the console script of this environment
    if script.is_file():
        command = [str(script)]
    else:  # as the console script does: the current folder is not on sys.path
        command = [sys.executable, "-c", "import sys; del sys.path[0]; from pcea.cli import main; "
                   "raise SystemExit(main())"]
    env = {name: value for name, value in os.environ.items()
           if name not in (*FAST_ENV, *runtime.THREAD_CHOICES, MARKER, "PCEA_ALLOCATOR", "LD_PRELOAD")}
    result = subprocess.run([*command, "bench", "--only", "ops", "--fps", "2x64:8", "--points", "64",
                             "--repeats", "1", "--warmup", "0"], cwd=_shadowing_folder(tmp_path), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "GOMP_SPINCOUNT=10000 (set by pcea)" in result.stdout  # it did restart, as this pcea


def test_cli_main_with_argv_never_reexecs(monkeypatch, capsys):
    from pcea import cli

    monkeypatch.setattr(runtime.os, "execve", lambda *args: pytest.fail("re-exec from a library call"))
    assert cli.main(["bench", "--only", "ops", "--fps", "2x64:8", "--points", "64",
                     "--repeats", "1", "--warmup", "0"]) == 0
    assert "allocator" in capsys.readouterr().out


def test_describe_allocator():
    assert "tcmalloc" in describe_allocator({"LD_PRELOAD": "libtcmalloc_minimal.so"})
    fast = describe_allocator({**FAST_ENV, MARKER: "1"})
    assert "MALLOC_MMAP_THRESHOLD_" in fast and "set by pcea" in fast
    assert "set by the user" in describe_allocator({"MALLOC_TOP_PAD_": "1"})
    assert "PCEA_ALLOCATOR=system" in describe_allocator({"PCEA_ALLOCATOR": "system"})
    assert "default" in describe_allocator({})
    assert "GOMP_SPINCOUNT=10000 (set by pcea)" in describe_allocator({**THREAD_ENV, MARKER: "1"})
    assert "OMP_WAIT_POLICY=ACTIVE (set by the user)" in describe_allocator({"OMP_WAIT_POLICY": "ACTIVE"})
    assert "OpenMP default" in describe_allocator({})


def test_keep_freed_memory_makes_the_restarts_settings_with_mallopt():
    calls = []
    assert keep_freed_memory({}, mallopt=lambda param, value: calls.append((param, value)) or 1, **LINUX)
    # glibc's M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD; values as FAST_ENV's, within a C int
    assert sorted(calls) == [(-3, 1 << 30), (-2, 1 << 30), (-1, 2**31 - 1)]
    assert not keep_freed_memory({}, mallopt=lambda param, value: int(param != -3), **LINUX)  # one refused


@pytest.mark.parametrize(
    "environ, platform_kwargs",
    [
        ({"PCEA_ALLOCATOR": "system"}, LINUX),  # the documented opt-out
        ({"MALLOC_TOP_PAD_": "0"}, LINUX),  # the user's own glibc settings
        ({"LD_PRELOAD": "libjemalloc.so.2"}, LINUX),  # another allocator
        ({}, dict(system="linux", libc="musl")),
        ({}, dict(system="darwin", libc="")),
    ],
)
def test_keep_freed_memory_leaves_the_users_choice(environ, platform_kwargs):
    never = lambda *args: pytest.fail("mallopt called")  # noqa: E731
    assert not keep_freed_memory(environ, mallopt=never, **platform_kwargs)


@pytest.mark.skipif(not sys.platform.startswith("linux") or runtime.platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
@pytest.mark.slow
def test_keep_freed_memory_is_accepted_by_this_glibc():
    # in a fresh process: this one's malloc is left as it is
    code = "import sys, pcea.runtime as r; sys.exit(0 if r.keep_freed_memory({}) else 1)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
