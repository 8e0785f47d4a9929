"""pcea train: a killed DataLoader worker (issue 23 item 11) and the time estimate (issue 22 item 8)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from engine_tiny import tiny_config

from pcea.engine.checkpoint import load_checkpoint
from pcea.engine.splits import AugmentedSubset
from pcea.engine.train import train

pytestmark = pytest.mark.slow  # each test trains the tiny model for an epoch or more (seconds each)


def _kill_a_worker_once(monkeypatch, marker, when) -> None:
    """kill -9 one DataLoader worker, once, while it loads an item of a subset for which ``when(subset)``
    holds (the workers are forked, so they run the patched method too)."""
    original = AugmentedSubset.__getitem__

    def get_or_die(self, i):
        if when(self) and torch.utils.data.get_worker_info() is not None and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, i)

    monkeypatch.setattr(AugmentedSubset, "__getitem__", get_or_die)


def test_a_killed_worker_stops_the_run_resumably_and_it_resumes(tiny_h5, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    _kill_a_worker_once(monkeypatch, marker, lambda subset: subset.epoch == 2)      # training, epoch 2
    lines: list[str] = []
    out = tmp_path / "run"
    result = train(tiny_config(tiny_h5, epochs=3, workers=2), out, log=lines.append)
    assert marker.exists()
    assert result == {"interrupted": True, "signal": None, "epochs_completed": 1}
    died = [line for line in lines if line.startswith("a data-loading worker died: DataLoader worker")]
    assert len(died) == 1 and "\n" not in died[0]
    assert any(f"Continue with: pcea train --resume {out}" in line for line in lines)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    train(None, out, resume=True, log=lines.append)
    assert load_checkpoint(out / "last.pt")["epoch"] == 3 and (out / "results.json").exists()


def test_the_first_epoch_prints_an_estimate_of_the_rest(tiny_h5, tmp_path):
    lines: list[str] = []
    train(tiny_config(tiny_h5, epochs=3), tmp_path / "run", log=lines.append)
    estimates = [line for line in lines if "for the remaining" in line]
    assert len(estimates) == 1 and "for the remaining 2 epochs (ETA " in estimates[0]


def test_a_worker_killed_during_the_validation_pass_stops_the_run_resumably(tiny_h5, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    _kill_a_worker_once(monkeypatch, marker, lambda subset: subset.transform is None)  # validation
    lines: list[str] = []
    out = tmp_path / "run"
    result = train(tiny_config(tiny_h5, epochs=2, workers=2), out, log=lines.append)
    assert marker.exists()
    assert result == {"interrupted": True, "signal": None, "epochs_completed": 0}
    assert len([line for line in lines if line.startswith("a data-loading worker died: ")]) == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 0                 # epoch 1 is redone on resume
    train(None, out, resume=True, log=lines.append)
    assert load_checkpoint(out / "last.pt")["epoch"] == 2 and (out / "results.json").exists()
