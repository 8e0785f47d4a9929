"""End-to-end training on a tiny h5 dataset: files, metrics, selection, exact resume, errors, the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from engine_tiny import TINY_MODEL, tiny_config

from pcea.cli import main
from pcea.data.mixing import mix_batch
from pcea.engine.checkpoint import FORMAT, load_checkpoint, previous_path, save_checkpoint
from pcea.engine.config import TrainConfig, load_config_file
from pcea.engine.train import Trainer, out_of_time, train
from pcea.errors import PceaError, PceaFileError

pytestmark = pytest.mark.slow  # each test trains the tiny model for an epoch or more (seconds each)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finished_run(tiny_h5, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    results = train(tiny_config(tiny_h5), out, log=lambda line: None)
    return out, results


def test_a_run_writes_every_file_with_sane_metrics(finished_run, tiny_h5):
    out, results = finished_run
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "last.pt", "last.prev.pt", "best.pt",
                 "results.json"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
        for key in ("train_acc", "val_oa", "val_macc"):
            assert 0 <= row[key] <= 1
        # Validation holds 3 clouds per class: every accuracy is a multiple of 1/12 (OA) or 1/3 (per class).
        assert round(row["val_oa"] * 12, 6) == round(row["val_oa"] * 12)
    # Cosine annealing per epoch from lr to min_lr over the 2 epochs: 0.05, then the midpoint.
    assert rows[0]["lr"] == pytest.approx(0.05)
    assert rows[1]["lr"] == pytest.approx(1e-4 + (0.05 - 1e-4) * 0.5)

    config = TrainConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert config == tiny_config(tiny_h5)

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    protocols = [entry["protocol"] for entry in results["test"]]
    assert protocols == ["last epoch", "best on val"]
    assert results["num_test"] == 16
    for entry in results["test"]:
        assert round(entry["oa"] * 16, 6) == round(entry["oa"] * 16)

    last = load_checkpoint(out / "last.pt")
    best = load_checkpoint(out / "best.pt")
    assert last["format"] == FORMAT and last["epoch"] == 2 and last["protocol"] == "last epoch"
    assert best["protocol"] == "best on val"
    assert best["epoch"] == 1 + max(range(2), key=lambda i: (rows[i]["val_oa"], -i))
    assert last["class_names"] == ["ball", "box", "disc", "rod"]
    assert last["model_name"] == "pcea"
    assert last["model_config"]["num_points"] == 128 and list(last["model_config"]["centers"]) == [64, 32]
    assert last["train_config"] == tiny_config(tiny_h5).to_dict()
    assert load_checkpoint(previous_path(out / "last.pt"))["epoch"] == 1
    assert set(last["rng"]) >= {"python", "numpy", "torch", "loader"}
    assert [row["epoch"] for row in last["metrics"]["history"]] == [1, 2]


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize(("workers", "recipe"), [
    (0, {}),
    (0, {"wolf": 0.5, "rsmix": 0.5}),  # WOLFMix: batches mixed from a (seed, epoch, rank, step) stream
    (0, {"wolf": 0.5, "rsmix": 0.5, "yaw": 180, "occlusion": 0.5, "noise": 0.5}),  # modelnet40's recipe
    pytest.param(2, {}, marks=pytest.mark.slow),  # 2: worker processes
], ids=["plain", "wolfmix", "robust", "workers"])
def test_interrupted_and_resumed_run_ends_bit_identical(tiny_h5, tmp_path, workers, recipe, monkeypatch):
    import pcea.engine.train as train_module

    mixed = []

    def counting_mix_batch(points, labels, *args, **kwargs):
        out, targets = mix_batch(points, labels, *args, **kwargs)
        mixed.append(targets is not labels)
        return out, targets

    monkeypatch.setattr(train_module, "mix_batch", counting_mix_batch)
    config = tiny_config(tiny_h5, epochs=3, workers=workers, **recipe)
    quiet = {"log": lambda line: None}
    train(config, tmp_path / "straight", **quiet)
    stopped = train(config, tmp_path / "resumed", stop_after=1, **quiet)
    assert stopped == {"interrupted": True, "signal": None, "epochs_completed": 1}
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "resumed" / "results.json").exists()
    train(None, tmp_path / "resumed", resume=True, overrides={"workers": workers}, **quiet)

    straight = _weights(tmp_path / "straight" / "last.pt")
    resumed = _weights(tmp_path / "resumed" / "last.pt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    metrics = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("straight", "resumed")]
    drop_time = [[{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]
                 for lines in metrics]
    assert drop_time[0] == drop_time[1]
    # And the check can fail: another seed gives other weights.
    other = train(tiny_config(tiny_h5, epochs=1, seed=1), tmp_path / "other", **quiet)
    assert other["seed"] == 1
    other_weights = _weights(tmp_path / "other" / "last.pt")
    assert not torch.equal(other_weights["head.4.weight"], straight["head.4.weight"])
    assert (0 < sum(mixed) < len(mixed)) if "rsmix" in recipe else not mixed      # some batches were mixed


def test_out_of_time_judges_the_next_epoch_by_the_slowest_of_the_last_three():
    history = [{"time_s": 90.0}, {"time_s": 10.0}, {"time_s": 30.0}, {"time_s": 20.0}]  # the first is too old
    assert not out_of_time(history, 70.0, 100.0)  # 70 + 30 = 100 ends at the limit: one more fits
    assert out_of_time(history, 70.5, 100.0)
    assert not out_of_time([], 1e9, 100.0)  # nothing to judge by: the first epoch runs
    assert not out_of_time(history, 1e9, None)


def test_max_time_stops_between_epochs_and_the_run_goes_on_as_one_that_never_stopped(tiny_h5, tmp_path,
                                                                                       capsys):
    config = tiny_config(tiny_h5, epochs=3)
    quiet = {"log": lambda line: None}
    train(config, tmp_path / "straight", **quiet)
    # any recorded epoch outlasts a microsecond: the run stops after its first, which always runs
    stopped = train(config, tmp_path / "limited", max_time=1e-6, **quiet)
    assert stopped == {"interrupted": True, "signal": None, "epochs_completed": 1, "out_of_time": True}
    last = tmp_path / "limited" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    before = last.read_bytes()
    # resumed under the same limit, the recorded epoch's time says the next would not fit: nothing trains
    assert train(None, tmp_path / "limited", resume=True, max_time=1e-6, **quiet)["epochs_completed"] == 1
    assert last.read_bytes() == before
    assert main(["train", "--resume", str(tmp_path / "limited"), "--max-time", "0.000001"]) == 75
    said = "stopped by --max-time 1e-06 s (the next epoch would end past it) after epoch 1"
    assert said in capsys.readouterr().out
    assert train(None, tmp_path / "limited", resume=True, max_time=3600, **quiet)["epochs"] == 3
    straight, limited = _weights(tmp_path / "straight" / "last.pt"), _weights(last)
    assert all(torch.equal(straight[key], limited[key]) for key in straight)


@pytest.mark.parametrize("args, says", [
    (["--max-time", "0"], "expected a positive time"),
    (["--max-time", "90x"], "expected a positive time"),
    (["--max-time", "1h", "--seeds", "0,1"], "--max-time stops one run"),
])
def test_max_time_is_checked_before_anything_runs(tmp_path, capsys, args, says):
    try:
        code = main(["train", "--data", "synthetic", "--out", str(tmp_path / "r"), *args])
    except SystemExit as usage:  # argparse's refusal of the value
        code = usage.code
    assert code in (1, 2) and says in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(PceaError, match="max_time=0"):
        Trainer(None, tmp_path / "r", max_time=0)


def test_resume_falls_back_to_the_previous_checkpoint_when_last_is_corrupt(tiny_h5, tmp_path):
    lines: list[str] = []
    out = tmp_path / "run"
    train(tiny_config(tiny_h5, epochs=3), out, stop_after=2, log=lines.append)
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # as if the disk lost the end of the file
    result = train(None, out, resume=True, log=lines.append)
    assert result["epochs"] == 3
    text = "\n".join(lines)
    assert "truncated checkpoint" in text and "resuming from the previous checkpoint" in text
    assert "resuming" in text and "after epoch 1/3" in text
    assert load_checkpoint(last)["epoch"] == 3


def test_resume_refuses_to_change_the_recipe(finished_run):
    out, _ = finished_run
    with pytest.raises(PceaError, match="cannot change lr"):
        Trainer(None, out, resume=True, overrides={"lr": 0.5, "workers": 1})


def test_select_on_test_and_last_label_their_figures(tiny_h5, tmp_path):
    quiet = {"log": lambda line: None}
    on_test = train(tiny_config(tiny_h5, select_on="test", val_split=0.0), tmp_path / "t", **quiet)
    assert [e["protocol"] for e in on_test["test"]] == ["last epoch", "best on test"]
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert "val_oa" not in rows[0] and "test_oa" in rows[0]
    assert on_test["test"][1]["oa"] == pytest.approx(max(row["test_oa"] for row in rows))

    on_last = train(tiny_config(tiny_h5, select_on="last", epochs=1), tmp_path / "l", **quiet)
    assert [e["protocol"] for e in on_last["test"]] == ["last epoch"]
    assert load_checkpoint(tmp_path / "l" / "best.pt")["epoch"] == 1


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tiny_h5, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(PceaError, match=r"non-finite loss .* at epoch 1, step [0-9]+"):
        train(tiny_config(tiny_h5, lr=1e30, momentum=0.0), out, log=lambda line: None)
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    for value in _weights(out / "last.pt").values():
        assert torch.isfinite(value.float()).all()


def test_run_directory_checks_happen_before_training(finished_run, tiny_h5, tmp_path):
    out, _ = finished_run
    with pytest.raises(PceaFileError, match="already holds a run; continue it with --resume"):
        train(tiny_config(tiny_h5), out)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PceaFileError, match="run directory is not writable"):
        train(tiny_config(tiny_h5), blocker / "run")
    with pytest.raises(PceaFileError, match="no run to resume"):
        train(None, tmp_path / "empty", resume=True)


def test_config_file_unknown_key_and_precedence(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(PceaFileError, match="bad.yaml: unknown setting.*learning_rate"):
        load_config_file(bad)
    shipped = load_config_file(REPO / "configs" / "pct_modelnet40.yaml")
    assert TrainConfig.from_dict(shipped) == TrainConfig(data=shipped["data"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_recipe_is_a_valid_train_config(path):
    config = TrainConfig.from_dict(load_config_file(path))   # checks every value, as pcea train does
    assert config.epochs >= 1 and config.to_dict() == TrainConfig.from_dict(config.to_dict()).to_dict()


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nbogus: 1\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pcea: error: ") and "bogus" in err and "bad.yaml" in err and "\n" not in err
    assert main(["train", "--data", "x", "--out", str(tmp_path / "r"), "--model-opt", "memory"]) == 1
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--val-split", "1.5"]) == 1
    assert "val_split=1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--select-on", "best"])
    assert exit_info.value.code == 2


def test_cli_trains_with_model_options(tiny_h5, tmp_path, capsys):
    out = tmp_path / "cli"
    opts = [f"--model-opt={key}={json.dumps(value)}" for key, value in TINY_MODEL.items()]
    code = main(["train", "--data", str(tiny_h5), "--out", str(out), "--epochs", "1", "--points", "128",
                 "--batch-size", "8", "--val-split", "0.25", "--device", "cpu", "--workers", "0",
                 "--model", "pct", *opts])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "epoch   1/1" in stdout and "test (best on val, epoch 1)" in stdout
    # The resolved config: the changed settings, readable, after the checks (no 400-character JSON line).
    lines = stdout.splitlines()
    assert not any(line.startswith("config: {") for line in lines)
    start = lines.index(next(line for line in lines if line.startswith("config (")))
    block = "\n".join(lines[start:start + 6])
    assert "config.yaml; settings not listed are PCT's defaults" in lines[start]
    tokens = block.split()
    assert "model=pct" in tokens and "epochs=1" in tokens and "label_smoothing" not in block
    assert start < lines.index(next(line for line in lines if line.startswith("run ")))
    checkpoint = load_checkpoint(out / "best.pt")
    assert checkpoint["model_name"] == "pct" and checkpoint["model_config"]["attention"] == "offset"
    assert checkpoint["model_config"]["memory"] == 16


@pytest.mark.parametrize("signum, workers, status", [(signal.SIGINT, 0, 130), (signal.SIGTERM, 2, 143)])
@pytest.mark.slow
def test_a_signal_saves_and_exits_cleanly(tiny_h5, tmp_path, signum, workers, status):
    out = tmp_path / "sig"
    opts = [f"--model-opt={key}={json.dumps(value)}" for key, value in TINY_MODEL.items()]
    command = [sys.executable, "-m", "pcea", "train", "--data", str(tiny_h5), "--out", str(out),
               "--epochs", "200", "--points", "128", "--batch-size", "8", "--device", "cpu",
               "--workers", str(workers), "--threads", "1", *opts]
    # PCEA_ALLOCATOR=system: no allocator re-exec, so each process starts Python once (the
    # allocator does not change what is tested here, and the test takes half the time).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PCEA_ALLOCATOR": "system"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch   2/200"):
            proc.send_signal(signum)
            break
    rest, err = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    assert proc.returncode == status, output + err
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in output and f"pcea train --resume {out}" in output
    saved = load_checkpoint(out / "last.pt")
    assert saved["epoch"] == sum(line.startswith("epoch ") for line in output.splitlines())
    assert saved["epoch"] >= 2


def test_amp_trains_under_bf16_autocast_where_the_cpu_has_it(tiny_h5, tmp_path, monkeypatch):
    import pcea.engine.run as run_module
    from pcea import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    dtypes = []
    build = run_module.build_model

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.head[-1].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
        return model

    monkeypatch.setattr(run_module, "build_model", build_and_watch)
    lines: list[str] = []
    trainer = Trainer(tiny_config(tiny_h5, epochs=1, amp=True), tmp_path / "amp", log=lines.append)
    results = trainer.run()
    assert trainer.amp and dtypes and set(dtypes) == {torch.bfloat16}
    assert not any("--amp ignored" in line for line in lines)
    assert math.isfinite(results["test"][0]["oa"])


def test_compile_failure_falls_back_to_eager_and_amp_needs_native_bf16(tiny_h5, tmp_path, monkeypatch):
    from pcea import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    class FailsOnFirstCall(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, points):
            raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: FailsOnFirstCall(module))
    lines: list[str] = []
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C.. compiler found"):
        results = train(tiny_config(tiny_h5, epochs=1, compile=True, amp=True), tmp_path / "c",
                        log=lines.append)
    text = "\n".join(lines)
    assert "continuing in eager mode" in text
    assert "--amp ignored, training in float32: this CPU" in text and "no native bf16" in text
    assert 0 <= results["test"][0]["oa"] <= 1


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory"),
], ids=["cuda", "cpu"])
def test_out_of_memory_in_a_compiled_model_is_not_a_compile_failure(tiny_h5, tmp_path, monkeypatch, error):
    # Only what torch.compile raises falls back to eager mode; running out of memory is the run's.
    class OutOfMemory(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, points):
            raise error

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: OutOfMemory(module))
    lines: list[str] = []
    with pytest.raises(type(error), match="allocate"):
        train(tiny_config(tiny_h5, epochs=1, compile=True), tmp_path / "oom", log=lines.append)
    assert not any("compile failed" in line for line in lines), lines


# -- issues 15 and 16: runs that cannot be wedged, finished runs left alone -------------------------

def _snapshot(run: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.iterdir())}


@pytest.fixture(scope="module")
def stopped_run(tiny_h5, tmp_path_factory) -> Path:
    """A 2-epoch run stopped after epoch 1: last.pt (1), last.prev.pt (0), best.pt (1)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train(tiny_config(tiny_h5), out, stop_after=1, log=lambda line: None)
    return out


