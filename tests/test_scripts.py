"""scripts/train_robust.sh and scripts/train_aligned.sh (on scripts/lineage.sh): each shipped weights'
segments and averages, one resumable command;
scripts/average_weights.py: checkpoints of one model averaged into one;
scripts/recompute_batchnorm.py: a checkpoint's BatchNorm statistics gathered again on its training clouds;
scripts/ensemble_study.py: each checkpoint's accuracy on one set of shapes, and every ensemble's;
scripts/ship_weights.py: a run's chosen epoch, or an average, into the shipped file and its card."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import SMALLEST, build_tiny

import pcea
from pcea.cli import main
from pcea.data import synth
from pcea.digest import file_sha256
from pcea.engine.checkpoint import load_checkpoint, model_payload, save_checkpoint
from pcea.engine.config import TrainConfig, load_config_file
from pcea.engine.splits import split_train_val

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_robust.sh"
ALIGNED = ROOT / "scripts" / "train_aligned.sh"
SEGMENTS = ("aligned", "robust1", "robust2", "wolfmix", "balanced", "points1024", "noise", "occlusion70",
            "halflr", "tilt", "tilt2", "tilt3", "occlusion80", "occlusion80b")
SOUP_OF = ("tilt3", "occlusion80", "occlusion80b")  # the last.pt of each, averaged into soup/soup.pt

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _tiny_flags() -> str:
    """The smallest model and 64 points: a segment of one epoch on 30 clouds takes a second."""
    flags = ["--points 64", "--batch-size 8"]
    for key, value in SMALLEST.items():
        if key != "num_points":
            text = f"[{','.join(map(str, value))}]" if isinstance(value, tuple) else str(value)
            flags.append(f"--model-opt {key}={text}")
    return " ".join(flags)


def _script(tmp_path: Path, pcea: str, timeout: float = 600, script: Path = SCRIPT,
            **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PCEA": pcea, "RUNS": str(tmp_path / "runs"), "PCEA_ALLOCATOR": "system", **env}
    return subprocess.run(["bash", str(script)], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def _recorder(tmp_path: Path, body: str = "") -> str:
    """A stand-in for pcea that appends its arguments to calls.txt (then runs ``body``)."""
    stub = tmp_path / "fake-pcea"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{tmp_path}/calls.txt"\n{body}\n')
    stub.chmod(0o755)
    return str(stub)


# A stand-in body that leaves a last.pt in each --out it is given, as pcea train does.
LEAVES_LAST = ('while [ $# -gt 0 ]; do\n'
               '  if [ "$1" = --out ]; then mkdir -p "$2" && touch "$2/last.pt"; fi\n'
               '  shift\n'
               'done')


def _python_recorder(tmp_path: Path) -> str:
    """A stand-in for PYTHON that appends "python" and its arguments to calls.txt and leaves an OUT
    ($2, after the script's path), as average_weights.py does."""
    stub = tmp_path / "fake-python"
    stub.write_text(f'#!/usr/bin/env bash\necho "python $*" >> "{tmp_path}/calls.txt"\n'
                    'mkdir -p "$(dirname "$2")" && touch "$2"\n')
    stub.chmod(0o755)
    return str(stub)


def _average_call(runs: Path) -> str:
    members = " ".join(str(runs / name / "last.pt") for name in SOUP_OF)
    return f"python scripts/average_weights.py {runs / 'soup' / 'soup.pt'} {members}"


# Each segment of train_robust.sh as pcea's own command line reads its call: (recipe, epochs, start,
# points, centres, occlusion, noise, peak lr, tilt, balanced). "runs/..." starts are under RUNS.
ROBUST_SETTINGS = {
    "aligned": ("cpu", 13, None, 512, [256, 128], 0.0, 0.0, 0.001, 0.0, True),
    "robust1": ("robust", 2, "aligned", 512, [256, 128], 0.3, 0.0, 0.0005, 0.0, False),
    "robust2": ("robust", 10, "robust1", 512, [256, 128], 0.3, 0.0, 0.0003, 0.0, False),
    "wolfmix": ("wolfmix", 20, "robust2", 512, [256, 128], 0.3, 0.0, 0.0002, 0.0, False),
    "balanced": ("wolfmix", 18, "wolfmix/last.pt", 512, [256, 128], 0.5, 0.0, 0.0002, 0.0, True),
    "points1024": ("wolfmix", 18, "balanced/last.pt", 1024, [512, 256], 0.5, 0.0, 0.0002, 0.0, True),
    "noise": ("wolfmix", 15, "points1024/last.pt", 1024, [512, 256], 0.5, 0.3, 0.0002, 0.0, True),
    "occlusion70": ("wolfmix", 13, "noise/last.pt", 1024, [512, 256], 0.7, 0.3, 0.0002, 0.0, True),
    "halflr": ("wolfmix", 7, "occlusion70/last.pt", 1024, [512, 256], 0.7, 0.3, 0.0001, 0.0, True),
    "tilt": ("wolfmix", 10, "halflr/last.pt", 1024, [512, 256], 0.7, 0.3, 0.0001, 25.0, True),
    "tilt2": ("wolfmix", 9, "tilt/last.pt", 1024, [512, 256], 0.7, 0.3, 0.0001, 25.0, True),
    "tilt3": ("wolfmix", 10, "tilt2/last.pt", 1024, [512, 256], 0.7, 0.3, 0.00005, 25.0, True),
    "occlusion80": ("wolfmix", 9, "tilt3/last.pt", 1024, [512, 256], 0.8, 0.3, 0.000025, 25.0, True),
    "occlusion80b": ("wolfmix", 10, "occlusion80/last.pt", 1024, [512, 256], 0.8, 0.3, 0.0000375, 25.0, True),
}


def test_pcea_reads_each_robust_segments_call_as_the_recipe_it_names(tmp_path, monkeypatch):
    """Every `pcea train` call of train_robust.sh (recorded by a stand-in), read by pcea's own command
    line in this process into the settings its run would train with. The lineage machinery that the
    two scripts share (scripts/lineage.sh) trains end to end in the aligned lineage's test below."""
    pcea = _recorder(tmp_path, LEAVES_LAST)
    result = _script(tmp_path, pcea, DATA="synthetic", PYTHON=_python_recorder(tmp_path))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 16 and calls[14] == _average_call(tmp_path / "runs")
    read: dict[str, object] = {}

    def train(config, out, **options):  # what `pcea train` hands the trainer, in place of training
        assert not options.get("resume")
        read[Path(out).name] = config
        return {}

    monkeypatch.setattr("pcea.engine.train.train", train)
    for call in calls[:14]:
        assert main(shlex.split(call)) == 0, call
    assert list(read) == list(SEGMENTS)
    ship = (f"scripts/ship_weights.py {tmp_path / 'runs' / 'soup' / 'soup.pt'} --name modelnet40 "
            f"--recipe configs/modelnet40_wolfmix.yaml --half "
            f"--robustness {tmp_path / 'runs' / 'suite' / 'robustness.json'}")
    assert ship in result.stdout and "--checkpoint" not in result.stdout
    defaults = TrainConfig()
    base = {name: load_config_file(ROOT / "configs" / f"modelnet40_{name}.yaml")
            for name in ("cpu", "robust", "wolfmix")}
    for name, (recipe, epochs, start, points, centers, occlusion, noise, lr, tilt, balanced) in \
            ROBUST_SETTINGS.items():
        config = read[name]
        assert (config.data, config.epochs, config.points, config.model_options) == (
            "synthetic", epochs, points, {"centers": centers}), name
        assert config.init == (None if start is None else str(tmp_path / "runs" / start)), name
        assert (config.occlusion, config.noise, config.lr, config.tilt, config.balanced) == (
            occlusion, noise, lr, tilt, balanced), name
        for key in ("yaw", "wolf", "rsmix", "ema", "optimizer", "weight_decay", "warmup_epochs"):
            assert getattr(config, key) == base[recipe].get(key, getattr(defaults, key)), (name, key)


def test_a_started_segment_is_resumed_and_the_rest_follow(tmp_path):
    (tmp_path / "runs" / "aligned").mkdir(parents=True)
    (tmp_path / "runs" / "aligned" / "config.yaml").write_text("epochs: 13\n")  # stopped early
    result = _script(tmp_path, _recorder(tmp_path), DATA="synthetic", EXTRA="--threads 1",
                     PYTHON=_python_recorder(tmp_path))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    runs = tmp_path / "runs"
    assert calls[0] == f"train --resume {runs / 'aligned'} --threads 1"
    assert calls[1] == (f"train --config configs/modelnet40_robust.yaml --data synthetic "
                        f"--out {runs / 'robust1'} --epochs 2 --init {runs / 'aligned'} --threads 1")
    assert calls[2].endswith(f"--epochs 10 --init {runs / 'robust1'} --lr 0.0003 --threads 1")
    assert calls[3].startswith("train --config configs/modelnet40_wolfmix.yaml")
    assert calls[3].endswith(f"--epochs 20 --init {runs / 'robust2'} --threads 1")
    assert calls[4] == (f"train --config configs/modelnet40_wolfmix.yaml --data synthetic "
                        f"--out {runs / 'balanced'} --epochs 18 --init {runs / 'wolfmix' / 'last.pt'} "
                        f"--occlusion 0.5 --balanced --threads 1")
    assert calls[5] == (f"train --config configs/modelnet40_wolfmix.yaml --data synthetic "
                        f"--out {runs / 'points1024'} --epochs 18 --init {runs / 'balanced' / 'last.pt'} "
                        f"--points 1024 --model-opt centers=[512,256] --occlusion 0.5 --balanced --threads 1")
    assert calls[6] == (f"train --config configs/modelnet40_wolfmix.yaml --data synthetic "
                        f"--out {runs / 'noise'} --epochs 15 --init {runs / 'points1024' / 'last.pt'} "
                        f"--points 1024 --model-opt centers=[512,256] --occlusion 0.5 --balanced --noise 0.3 "
                        f"--threads 1")
    assert calls[7] == (f"train --config configs/modelnet40_wolfmix.yaml --data synthetic "
                        f"--out {runs / 'occlusion70'} --epochs 13 --init {runs / 'noise' / 'last.pt'} "
                        f"--points 1024 --model-opt centers=[512,256] --occlusion 0.7 --balanced --noise 0.3 "
                        f"--threads 1")
    assert calls[8] == (f"train --config configs/modelnet40_wolfmix.yaml --data synthetic "
                        f"--out {runs / 'halflr'} --epochs 7 --init {runs / 'occlusion70' / 'last.pt'} "
                        f"--points 1024 --model-opt centers=[512,256] --occlusion 0.7 --balanced --noise 0.3 "
                        f"--lr 0.0001 --threads 1")
    tilts = [("tilt", "halflr", 10, "0.7", "0.0001"), ("tilt2", "tilt", 9, "0.7", "0.0001"),
             ("tilt3", "tilt2", 10, "0.7", "0.00005"), ("occlusion80", "tilt3", 9, "0.8", "0.000025"),
             ("occlusion80b", "occlusion80", 10, "0.8", "0.0000375")]
    for index, (name, start, epochs, occlusion, lr) in enumerate(tilts, start=9):
        assert calls[index] == (f"train --config configs/modelnet40_wolfmix.yaml --data synthetic "
                                f"--out {runs / name} --epochs {epochs} --init {runs / start / 'last.pt'} "
                                f"--points 1024 --model-opt centers=[512,256] --occlusion {occlusion} "
                                f"--balanced --noise 0.3 --lr {lr} --tilt 25 --threads 1")
    assert calls[14] == _average_call(runs)
    assert calls[15] == (f"eval {runs / 'soup' / 'soup.pt'} --data synthetic --split val --corrupt all "
                         f"--out {runs / 'suite'}")
    assert len(calls) == 16
    assert f"scripts/ship_weights.py {runs / 'soup' / 'soup.pt'} --name modelnet40 --recipe" in result.stdout


def test_an_earlier_runs_goes_on_with_the_missing_segments_and_a_new_suite(tmp_path):
    # RUNS as the four-segment script left it: wolfmix done, its suite measured on wolfmix/last.pt.
    runs = tmp_path / "runs"
    for name in SEGMENTS[:4]:
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_text("epochs: 1\n")
    (runs / "suite").mkdir()
    (runs / "suite" / "robustness.json").write_text("{}\n")
    os.utime(runs / "suite" / "robustness.json", (time.time() - 3600,) * 2)
    pcea = _recorder(tmp_path, LEAVES_LAST)
    python = _python_recorder(tmp_path)
    result = _script(tmp_path, pcea, DATA="synthetic", PYTHON=python)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[:4] == [f"train --resume {runs / name}" for name in SEGMENTS[:4]]
    assert calls[4].startswith("train --config configs/modelnet40_wolfmix.yaml")
    assert calls[4].endswith(f"--init {runs / 'wolfmix' / 'last.pt'} --occlusion 0.5 --balanced")
    assert calls[5].endswith(f"--init {runs / 'balanced' / 'last.pt'} "
                             f"--points 1024 --model-opt centers=[512,256] --occlusion 0.5 --balanced")
    assert calls[6].endswith(f"--init {runs / 'points1024' / 'last.pt'} --points 1024 "
                             f"--model-opt centers=[512,256] --occlusion 0.5 --balanced --noise 0.3")
    assert calls[7].endswith(f"--init {runs / 'noise' / 'last.pt'} --points 1024 "
                             f"--model-opt centers=[512,256] --occlusion 0.7 --balanced --noise 0.3")
    assert calls[8].endswith(f"--init {runs / 'occlusion70' / 'last.pt'} --points 1024 "
                             f"--model-opt centers=[512,256] --occlusion 0.7 --balanced --noise 0.3 "
                             f"--lr 0.0001")
    starts = [("halflr", "0.7", "0.0001"), ("tilt", "0.7", "0.0001"), ("tilt2", "0.7", "0.00005"),
              ("tilt3", "0.8", "0.000025"), ("occlusion80", "0.8", "0.0000375")]  # tilt to occlusion80b
    for index, (start, occlusion, lr) in enumerate(starts, start=9):
        assert calls[index].endswith(f"--init {runs / start / 'last.pt'} --points 1024 "
                                     f"--model-opt centers=[512,256] --occlusion {occlusion} --balanced "
                                     f"--noise 0.3 --lr {lr} --tilt 25")
    assert calls[14] == _average_call(runs)
    assert calls[15].startswith(f"eval {runs / 'soup' / 'soup.pt'} ")  # wolfmix's suite is stale
    assert len(calls) == 16
    # Once the soup is newer than its inputs and the suite newer than the soup, a rerun leaves both be.
    os.utime(runs / "suite" / "robustness.json", (time.time() + 60,) * 2)
    (tmp_path / "calls.txt").unlink()
    again = _script(tmp_path, pcea, DATA="synthetic", PYTHON=python)
    assert again.returncode == 0, again.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [f"train --resume {runs / name}" for name in SEGMENTS]
    assert "soup.pt is there already" in again.stdout and "robustness.json is there already" in again.stdout
    # A soup older than one of its inputs (occlusion80b trained on) is made again, and measured again.
    os.utime(runs / "soup" / "soup.pt", (time.time() - 7200,) * 2)
    os.utime(runs / "suite" / "robustness.json", (time.time() - 7200,) * 2)
    (tmp_path / "calls.txt").unlink()
    third = _script(tmp_path, pcea, DATA="synthetic", PYTHON=python)
    assert third.returncode == 0, third.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[:14] == [f"train --resume {runs / name}" for name in SEGMENTS]
    assert calls[14] == _average_call(runs)
    assert calls[15].startswith(f"eval {runs / 'soup' / 'soup.pt'} ") and len(calls) == 16


def test_the_deadline_stops_the_running_segment_with_sigterm(tmp_path):
    # The stand-in exits 143 on SIGTERM, as pcea train does after keeping its last epoch.
    pcea = _recorder(tmp_path, "sleep 60 & trap 'kill $!; echo stopped >> \"$(dirname \"$0\")/calls.txt\"; "
                               "exit 143' TERM\nwait")
    started = time.monotonic()
    result = _script(tmp_path, pcea, timeout=30, DATA="synthetic", DEADLINE="2")
    assert result.returncode == 143
    assert time.monotonic() - started < 20
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[0].startswith("train --config configs/modelnet40_cpu.yaml") and calls[1:] == ["stopped"]


@pytest.mark.parametrize("deadline", ["100", None])
def test_the_deadline_is_pcea_trains_max_time_and_its_stop_ends_the_script(tmp_path, deadline):
    pcea = _recorder(tmp_path, "exit 75")  # as pcea train stopped between epochs by --max-time
    env = {"DEADLINE": deadline} if deadline else {}
    result = _script(tmp_path, pcea, timeout=30, DATA="synthetic", **env)
    assert result.returncode == 75  # the script stops where the segment did, for a rerun to go on
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("train --config configs/modelnet40_cpu.yaml")
    words = calls[0].split()
    if deadline:  # the seconds left, counted from the script's start
        assert 90 <= int(words[words.index("--max-time") + 1]) <= 100
    else:
        assert "--max-time" not in words


@pytest.mark.parametrize("script, env, message", [
    (SCRIPT, dict(EPOCHS="13 2 10 20 18 18 15 13 7"), "EPOCHS must be 14 whole numbers"),  # nine segments
    (SCRIPT, dict(EPOCHS="13 2 10 20 18 18 15 13 7 10 9 10"), "EPOCHS must be 14 whole numbers"),  # twelve
    (SCRIPT, dict(EPOCHS="13 2 10 20 18 18 15 13 7 10 9 10 9 10 5"), "EPOCHS must be 14 whole numbers"),
    (SCRIPT, dict(EPOCHS="13 2 x 20 18 18 15 13 7 10 9 10 9 10"), "EPOCHS must be 14 whole numbers"),
    (SCRIPT, dict(EPOCHS="13 0 10 20 18 18 15 13 7 10 9 10 9 10"), "EPOCHS must be 14 whole numbers"),
    (SCRIPT, dict(PYTHON="no-such-python-here"), "PYTHON 'no-such-python-here' is not a command"),
    (SCRIPT, dict(DEADLINE="soon"), "DEADLINE must be whole seconds"),
    (ALIGNED, dict(EPOCHS="13 13 12 24 12"), "train_aligned.sh: EPOCHS must be 6 whole numbers"),  # five
    (ALIGNED, dict(EPOCHS="13 13 12 24 12 12 250"), "train_aligned.sh: EPOCHS must be 6 whole numbers"),
    (ALIGNED, dict(EPOCHS="13 13 12 024 12 12"), "train_aligned.sh: EPOCHS must be 6 whole numbers"),
    (ALIGNED, dict(PYTHON="no-such-python-here"),
     "train_aligned.sh: PYTHON 'no-such-python-here' is not a command"),
    (ALIGNED, dict(DEADLINE="1h"), "train_aligned.sh: DEADLINE must be whole seconds"),
], ids=lambda value: value.name if isinstance(value, Path) else None)
def test_bad_settings_are_refused_before_anything_runs(tmp_path, script, env, message):
    result = _script(tmp_path, _recorder(tmp_path), script=script, DATA="synthetic", **env)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "calls.txt").exists()


