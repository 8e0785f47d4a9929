"""The allocator re-exec decision: computed from the environment, never timed."""

from __future__ import annotations

import pytest

from pcea.fast import allocator
from pcea.fast.allocator import FAST_ENV, MARKER, THREAD_ENV, allocator_env, describe_allocator

LINUX = dict(system="linux", libc="glibc")


@pytest.mark.parametrize("command", ["train", "eval", "classify", "bench"])
def test_cpu_commands_get_the_fast_configuration(command):
    env = allocator_env({"PATH": "/bin"}, command, **LINUX)
    assert env is not None
    assert {name: env[name] for name in FAST_ENV} == FAST_ENV
    assert env["GOMP_SPINCOUNT"] == THREAD_ENV["GOMP_SPINCOUNT"] == "10000"
    assert env["PATH"] == "/bin" and env[MARKER] == "1"


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


def test_reexec_if_needed_replaces_the_process_with_python_m_pcea(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda *args: calls.append(args))
    monkeypatch.setattr(allocator, "allocator_env", lambda environ, command, device: {"X": "1"})
    allocator.reexec_if_needed("train", None, ["train", "--epochs", "1"])
    (path, argv, env), = calls
    assert argv[1:] == ["-m", "pcea", "train", "--epochs", "1"] and argv[0] == path
    assert env == {"X": "1"}


def test_reexec_failure_is_not_fatal(monkeypatch):
    def refuse(*args):
        raise PermissionError("no exec here")

    monkeypatch.setattr(allocator.os, "execve", refuse)
    monkeypatch.setattr(allocator, "allocator_env", lambda environ, command, device: {"X": "1"})
    allocator.reexec_if_needed("train", None, ["train"])  # returns, pcea runs as it is


def test_cli_main_with_argv_never_reexecs(monkeypatch, capsys):
    from pcea import cli

    monkeypatch.setattr(allocator.os, "execve", lambda *args: pytest.fail("re-exec from a library call"))
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
