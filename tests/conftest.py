"""Fixtures shared by the whole suite: one tiny model, plain, for every test that needs a network.

Also the two test tiers. ``make test`` runs everything; ``make test-fast`` (``pytest -m "not slow"``)
leaves out the tests marked ``slow``: those that start processes, read the real data in
../shared/data, are property-based (hypothesis), or take seconds on their own (training runs, ONNX
export, the full-size model at 1,024 points and more). Hypothesis tests are marked here, by the
attribute hypothesis sets; the others are marked in their modules (``pytest.mark.slow``), and a
fast-tier run fails an unmarked test that starts a process or opens a file in ../shared/data, so a
new test of either kind cannot slow the fast tier unnoticed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tiny_models import TINY, build_tiny, save_tiny_checkpoint

import pcea


@pytest.fixture
def tiny_options() -> dict:
    """The tiny model's ModelConfig fields (num_points=128, centers=(64, 32), ...)."""
    return dict(TINY)


@pytest.fixture
def tiny_model() -> Callable[..., pcea.PCTClassifier]:
    """Builds plain tiny models: ``tiny_model(name, num_classes=4, seed=0, trained=False, **overrides)``
    (:func:`tiny_models.build_tiny`)."""
    return build_tiny


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the smallest tiny model, classes ball/box/disc/rod, one per test module
    (:func:`tiny_models.save_tiny_checkpoint`)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_PATH_EVENTS = {"open", "os.listdir", "os.scandir"}
_slow_deeds: list[set[str]] = []  # while an unmarked test runs in the fast tier: what it did that is slow


def _starts_a_process(event: str, args: tuple) -> bool:
    """A fork (DataLoader workers, process pools), or a Python interpreter or console script of this
    environment started (seconds each: it imports torch). Probes that take milliseconds (the
    standard library's ``uname -p`` and ``ldconfig -p``) are not counted."""
    if event in ("os.fork", "os.forkpty"):
        return True
    if event not in ("subprocess.Popen", "os.posix_spawn"):
        return False
    program = os.fsdecode(args[0] or (args[1][0] if isinstance(args[1], list | tuple) and args[1] else ""))
    folder, name = os.path.split(program)
    return "python" in name or folder == os.path.dirname(sys.executable)


def _audit(event: str, args: tuple) -> None:
    """sys.addaudithook's hook: note a process started or a ../shared/data file opened by a watched test."""
    if not _slow_deeds:
        return
    if _starts_a_process(event, args):
        _slow_deeds[-1].add(f"starts a process ({event})")
    elif (event in _PATH_EVENTS and args and isinstance(args[0], str | os.PathLike)
          and os.path.abspath(os.fsdecode(args[0])).startswith(f"{SHARED_DATA}{os.sep}")):
        _slow_deeds[-1].add(f"reads {SHARED_DATA}")


def _fast_tier(config: pytest.Config) -> bool:
    """Whether this run leaves the slow tests out (``make test-fast``)."""
    return "not slow" in (config.getoption("markexpr") or "")


def pytest_configure(config: pytest.Config) -> None:
    # Audit hooks cannot be removed; one that returns at once when no test is watched costs nothing.
    if _fast_tier(config):
        sys.addaudithook(_audit)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every hypothesis test ``slow``: each runs its body up to a hundred times."""
    for item in items:
        if getattr(getattr(item, "function", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.slow)


def _watch(item: pytest.Item) -> Iterator[None]:
    """Around a fast-tier test's set-up or call: fail it if it did what only ``slow`` tests may do."""
    if not _fast_tier(item.config) or item.get_closest_marker("slow") is not None:
        return (yield)
    _slow_deeds.append(set())
    try:
        result = yield
    finally:
        deeds = _slow_deeds.pop()
    if deeds:
        pytest.fail(f"{item.nodeid} {' and '.join(sorted(deeds))}: mark it pytest.mark.slow", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _watch(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _watch(item))