ALIGNED_SEGMENTS = ("aligned", "a1", "a3", "a4", "a5", "a8")


def test_aligned_lineage_runs_six_segments_and_two_averages_in_order_then_goes_on_where_it_stopped(tmp_path):
    runs = tmp_path / "runs"
    (runs / "aligned").mkdir(parents=True)
    (runs / "aligned" / "config.yaml").write_text("epochs: 13\n")  # stopped early
    pcea = _recorder(tmp_path, LEAVES_LAST)
    python = _python_recorder(tmp_path)
    result = _script(tmp_path, pcea, script=ALIGNED, DATA="synthetic", EXTRA="--threads 1", PYTHON=python)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    head = "train --config configs/modelnet40_cpu.yaml --data synthetic"
    big = "--points 1024 --model-opt centers=[512,256]"
    a45 = runs / "a45" / "a45.pt"
    assert calls == [
        f"train --resume {runs / 'aligned'} --threads 1",
        f"{head} --out {runs / 'a1'} --epochs 13 --init {runs / 'aligned'} --lr 0.0005 --warmup-epochs 0.1 "
        "--threads 1",
        f"{head} --out {runs / 'a3'} --epochs 12 --init {runs / 'a1'} {big} --lr 0.0005 --warmup-epochs 0.2 "
        "--threads 1",
        f"{head} --out {runs / 'a4'} --epochs 24 --init {runs / 'a3' / 'last.pt'} {big} --lr 0.0004 "
        "--warmup-epochs 0.2 --threads 1",
        f"{head} --out {runs / 'a5'} --epochs 12 --init {runs / 'a4' / 'last.pt'} {big} --lr 0.0002 "
        "--warmup-epochs 0.1 --wolf 0.5 --rsmix 0.5 --threads 1",
        f"python scripts/average_weights.py {a45} {runs / 'a4' / 'last.pt'} {runs / 'a5' / 'last.pt'}",
        f"{head} --out {runs / 'a8'} --epochs 12 --init {a45} {big} --optimizer sgd --lr 0.01 --momentum 0.9 "
        "--weight-decay 0.0005 --min-lr 0 --warmup-epochs 0.2 --wolf 0.5 --rsmix 0.5 --threads 1",
        f"python scripts/average_weights.py {runs / 'soup' / 'soup.pt'} {a45} {runs / 'a8' / 'last.pt'}",
        f"eval {runs / 'soup' / 'soup.pt'} --data synthetic --split val --corrupt all --out {runs / 'suite'}",
    ]
    assert (f"scripts/ship_weights.py {runs / 'soup' / 'soup.pt'} --name modelnet40-aligned "
            f"--recipe configs/modelnet40_cpu.yaml --half --robustness {runs / 'suite' / 'robustness.json'}"
            in result.stdout)
    # Run again with everything there and fresh: every segment is resumed (a no-op when complete),
    # both averages and the suite are left be.
    (runs / "suite" / "robustness.json").write_text("{}\n")  # the stand-in made the folder
    for last in runs.glob("*/last.pt"):
        os.utime(last, (time.time() - 1000,) * 2)
    made = ((300, a45), (200, runs / "soup" / "soup.pt"), (100, runs / "suite" / "robustness.json"))
    for age, path in made:
        os.utime(path, (time.time() - age,) * 2)  # each newer than what it was made from
    (tmp_path / "calls.txt").unlink()
    again = _script(tmp_path, pcea, script=ALIGNED, DATA="synthetic", PYTHON=python)
    assert again.returncode == 0, again.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [f"train --resume {runs / name}" for name in ALIGNED_SEGMENTS]
    assert "a45.pt is there already" in again.stdout and "soup.pt is there already" in again.stdout
    assert "robustness.json is there already" in again.stdout
    # a5 trained on (newer than a45.pt): the first average is made again, then the second, then the suite
    os.utime(runs / "a5" / "last.pt", (time.time() - 250,) * 2)
    (tmp_path / "calls.txt").unlink()
    third = _script(tmp_path, pcea, script=ALIGNED, DATA="synthetic", PYTHON=python)
    assert third.returncode == 0, third.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[5].startswith(f"python scripts/average_weights.py {a45} ")
    assert calls[7].startswith(f"python scripts/average_weights.py {runs / 'soup' / 'soup.pt'} ")
    assert calls[8].startswith(f"eval {runs / 'soup' / 'soup.pt'} ") and len(calls) == 9