def test_resume_of_a_finished_run_says_so_and_leaves_its_files_alone(finished_run, tmp_path):
    run = tmp_path / "done"
    shutil.copytree(finished_run[0], run)
    (run / "curves.png").unlink()
    before = _snapshot(run)
    stale = run / ".last.prev.pt.abcd1234.tmp"  # what a SIGKILL between link and rename leaves
    stale.write_bytes(b"x" * 1000)
    lines: list[str] = []
    result = train(None, run, resume=True, log=lines.append)
    assert result == json.loads((run / "results.json").read_text())
    assert _snapshot(run) == before  # no test re-evaluation, no rewritten results.json, no curves.png
    assert not stale.exists()
    text = "\n".join(lines)
    assert "is complete (2/2 epochs" in text and "cannot be extended" in text
    assert not any(line.startswith(("test (", "wrote", "epoch")) for line in lines), text


def test_a_finished_run_with_a_damaged_best_pt_recovers_what_it_can(finished_run, tmp_path):
    run = tmp_path / "done"
    shutil.copytree(finished_run[0], run)
    # Make epoch 1 the selected one, so that best.pt is only in last.prev.pt (last.pt holds epoch 2).
    last = load_checkpoint(run / "last.pt")
    history = last["metrics"]["history"]
    last["metrics"]["best"] = {"epoch": 1, "score": history[0]["val_oa"]}
    save_checkpoint(run / "last.pt", last)
    best = run / "best.pt"
    best.write_bytes(best.read_bytes()[:-100])
    lines: list[str] = []
    train(None, run, resume=True, log=lines.append)
    assert any("truncated checkpoint" in line and "rebuilt best.pt from" in line and "last.prev.pt" in line
               for line in lines), lines
    rebuilt = load_checkpoint(best)
    assert rebuilt["epoch"] == 1 and rebuilt["protocol"] == "best on val"
    prev = load_checkpoint(run / "last.prev.pt")
    assert all(torch.equal(rebuilt["model"][k], prev["model"][k]) for k in prev["model"])

    # Without the checkpoint that held epoch 1, its weights are lost: say so, and what is intact.
    best.write_bytes(best.read_bytes()[:-100])
    (run / "last.prev.pt").unlink()
    with pytest.raises(PceaFileError, match=r"best.pt: damaged \(truncated checkpoint.*selected epoch 1 "
                                            r"\(best on val\) cannot be recovered: last.pt holds epoch 2.*"
                                            r"Intact: last.pt"):
        train(None, run, resume=True, log=lambda line: None)
    assert main(["train", "--resume", str(run)]) == 1


