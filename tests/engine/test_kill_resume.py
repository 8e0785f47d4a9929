"""SIGKILL a training process at random moments, resume each time: last.pt always loads, the run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from engine_tiny import TINY_MODEL, tiny_config

from pcea.engine.checkpoint import load_checkpoint
from pcea.engine.train import train

pytestmark = pytest.mark.slow  # every test here starts training processes
EPOCHS = 8


def _command(data, out, *, resume: bool) -> list[str]:
    head = [sys.executable, "-m", "pcea", "train"]
    if resume:
        return [*head, "--resume", str(out)]
    opts = [f"--model-opt={key}={json.dumps(value)}" for key, value in TINY_MODEL.items()]
    config = tiny_config(data, epochs=EPOCHS)
    return [*head, "--data", str(data), "--out", str(out), "--epochs", str(EPOCHS), "--points", "128",
            "--batch-size", "8", "--lr", str(config.lr), "--val-split", "0.25", "--device", "cpu",
            "--workers", "0", "--threads", "1", "--seed", "0", *opts]


def test_sigkill_at_random_moments_never_leaves_an_unloadable_checkpoint(tiny_h5, tmp_path):
    out = tmp_path / "killed"
    rng = np.random.default_rng(7)
    # PCEA_ALLOCATOR=system: no allocator re-exec, so each process starts Python once (the
    # allocator does not change what is tested here, and the test takes half the time).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PCEA_ALLOCATOR": "system"}
    kills = 0
    for attempt in range(3):
        proc = subprocess.Popen(_command(tiny_h5, out, resume=attempt > 0), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        # Kill once training is under way: after the first epoch line of this process, at a random delay
        # that lands anywhere in a step, an evaluation, or the writing of a checkpoint.
        for line in proc.stdout:
            if line.startswith("epoch ") or line.startswith("test "):
                break
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        saved = load_checkpoint(out / "last.pt")  # must always load, whatever the moment of the kill
        assert 1 <= saved["epoch"] <= EPOCHS
    assert kills >= 2

    finish = subprocess.run(_command(tiny_h5, out, resume=True), capture_output=True, text=True, env=env,
                            timeout=120)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == EPOCHS
    results = json.loads((out / "results.json").read_text())
    assert [entry["protocol"] for entry in results["test"]] == ["last epoch", "best on val"]
    assert not list(out.glob(".*.tmp"))  # stale temporary files of killed writes were cleared

    # Killed four times and resumed, the run still ends with the weights of an uninterrupted one.
    straight = tmp_path / "straight"
    train(tiny_config(tiny_h5, epochs=EPOCHS), straight, log=lambda line: None)
    killed_weights = load_checkpoint(out / "last.pt")["model"]
    for key, value in load_checkpoint(straight / "last.pt")["model"].items():
        assert torch.equal(value, killed_weights[key]), key