@pytest.mark.slow
def test_aligned_lineage_trains_end_to_end_each_segment_from_the_one_before(tmp_path):
    data = synth.generate(tmp_path / "shapes", classes=3, per_class=10, points=64) / "h5"
    env = dict(DATA=str(data), EPOCHS="1 1 1 1 1 1", SUITE="jitter", EXTRA=_tiny_flags())
    result = _script(tmp_path, str(Path(sys.executable).with_name("pcea")), script=ALIGNED, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs"
    starts = {"a1": runs / "aligned", "a3": runs / "a1", "a4": runs / "a3" / "last.pt",
              "a5": runs / "a4" / "last.pt", "a8": runs / "a45" / "a45.pt"}
    for name in ALIGNED_SEGMENTS:
        assert json.loads((runs / name / "results.json").read_text())  # trained and finished
        config = (runs / name / "config.yaml").read_text()
        assert "epochs: 1\n" in config and "points: 64\n" in config and "balanced: true\n" in config
        if name in starts:
            assert f"init: {starts[name]}\n" in config
    a8 = (runs / "a8" / "config.yaml").read_text()
    assert "optimizer: sgd\n" in a8 and "lr: 0.01\n" in a8 and "wolf: 0.5\n" in a8 and "rsmix: 0.5\n" in a8
    assert "optimizer: adamw\n" in (runs / "a5" / "config.yaml").read_text()
    a45 = load_checkpoint(runs / "a45" / "a45.pt")
    assert [m["file"] for m in a45["average"]] == ["a4/last.pt", "a5/last.pt"]
    soup = load_checkpoint(runs / "soup" / "soup.pt")
    assert [(m["file"], m["sha256"]) for m in soup["average"]] == [
        ("a45/a45.pt", file_sha256(runs / "a45" / "a45.pt")),
        ("a8/last.pt", file_sha256(runs / "a8" / "last.pt"))]
    suite = json.loads((runs / "suite" / "robustness.json").read_text())
    assert list(suite["corruptions"]) == ["jitter"]  # SUITE reaches pcea eval
    assert Path(suite["checkpoint"]).resolve() == (runs / "soup" / "soup.pt").resolve()
    assert "--name modelnet40-aligned" in result.stdout


SHIP = ROOT / "scripts" / "ship_weights.py"


@pytest.mark.slow
def test_ship_weights_writes_the_chosen_epoch_and_its_card(tmp_path):
    data = synth.generate(tmp_path / "shapes", classes=3, per_class=10, points=64) / "h5"
    run = tmp_path / "run"
    pcea = str(Path(sys.executable).with_name("pcea"))
    train = subprocess.run([pcea, "train", "--data", str(data), "--out", str(run), "--epochs", "2",
                            "--lr", "0.01", "--ema", "0.9", *_tiny_flags().split()],
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    assert load_checkpoint(run / "last.prev.pt")["epoch"] == 1
    shutil.copy(run / "last.prev.pt", run / "best.pt")  # best.pt and last.pt hold different epochs
    for which in ("best", "last"):  # one run, shipped both ways
        out = tmp_path / f"shipped-{which}"
        out.mkdir()
        ship = subprocess.run([sys.executable, str(SHIP), str(run), "--name", "tiny", "--half",
                               "--checkpoint", which, "--out-dir", str(out),
                               "--cpu", "test machine, CPU family 0"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert ship.returncode == 0, ship.stderr[-3000:]
        source = load_checkpoint(run / f"{which}.pt")
        card = json.loads((out / "tiny.json").read_text())
        assert card["epoch"] == source["epoch"] == {"best": 1, "last": 2}[which]
        assert card["selection"] == source["protocol"]
        assert card["val_oa"] == source["metrics"]["history"][source["epoch"] - 1]["val_oa"]
        assert ("last epoch" in card["val_protocol"]) == (which == "last")
        shipped = load_checkpoint(out / "tiny.pt")
        assert card["sha256"] == hashlib.sha256((out / "tiny.pt").read_bytes()).hexdigest()
        assert "optimizer" not in shipped and "rng" not in shipped  # only what inference needs
        for key, value in source["model"].items():  # the averaged weights, stored in float16
            if value.is_floating_point():
                assert shipped["model"][key].dtype == torch.float16
                assert torch.equal(shipped["model"][key], value.half())
        assert {p.name for p in out.iterdir()} == {"tiny.pt", "tiny.json"}  # no temporary left behind
        assert card["cpu"] == "test machine, CPU family 0"


@pytest.mark.slow
@pytest.mark.parametrize("flags, says", [
    ([], "--cpu"),  # a card must name its machine ...
    (["--cpu", ""], "CPU family"),  # ... with the family its figures compare within
    (["--cpu", "my laptop"], "CPU family"),
    (["--cpu", "x, CPU family 6"], "no-such-run"),  # a missing run: one line naming the file
])
def test_ship_weights_refuses_before_it_writes(tmp_path, flags, says):
    run = tmp_path / "no-such-run"  # refusals about the command line come before any checkpoint is read
    refused = subprocess.run([sys.executable, str(SHIP), str(run), "--name", "tiny",
                              "--out-dir", str(tmp_path), *flags],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and says in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


AVERAGE = ROOT / "scripts" / "average_weights.py"


def _member(path: Path, seed: int, *, half: bool = False, class_names=("ball", "box", "disc")) -> Path:
    """A tiny trained-looking checkpoint of one run's epoch; ``half`` stores it as a shipped file is."""
    model = build_tiny(num_classes=len(class_names), seed=seed, trained=True, size=SMALLEST)
    model.class_names = list(class_names)
    payload = model_payload(model, model_name="pcea")
    if half:
        payload["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    history = [{"epoch": e, "val_oa": 0.5, "val_macc": 0.4, "time_s": 10.0 + seed} for e in (1, 2)]
    payload.update(epoch=2, train_config={"seed": 0, "val_split": 0.1, "data": "/somewhere/h5", "epochs": 2},
                   metrics={"history": history}, protocol="last epoch")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, payload)


@pytest.mark.slow
def test_average_weights_writes_the_mean_that_loads_and_names_its_inputs(tmp_path):
    inputs = [_member(tmp_path / "shipped" / "m.pt", 0, half=True), _member(tmp_path / "r1" / "last.pt", 1),
              _member(tmp_path / "r2" / "last.pt", 2)]
    out = tmp_path / "soup" / "soup.pt"
    done = subprocess.run([sys.executable, str(AVERAGE), str(out), *map(str, inputs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    soup, members = load_checkpoint(out), [load_checkpoint(p) for p in inputs]
    for key, value in soup["model"].items():
        if value.is_floating_point():  # the element-wise mean in float32, a float16 input upcast
            assert value.dtype == torch.float32
            mean = torch.stack([m["model"][key].float() for m in members]).mean(0)
            assert torch.equal(value, mean), key
            assert not torch.equal(value, members[2]["model"][key].float()), key  # not one input's
        else:
            assert torch.equal(value, members[2]["model"][key])  # step counters: the last input's
    assert soup["average"] == [{"file": f"{p.parent.name}/{p.name}", "sha256": file_sha256(p), "epoch": 2,
                                "train_seconds": 2 * (10.0 + seed)} for seed, p in enumerate(inputs)]
    assert soup["protocol"] == "uniform average of the weights of 3 checkpoints"
    assert "optimizer" not in soup  # evaluated or shipped, never resumed
    assert "epoch" not in soup  # no epoch of any one run is the average's
    model = pcea.load_model(out)
    assert model.class_names == ["ball", "box", "disc"]
    assert torch.isfinite(model(torch.randn(2, model.config.num_points, 3))).all()


@pytest.mark.slow
@pytest.mark.parametrize("matches", [True, False])
def test_average_weights_takes_a_shipped_files_time_from_its_card(tmp_path, matches):
    # a shipped average holds only its last member's history (20 s here); its card has the whole cost
    shipped = _member(tmp_path / "weights" / "m.pt", 0, half=True)
    run = _member(tmp_path / "r1" / "last.pt", 1)
    sha = file_sha256(shipped) if matches else "0" * 64  # a card that names another file is not this one's
    (tmp_path / "weights" / "m.json").write_text(json.dumps({"sha256": sha, "train_seconds": 1234.5}))
    out = tmp_path / "soup.pt"
    subprocess.run([sys.executable, str(AVERAGE), str(out), str(shipped), str(run)], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    seconds = [member["train_seconds"] for member in load_checkpoint(out)["average"]]
    assert seconds == ([1234.5, 22.0] if matches else [20.0, 22.0])


@pytest.mark.slow
@pytest.mark.parametrize("case, says", [
    ("one", "two or more"),
    ("classes", "class_names differs"),  # checkpoints of different models do not average
    ("self", "is one of the inputs"),
    ("missing", "nope.pt"),
])
def test_average_weights_refuses_with_one_line_and_writes_nothing(tmp_path, case, says):
    a, b = _member(tmp_path / "a" / "last.pt", 0), _member(tmp_path / "b" / "last.pt", 1)
    out = tmp_path / "soup.pt"
    args = {"one": [out, a], "self": [a, a, b], "missing": [out, a, tmp_path / "nope.pt"],
            "classes": [out, a, _member(tmp_path / "c" / "last.pt", 2, class_names=("x", "y", "z"))]}[case]
    refused = subprocess.run([sys.executable, str(AVERAGE), *map(str, args)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and says in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not out.exists() and load_checkpoint(a)["epoch"] == 2  # nothing written, no input touched


RECOMPUTE = ROOT / "scripts" / "recompute_batchnorm.py"


def _poison_validation_clouds(data: Path, val_split: float, seed: int) -> None:
    """Flatten the clouds the hold-out ``(val_split, seed)`` keeps for validation onto the x axis, in place
    (a scale would not do: the loader normalises each cloud into the unit sphere)."""
    import h5py

    files = sorted(data.glob("ply_data_train*.h5"))
    labels = np.concatenate([h5py.File(f, "r")["label"][:, 0] for f in files])
    _, val_idx = split_train_val(labels, val_split, seed)
    start = 0
    for f in files:
        with h5py.File(f, "r+") as h5:
            count = len(h5["label"])
            mine = [i - start for i in val_idx if start <= i < start + count]
            if mine:
                clouds = h5["data"][...]
                clouds[mine, :, 1:] = 0
                h5["data"][...] = clouds
            start += count
    assert len(val_idx) > 0


def _bn_source(path: Path, class_names) -> Path:
    """A tiny run's checkpoint whose recipe held out half of 64-point clouds (hold-out seed 3) and
    turned them any way."""
    source = _member(path, 0, class_names=class_names)
    payload = load_checkpoint(source)
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALLEST.items() if k != "num_points"}
    payload["train_config"] = {"points": 64, "model_options": options, "val_split": 0.5, "split_seed": 3,
                               "seed": 0, "yaw": 180}
    payload["optimizer"] = {"state": {}, "param_groups": []}  # a run's checkpoint: resumable
    return save_checkpoint(source, payload)


def _recompute_in_process(monkeypatch, *args) -> None:
    """Run scripts/recompute_batchnorm.py with ``args`` in this process: no interpreter and torch
    start-up per call; a refusal raises SystemExit(2), its message on stderr."""
    monkeypatch.setattr(sys, "argv", [str(RECOMPUTE), *map(str, args)])
    runpy.run_path(str(RECOMPUTE), run_name="__main__")


@pytest.mark.slow
def test_recompute_batchnorm_reads_only_the_training_clouds_and_keeps_the_weights(tmp_path, monkeypatch,
                                                                                   capsys):
    clean = synth.generate(tmp_path / "clean", classes=3, per_class=10, points=64) / "h5"
    poisoned = synth.generate(tmp_path / "poisoned", classes=3, per_class=10, points=64) / "h5"
    _poison_validation_clouds(poisoned, 0.5, 3)  # a validation cloud read would move the statistics
    source = _bn_source(tmp_path / "run" / "last.pt", synth._class_names(3))
    payload = load_checkpoint(source)
    outs = {}
    for name, data in (("clean", clean), ("poisoned", poisoned)):
        outs[name] = tmp_path / name / "bn.pt"
        _recompute_in_process(monkeypatch, outs[name], source, "--data", data, "--batch-size", 4)
        # 24 training clouds, half of them held out: 12 in 3 batches of 4
        assert "BatchNorm statistics from 3 batches of 12 training clouds" in capsys.readouterr().out
    a, b = load_checkpoint(outs["clean"]), load_checkpoint(outs["poisoned"])
    for key, value in payload["model"].items():
        if "running" in key:  # the training clouds' statistics, the same whatever the held-out clouds hold
            assert torch.equal(a["model"][key], b["model"][key]), key
            assert not torch.equal(a["model"][key], value), key
        else:
            assert torch.equal(a["model"][key], value), key  # weights kept
    assert a["batchnorm"]["clouds"] == 12 and a["batchnorm"]["dropout"] == "off"
    assert a["epoch"] == 2 and a["train_config"] == payload["train_config"] and "optimizer" not in a
    assert a["protocol"] == "last epoch, BatchNorm statistics recomputed on 12 training clouds"
    assert pcea.load_model(outs["clean"]).class_names == synth._class_names(3)


@pytest.mark.slow
def test_recompute_batchnorm_augments_as_the_recipe_unless_told_not_to(tmp_path, monkeypatch):
    data = synth.generate(tmp_path / "shapes", classes=3, per_class=10, points=64) / "h5"
    source = _bn_source(tmp_path / "run" / "last.pt", synth._class_names(3))  # a recipe with yaw 180
    stats = {}
    for flags in ((), ("--no-augment",)):
        for seed in ("0", "1"):
            out = tmp_path / f"{len(flags)}-{seed}.pt"
            _recompute_in_process(monkeypatch, out, source, "--data", data, "--batch-size", 4, "--seed", seed,
                                  *flags)
            payload = load_checkpoint(out)
            stats[flags, seed] = payload["model"]["embedding.0.bn.running_var"]
            assert (payload["batchnorm"]["augmentation"] == "none") == bool(flags)
    assert not torch.equal(stats[(), "0"], stats[(), "1"])  # the augmentation's draws differ by seed
    assert torch.equal(stats[("--no-augment",), "0"], stats[("--no-augment",), "1"])  # nothing drawn


@pytest.mark.slow
@pytest.mark.parametrize("case, says", [("missing", "nope.pt"), ("classes", "not the ones"),
                                        ("batch", "at least 2 clouds per batch"),
                                        ("self", "is the checkpoint read")])
def test_recompute_batchnorm_refuses_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                                      case, says):
    data = synth.generate(tmp_path / "shapes", classes=3, per_class=10, points=64) / "h5"
    names = ("x", "y", "z") if case == "classes" else synth._class_names(3)
    source = _bn_source(tmp_path / "run" / "last.pt", names)
    out = source if case == "self" else tmp_path / "bn.pt"
    before = source.read_bytes()
    args = [str(out), str(tmp_path / "nope.pt") if case == "missing" else str(source), "--data", str(data),
            "--batch-size", "1" if case == "batch" else "4"]
    with pytest.raises(SystemExit) as refused:  # argparse's error: any other exception fails the test
        _recompute_in_process(monkeypatch, *args)
    stderr = capsys.readouterr().err
    assert refused.value.code == 2 and says in stderr.splitlines()[-1], stderr
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "shapes"]  # nothing written


@pytest.mark.slow
def test_ship_weights_ships_an_average_with_the_suites_figures(tmp_path):
    inputs = [_member(tmp_path / f"r{seed}" / "last.pt", seed) for seed in range(2)]
    soup = tmp_path / "soup.pt"
    subprocess.run([sys.executable, str(AVERAGE), str(soup), *map(str, inputs)], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    suite = {"split": "val", "seed": 0, "clean": {"oa": 0.75, "macc": 0.625}, "mean_oa": 0.7,
             "corruptions": {"yaw": {"5": {"oa": 0.74, "macc": 0.6}},
                             "partial": {"1": {"oa": 0.5, "macc": 0.4}}}}
    (tmp_path / "robustness.json").write_text(json.dumps(suite))
    ship = [sys.executable, str(SHIP), str(soup), "--name", "tiny", "--out-dir", str(tmp_path / "out"),
            "--cpu", "test machine, CPU family 0"]
    (tmp_path / "out").mkdir()
    refused = subprocess.run(ship, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--robustness" in refused.stderr  # its only figures are the suite's
    not_an_average = subprocess.run([*ship[:2], str(inputs[0]), *ship[3:], "--robustness",
                                     str(tmp_path / "robustness.json")],
                                    cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert not_an_average.returncode == 2 and "not an average" in not_an_average.stderr
    assert list((tmp_path / "out").iterdir()) == []
    done = subprocess.run([*ship, "--half", "--robustness", str(tmp_path / "robustness.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert (card["val_oa"], card["val_macc"]) == (0.75, 0.625)  # the averaged weights' own, not an epoch's
    assert card["epoch"] is None and card["average"] == load_checkpoint(soup)["average"]
    assert card["train_seconds"] == 20.0 + 22.0  # its members' epochs
    assert card["robustness"]["mean_oa_by_corruption"] == {"yaw": 0.74, "partial": 0.5}
    assert "averaged" in card["val_protocol"] and card["selection"].startswith("uniform average")


ENSEMBLE = ROOT / "scripts" / "ensemble_study.py"


def _ensemble_member(path: Path, seed: int, class_names, split_seed: int = 3) -> Path:
    """A tiny run's checkpoint whose recipe held out half of the clouds (hold-out seed ``split_seed``)."""
    source = _member(path, seed, class_names=class_names)
    payload = load_checkpoint(source)
    payload["train_config"] = {"points": SMALLEST["num_points"], "val_split": 0.5, "split_seed": split_seed,
                               "seed": 0}
    return save_checkpoint(source, payload)


def _ensemble_in_process(monkeypatch, *args) -> None:
    monkeypatch.setattr(sys, "argv", [str(ENSEMBLE), *map(str, args)])
    runpy.run_path(str(ENSEMBLE), run_name="__main__")


def test_ensembles_score_the_mean_softmax_of_every_combination():
    ensembles = runpy.run_path(str(ENSEMBLE))["ensembles"]
    labels = np.array([0, 1, 2, 0])
    sure, unsure = 0.9, 0.4  # the first two members: each right on two shapes, sure there, unsure elsewhere
    first = np.array([[sure, 0.05, 0.05], [0.05, sure, 0.05], [0.3, unsure, 0.3], [0.3, unsure, 0.3]])
    second = np.array([[0.3, 0.3, unsure], [unsure, 0.3, 0.3], [0.05, 0.05, sure], [sure, 0.05, 0.05]])
    wrong = np.array([[0.15, 0.7, 0.15], [0.7, 0.15, 0.15], [0.7, 0.15, 0.15], [0.15, 0.15, 0.7]])
    # the third is right nowhere. Two members right on two shapes each make an ensemble right on all four;
    # the third pulls pairs down
    expected = [(4, (0, 1)), (2, (0, 2)), (2, (1, 2)), (4, (0, 1, 2))]
    assert ensembles([first, second, wrong], labels) == expected


@pytest.mark.slow
def test_ensemble_study_scores_each_member_and_every_ensemble_on_their_hold_out(tmp_path, monkeypatch,
                                                                                 capsys):
    data = synth.generate(tmp_path / "shapes", classes=3, per_class=10, points=SMALLEST["num_points"]) / "h5"
    names = synth._class_names(3)
    members = [_ensemble_member(tmp_path / f"r{seed}" / "last.pt", seed, names) for seed in range(3)]
    _ensemble_in_process(monkeypatch, *members, "--data", data)
    out = capsys.readouterr().out.splitlines()
    # what each member and each pair should get right, computed here from the models and the hold-out
    dataset = pcea.data.open_dataset(data, split="train", num_points=SMALLEST["num_points"])
    _, val_idx = split_train_val(dataset.labels, 0.5, 3)
    clouds = torch.from_numpy(np.stack([dataset[i][0] for i in val_idx]))  # (n, N, 3)
    labels = np.asarray(dataset.labels)[val_idx]
    probs = []
    for path in members:
        with torch.no_grad():
            probs.append(pcea.load_model(path)(clouds).softmax(-1).numpy())
    right = [int((p.argmax(1) == labels).sum()) for p in probs]
    for path, count in zip(members, right, strict=True):
        said = f"{path}: {count} of {len(val_idx)} val shapes right"
        assert any(line.startswith(said) for line in out), out
    pairs = [int(((probs[a] + probs[b]).argmax(1) == labels).sum()) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert any(line.startswith(f"ensembles of 2 (3): {min(pairs)} to {max(pairs)} shapes right")
               for line in out), out
    three = int((sum(probs).argmax(1) == labels).sum())
    assert any(line.startswith(f"ensembles of 3 (1): {three} to {three} shapes right") for line in out), out
    assert out[-1].startswith(f"all 4 ensembles: {min(pairs + [three])} to {max(pairs + [three])} of "
                              f"{len(val_idx)} shapes right")


@pytest.mark.slow
@pytest.mark.parametrize("case, says", [("one", "two to 12"), ("classes", "not the ones"),
                                        ("hold-out", "holds out other shapes"), ("missing", "nope.pt")])
def test_ensemble_study_refuses_with_one_line(tmp_path, monkeypatch, capsys, case, says):
    data = synth.generate(tmp_path / "shapes", classes=3, per_class=10, points=SMALLEST["num_points"]) / "h5"
    names = synth._class_names(3)
    a = _ensemble_member(tmp_path / "a" / "last.pt", 0, names)
    b = {"one": None, "missing": tmp_path / "nope.pt",
         "classes": tmp_path / "b" / "last.pt", "hold-out": tmp_path / "b" / "last.pt"}[case]
    if case == "classes":
        _ensemble_member(b, 1, ("x", "y", "z"))
    elif case == "hold-out":
        _ensemble_member(b, 1, names, split_seed=4)
    with pytest.raises(SystemExit) as refused:  # argparse's error: any other exception fails the test
        _ensemble_in_process(monkeypatch, a, *([b] if b else []), "--data", data)
    stderr = capsys.readouterr().err
    assert refused.value.code == 2 and says in stderr.splitlines()[-1], stderr
    assert "Traceback" not in stderr