def test_a_run_stopped_before_its_first_checkpoint_resumes_or_starts_again(tiny_h5, tmp_path, monkeypatch):
    import pcea.engine.train as train_module

    def interrupted_save(path, payload, **kwargs):
        raise KeyboardInterrupt  # one Ctrl-C while the epoch-0 checkpoint is written

    for name, resume in (("resumed", True), ("restarted", False)):
        out = tmp_path / name
        monkeypatch.setattr(train_module, "save_checkpoint", interrupted_save)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(tiny_h5, epochs=1), out, log=lambda line: None)
        monkeypatch.undo()
        assert (out / "config.yaml").exists() and not (out / "last.pt").exists()
        lines: list[str] = []
        config = None if resume else tiny_config(tiny_h5, epochs=1)
        result = train(config, out, resume=resume, log=lines.append)
        assert result["epochs"] == 1 and load_checkpoint(out / "last.pt")["epoch"] == 1, name
        assert any("stopped before its first checkpoint" in line for line in lines), lines


def test_a_refused_start_still_clears_stale_temporaries(finished_run, tiny_h5):
    out, _ = finished_run
    stale = [out / ".last.prev.pt.k1ll3d00.tmp", out / ".last.pt.k1ll3d01.tmp", out / ".write-test.k1ll3d02"]
    for path in stale:
        path.write_bytes(b"partial")
    with pytest.raises(PceaFileError, match="already holds a run"):
        train(tiny_config(tiny_h5), out)
    assert not [path for path in stale if path.exists()]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


