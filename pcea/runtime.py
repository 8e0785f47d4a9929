"""Process set-up: the memory allocator and OpenMP settings ``pcea`` commands restart themselves with.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB by
default) with a fresh ``mmap`` and returns it with ``munmap`` on free. A
forward pass of the classifier allocates activations of tens to hundreds of
MB, so each pass maps them again and the kernel zero-fills every page on first
touch (docs/benchmarks.md measures how much of the process time that was).
Raising ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_TOP_PAD_`` keeps freed memory in the heap for the next pass. glibc
reads them when the process starts, so ``pcea train`` and ``pcea bench``
re-execute themselves once with them set (:func:`reexec_if_needed`); a library
caller's training (``pcea.train``) makes the same settings with ``mallopt``
instead (:func:`keep_freed_memory`). Measured on a training step of the default
model (512 points, batch 16): 286,000 minor page faults and 0.87 s of system time
per step without; 4 faults and 0.01 s with the restart, 29,000 and 0.12 s with
``mallopt`` (AMD EPYC, CPU family 25, shared with other work). Inference (``classify``,
``eval``) runs its grouped layers in small chunks and gains nothing from them
(the same speed and 0.49-0.50 GB peak RSS classifying 70 files), so it gets only
the OpenMP setting below and keeps the default of giving memory back.

The same re-exec sets ``GOMP_SPINCOUNT=10000``. After each parallel region
the OpenMP workers of PyTorch's pip wheels (GNU libgomp) otherwise spin on
their cores for a long while, and the compiled FPS and kNN kernels
(:mod:`pcea.fast.sampling`), which split a batch over their own threads right
after the layers before them, then share one core with a spinning thread. Sleeping
at once (``OMP_WAIT_POLICY=PASSIVE``) fixed FPS but cost the model's many
short parallel regions a wake-up each; a short spin of 10,000 iterations
keeps the workers for back-to-back regions and frees the cores in time for
FPS (both measured in docs/benchmarks.md).

The OpenMP setting cannot be made in-process: libgomp reads it when torch is
imported, so a library caller sets ``GOMP_SPINCOUNT=10000`` in the environment
before that (README, "Library").

The cost: the process keeps its peak memory until it exits instead of giving
it back between passes. ``PCEA_ALLOCATOR=system`` turns the re-exec and the
``mallopt`` off (no setting is made); a user who sets any of the three malloc variables,
or preloads tcmalloc/jemalloc/mimalloc, keeps that choice, and so does a user
who sets ``GOMP_SPINCOUNT``, ``OMP_WAIT_POLICY`` or ``KMP_BLOCKTIME``. On a
CUDA or MPS device the activations live in the device's own caching allocator
and FPS runs on the device, so nothing is done there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Callable, Mapping

__all__ = ["FAST_ENV", "THREAD_ENV", "COMMANDS", "MALLOC_COMMANDS", "allocator_env", "describe_allocator",
           "keep_freed_memory", "reexec_if_needed", "restart_argv"]

# Values well above the largest activation of a B=32 batch (hundreds of MB).
FAST_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),  # blocks below 1 GiB come from the heap, not mmap
    "MALLOC_TRIM_THRESHOLD_": str(4 << 30),  # never shrink the heap below 4 GiB of free top
    "MALLOC_TOP_PAD_": str(1 << 30),  # grow the heap in large steps (address space only)
}
# Idle OpenMP workers spin briefly, then sleep, so pcea's kernel threads get the cores.
THREAD_ENV = {"GOMP_SPINCOUNT": "10000"}
THREAD_CHOICES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")  # a user's own: kept
COMMANDS = ("train", "eval", "classify", "bench")
MALLOC_COMMANDS = ("train", "bench")  # the training step gains from FAST_ENV; inference does not
MARKER = "PCEA_ALLOCATOR_SET"  # set in the re-executed process: guards against loops
PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")


def allocator_env(
    environ: Mapping[str, str],
    command: str,
    device: str | None = None,
    *,
    system: str = sys.platform,
    libc: str | None = None,
) -> dict[str, str] | None:
    """The environment to re-execute ``pcea COMMAND`` with, or None to run as is.

    Args:
        environ: the current environment.
        command: the pcea subcommand.
        device: the ``--device`` the user chose, if any.
        system: ``sys.platform``; pcea re-executes itself on Linux only, and
            only glibc reads the malloc variables.
        libc: the C library's name (default: ``platform.libc_ver()``).

    Returns:
        A full environment (a copy of ``environ`` with the malloc variables
        (training commands only) and/or ``GOMP_SPINCOUNT`` and the loop guard
        set) when a re-exec helps, else None.
    """
    if command not in COMMANDS:
        return None
    if environ.get("PCEA_ALLOCATOR", "").lower() == "system" or MARKER in environ:
        return None
    if device and device.split(":")[0] in ("cuda", "mps"):
        return None  # activations live in the device allocator
    if not system.startswith("linux"):
        return None  # execve replaces the process as intended on Linux only
    changes = {}
    if command in MALLOC_COMMANDS and _malloc_is_ours(environ, libc):
        changes.update(FAST_ENV)
    if not any(name in environ for name in THREAD_CHOICES):
        changes.update(THREAD_ENV)
    if not changes:
        return None
    return {**environ, **changes, MARKER: "1"}


def _malloc_is_ours(environ: Mapping[str, str], libc: str | None = None) -> bool:
    """glibc malloc, and the user chose neither their own MALLOC_* settings nor another allocator."""
    libc = platform.libc_ver()[0] if libc is None else libc
    user_malloc = any(name in environ for name in FAST_ENV)
    preloaded = any(lib in environ.get("LD_PRELOAD", "") for lib in PRELOADED)
    return libc == "glibc" and not user_malloc and not preloaded


# mallopt's parameter numbers (glibc's malloc.h) for the three variables of FAST_ENV.
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_THRESHOLD_": -3}
_INT_MAX = 2**31 - 1  # mallopt takes a C int: 4 GiB of trim threshold becomes 2 GiB


def _glibc_mallopt() -> Callable[[int, int], int]:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt


def keep_freed_memory(environ: Mapping[str, str] | None = None, *, system: str = sys.platform,
                      libc: str | None = None, mallopt: Callable[[int, int], int] | None = None) -> bool:
    """Make in this process, with ``mallopt``, the malloc settings ``pcea train`` restarts itself with.

    For a library caller's training (:func:`pcea.train` calls it for a CPU run): from then on
    large blocks come from the heap and freed memory stays there for the next step, instead
    of being mapped, zero-filled and unmapped on every step; the process keeps its peak
    memory until it exits. Nothing is done under ``PCEA_ALLOCATOR=system``, with the user's
    own ``MALLOC_*`` settings or a preloaded allocator, or outside Linux glibc.

    Args:
        environ: the environment the decision reads (default: ``os.environ``).
        system: ``sys.platform``.
        libc: the C library's name (default: ``platform.libc_ver()``).
        mallopt: glibc's ``mallopt`` (default: the C library's own, through ctypes).

    Returns:
        True when glibc accepted every setting.
    """
    environ = os.environ if environ is None else environ
    if environ.get("PCEA_ALLOCATOR", "").lower() == "system" or not system.startswith("linux"):
        return False
    if not _malloc_is_ours(environ, libc):
        return False
    mallopt = _glibc_mallopt() if mallopt is None else mallopt
    accepted = [mallopt(_MALLOPT[name], min(int(value), _INT_MAX)) for name, value in FAST_ENV.items()]
    return all(accepted)  # glibc returns 1 for a setting it took, 0 for one it refused


def describe_allocator(environ: Mapping[str, str] | None = None) -> str:
    """One line naming the allocator and OpenMP idle-worker configuration this process runs under."""
    environ = os.environ if environ is None else environ
    return f"{_describe_malloc(environ)}; {_describe_omp_wait(environ)}"


def _describe_malloc(environ: Mapping[str, str]) -> str:
    preload = environ.get("LD_PRELOAD", "")
    for lib in PRELOADED:
        if lib in preload:
            return f"{lib} (LD_PRELOAD={preload})"
    libc = platform.libc_ver()[0] or "system"
    tuned = [f"{name}={environ[name]}" for name in FAST_ENV if name in environ]
    if tuned:
        who = "set by pcea" if MARKER in environ else "set by the user"
        return f"{libc} malloc keeping freed memory ({', '.join(tuned)}; {who})"
    if environ.get("PCEA_ALLOCATOR", "").lower() == "system":
        return f"{libc} malloc, default settings (PCEA_ALLOCATOR=system)"
    return f"{libc} malloc, default settings"


def _describe_omp_wait(environ: Mapping[str, str]) -> str:
    chosen = [f"{name}={environ[name]}" for name in THREAD_CHOICES if name in environ]
    if not chosen:
        return "OpenMP default wait policy"
    by_pcea = MARKER in environ and chosen == [f"{k}={v}" for k, v in THREAD_ENV.items()]
    return f"OpenMP idle workers: {', '.join(chosen)} ({'set by pcea' if by_pcea else 'set by the user'})"


# The restarted interpreter's first statement gives it this process's import path, so it imports
# the pcea (and everything else) this process imported. ``python -m pcea`` would put the current
# folder first instead, where a folder named pcea (a clone, a user's project) shadows the
# installed package; ``-P``, which drops that entry, exists only from Python 3.11 on.
_RESTART = "import sys; sys.path[:] = {path!r}; from pcea.cli import main; raise SystemExit(main())"


def restart_argv(argv: list[str]) -> list[str]:
    """The command line that runs ``pcea ARGV`` again in a fresh interpreter, importing the same pcea."""
    return [sys.executable, "-c", _RESTART.format(path=list(sys.path)), *argv]


def reexec_if_needed(command: str, device: str | None, argv: list[str]) -> None:
    """Replace this process by ``pcea ARGV`` (:func:`restart_argv`) under the fast configuration.

    Returns only when no re-exec is needed or it failed (then pcea simply runs
    with the allocator it has). Call it only where pcea is the whole process
    (the console script, ``python -m pcea``), never from a library caller.
    """
    env = allocator_env(os.environ, command, device)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, restart_argv(argv), env)
    except OSError:
        return
