"""The memory allocator and OpenMP configuration the ``pcea`` commands restart themselves with.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB by
default) with a fresh ``mmap`` and returns it with ``munmap`` on free. A
forward pass of the classifier allocates activations of tens to hundreds of
MB, so each pass maps them again and the kernel zero-fills every page on first
touch (docs/benchmarks.md measures how much of the process time that was).
Raising ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_TOP_PAD_`` keeps freed memory in the heap for the next pass. glibc
reads them only when the process starts (a later ``mallopt`` recovers only
part of the gain), so ``pcea train/eval/classify/bench`` re-execute
themselves once with them set; see :func:`reexec_if_needed`.

The same re-exec sets ``GOMP_SPINCOUNT=10000``. After each parallel region
the OpenMP workers of PyTorch's pip wheels (GNU libgomp) otherwise spin on
their cores for a long while, and the compiled FPS and kNN kernels
(:mod:`pcea.fast.sampling`), which split a batch over their own threads right
after the layers before them, then share one core with a spinning thread. Sleeping
at once (``OMP_WAIT_POLICY=PASSIVE``) fixed FPS but cost the model's many
short parallel regions a wake-up each; a short spin of 10,000 iterations
keeps the workers for back-to-back regions and frees the cores in time for
FPS (both measured in docs/benchmarks.md).

The cost: the process keeps its peak memory until it exits instead of giving
it back between passes. ``PCEA_ALLOCATOR=system`` turns the re-exec off
(neither setting is made); a user who sets any of the three malloc variables,
or preloads tcmalloc/jemalloc/mimalloc, keeps that choice, and so does a user
who sets ``GOMP_SPINCOUNT``, ``OMP_WAIT_POLICY`` or ``KMP_BLOCKTIME``. On a
CUDA or MPS device the activations live in the device's own caching allocator
and FPS runs on the device, so nothing is done there.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

__all__ = ["FAST_ENV", "THREAD_ENV", "COMMANDS", "allocator_env", "describe_allocator", "reexec_if_needed",
           "restart_argv"]

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
        and/or ``GOMP_SPINCOUNT`` and the loop guard set) when a re-exec
        helps, else None.
    """
    if command not in COMMANDS:
        return None
    if environ.get("PCEA_ALLOCATOR", "").lower() == "system" or MARKER in environ:
        return None
    if device and device.split(":")[0] in ("cuda", "mps"):
        return None  # activations live in the device allocator
    if not system.startswith("linux"):
        return None  # execve replaces the process as intended on Linux only
    libc = platform.libc_ver()[0] if libc is None else libc
    changes = {}
    user_malloc = any(name in environ for name in FAST_ENV)  # the user chose their own glibc settings
    preloaded = any(lib in environ.get("LD_PRELOAD", "") for lib in PRELOADED)  # another allocator
    if libc == "glibc" and not user_malloc and not preloaded:
        changes.update(FAST_ENV)
    if not any(name in environ for name in THREAD_CHOICES):
        changes.update(THREAD_ENV)
    if not changes:
        return None
    return {**environ, **changes, MARKER: "1"}


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