_HOLDER = """
import sys, time
from pcea.engine.rundir import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_second_run_into_a_locked_directory_is_refused_naming_the_holder(tiny_h5, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        host = socket.gethostname()
        who = rf"another pcea train is using this run directory \(pid {holder.pid} on {host}, "
        with pytest.raises(PceaFileError, match=who + r"started 20\d\d-"):
            train(tiny_config(tiny_h5), out, log=lambda line: None)
        (out / "config.yaml").write_text(tiny_config(tiny_h5).dump_yaml())
        with pytest.raises(PceaFileError, match=who):
            train(None, out, resume=True, log=lambda line: None)
        assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: the kernel dropped its lock, so the directory is usable again.
    (out / "config.yaml").unlink()
    result = train(tiny_config(tiny_h5, epochs=1), out, log=lambda line: None)
    assert result["epochs"] == 1 and not (out / ".lock").exists()


def test_non_finite_weights_stop_the_run_and_are_never_saved(tiny_h5, tmp_path, monkeypatch):
    # As with `--lr 1e38` on the pcea-shapes recipe: the last step of the epoch overflows a weight
    # to inf while every loss was finite, so the loss check cannot see it.
    import pcea.engine.train as train_module

    epoch = train_module.train_one_epoch

    def overflowing_epoch(run, *args):
        metrics = epoch(run, *args)
        with torch.no_grad():
            run.model.embedding[0].linear.weight[0, 0] = math.inf
        return metrics

    monkeypatch.setattr(train_module, "train_one_epoch", overflowing_epoch)
    out = tmp_path / "inf"
    with pytest.raises(PceaError, match=r"non-finite weights \(embedding.0.linear.weight\) after epoch 1; "
                                        r"training stopped, .*last.pt keeps epoch 0"):
        train(tiny_config(tiny_h5, epochs=2), out, log=lambda line: None)
    assert not (out / "best.pt").exists() and not (out / "results.json").exists()
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    with pytest.raises(PceaError, match=r"lr=inf: expected a finite number"):
        tiny_config(tiny_h5, lr=math.inf)


def test_resume_counts_the_space_its_checkpoints_already_take(stopped_run, tiny_h5, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    size = (run / "last.pt").stat().st_size
    # Room for 1.5 more checkpoints: a resume replaces its three files one at a time, so it fits,
    # while a new run (four files) does not.
    free = int(1.5 * size) + 2**20
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 0, free))
    assert train(None, run, resume=True, log=lambda line: None)["epochs"] == 2
    with pytest.raises(PceaFileError, match=r"only [0-9.]+ MB free, the checkpoints of this run need about"):
        train(tiny_config(tiny_h5), tmp_path / "new", log=lambda line: None)


def test_resume_with_a_malformed_checkpoint_is_one_error_or_falls_back(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    good = load_checkpoint(run / "last.pt")
    save_checkpoint(run / "last.pt", {**good, "optimizer": "sgd"})  # valid header and hash
    lines: list[str] = []
    trainer = Trainer(None, run, resume=True, log=lines.append)
    assert trainer.resume_path.name == "last.prev.pt"
    assert any("last.pt: malformed checkpoint: 'optimizer' is not an optimizer state" in line
               for line in lines)

    save_checkpoint(run / "last.pt", {**good, "rng": {**good["rng"], "numpy": "state"}})
    save_checkpoint(run / "last.prev.pt", {**good, "metrics": {"history": [], "best": None}})
    with pytest.raises(PceaFileError, match=r"no usable checkpoint to resume from: .*last.pt: malformed "
                                            r"checkpoint: 'rng'.*last.prev.pt: malformed checkpoint: "
                                            r"'metrics'"):
        train(None, run, resume=True, log=lambda line: None)
    # Right types, wrong contents: torch refuses the optimizer state; still one line naming the file.
    save_checkpoint(run / "last.pt", {**good, "optimizer": {"state": {}, "param_groups": []}})
    with pytest.raises(PceaFileError, match=r"last.pt: malformed checkpoint: its states do not fit this run"):
        train(None, run, resume=True, log=lambda line: None)


def test_eval_defaults_to_the_runs_data_and_evaluates_its_own_val_split(finished_run, tiny_h5, tmp_path,
                                                                       capsys):
    out, _ = finished_run
    assert main(["eval", str(out), "--split", "val", "--device", "cpu", "--json", "--out",
                 str(tmp_path)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "the dataset the checkpoint was trained on" in captured.err
    assert report["data"] == str(tiny_h5) and report["split"] == "val"
    best = load_checkpoint(out / "best.pt")
    row = best["metrics"]["history"][best["epoch"] - 1]
    assert report["num_shapes"] == 12  # the run's hold-out: 25 % of 48 training clouds
    # The same clouds the run selected on: the same accuracy the run measured for that epoch.
    assert report["results"]["single_pass"]["overall_accuracy"] == pytest.approx(row["val_oa"])


def test_curves_tell_oa_from_macc_mark_the_selected_epoch_and_keep_legends_off_the_data():
    from pcea.engine.rundir import curves_figure

    history = [{"epoch": e, "lr": 0.01, "train_loss": 1.0 / e, "train_acc": 0.3 * e,
                "val_oa": 0.25 * e, "val_macc": 0.25 * e} for e in (1, 2)]  # OA == mAcc: balanced split
    fig = curves_figure(history, selected_epoch=2, selected_key="val_oa")
    ax_loss, ax_acc, ax_lr = fig.axes
    lines = {line.get_label(): line for line in ax_acc.get_lines()}
    oa, macc = lines["val OA"], lines["val mAcc"]
    assert list(oa.get_ydata()) == list(macc.get_ydata())
    assert (oa.get_linestyle(), oa.get_marker()) != (macc.get_linestyle(), macc.get_marker())
    assert list(lines["selected: epoch 2"].get_xdata()) == [2, 2]
    star = lines["best.pt (val OA)"]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([2], [50.0])
    fig.canvas.draw()
    for ax in (ax_loss, ax_acc):
        legend = ax.get_legend()
        assert legend is not None
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
