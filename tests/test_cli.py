"""The command line: pcea info, error handling, python -m pcea, option validation, closed pipes."""

import argparse
import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_models import SMALLEST

import pcea
from pcea.cli import build_parser, main
from pcea.engine.checkpoint import save_checkpoint
from pcea.engine.config import TrainConfig, settings
from pcea.errors import PceaError, PceaFileError


def test_info_describes_a_model(capsys):
    assert main(["info", "--model", "pct"]) == 0
    out = capsys.readouterr().out
    assert f"pcea     {pcea.__version__}" in out
    assert "torch" in out and "threads" in out
    assert "pct: 2,876,136 parameters" in out
    for stage in ("embedding", "stage1", "stage2", "blocks", "fuse", "head"):
        assert stage in out


def test_info_lists_the_builtin_weights_with_their_cards_figures(capsys):
    from pcea.weights import BUILTIN, builtin_card

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN:
        card = builtin_card(name)
        assert f"  {name} " in out
        assert f"val OA {100 * card['val_oa']:.2f} %, mAcc {100 * card['val_macc']:.2f} %" in out
        # the epoch shipped and how it was chosen (best on val, the last of the schedule), or the
        # checkpoints averaged into it
        if card.get("average"):
            files = ", ".join(member["file"] for member in card["average"])
            assert f"shipped the {card['selection']} ({files})" in out and "epoch None" not in out
        else:
            assert f"shipped epoch {card['epoch']} ({card['selection']})" in out
        # the suite's mean to two decimals, never rounded up (84.997 % is not 85.00 %)
        mean = float(out.split(f"  {name} ")[1].split("mean over the robustness suite ")[1].split(" %")[0])
        assert 100 * card["robustness"]["mean_oa"] - 0.01 < mean <= 100 * card["robustness"]["mean_oa"] + 1e-6


def test_unknown_model_is_one_line_and_exit_1(capsys):
    assert main(["info", "--model", "pointnet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pcea: error: unknown model 'pointnet'; choose one of pcea, pct, pct-sa"]


@pytest.mark.slow
def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "pcea", "info"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "numpy" in result.stdout


@pytest.mark.slow
def test_usage_error_exits_2():
    result = subprocess.run([sys.executable, "-m", "pcea", "info", "--bogus"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr


# -- issue 15: the command line -----------------------------------------------------------------

# PCEA_ALLOCATOR=system: no allocator re-exec, one Python start per command.
ENV = {**os.environ, "PCEA_ALLOCATOR": "system"}


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    """(the tiny checkpoint, a 300-point cloud file)."""
    cloud = tmp_path_factory.mktemp("clouds") / "cloud.xyz"
    np.savetxt(cloud, np.random.default_rng(0).normal(size=(300, 3)))
    return tiny_checkpoint, cloud


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pcea {pcea.__version__}"


@pytest.mark.parametrize("command", [["info"], ["classify", "CKPT", "CLOUD", "--json"]])
@pytest.mark.slow
def test_output_cut_short_ends_quietly(checkpoint, command):
    # A reader that has gone away, as after `pcea info | head -3`: every write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    argv = [str({"CKPT": checkpoint[0], "CLOUD": checkpoint[1]}.get(arg, arg)) for arg in command]
    try:
        result = subprocess.run([sys.executable, "-m", "pcea", *argv], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=ENV, timeout=600)
    finally:
        os.close(write_end)
    assert result.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert result.returncode == 141


@pytest.mark.parametrize("args, message", [
    (["--model-opt", "memory=-1"], "memory=-1: expected a positive integer"),
    (["--model-opt", "memory=abc"], "memory='abc': expected a positive integer"),
    (["--model-opt", "centers=abc"], "centers='abc': expected two positive integers"),
    (["--model-opt", "heads=0"], "heads=0: expected a positive integer"),
    (["--model-opt", "heads=3"], "heads=3 must divide the attention width"),
    (["--model-opt", "memory=2.5"], "memory=2.5: expected a positive integer"),
    (["--model-opt", "bogus=1"], "unknown model option(s) bogus"),
    (["--seed", "18446744073709551616"], "seed=18446744073709551616: need 0 <= seed <= 4294967295"),
    (["--seed", "-1"], "seed=-1: need 0 <= seed"),
    (["--lr", "inf"], "lr=inf: expected a finite number"),
    (["--lr", "nan"], "lr=nan: expected a finite number"),
    (["--threads", "100000"], "threads=100000: need 1 to"),
    (["--workers", "100000"], "workers=100000: need 0 to"),
    (["--points", "100"], "need num_points >= centers[0] >= centers[1], got 100, 512, 256"),
])
def test_bad_train_values_are_one_line_before_anything_is_created(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "no-data"), "--out", str(out), *args]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("pcea: error: ") and message in captured.err, captured.err
    assert captured.err.count("\n") == 1
    assert captured.out == ""  # no config line printed for a command that fails
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ("epochs: 2.5\n", "c.yaml: epochs=2.5: expected an integer"),
    ('normals: "no"\n', "c.yaml: normals='no': expected true or false"),
    ("batch_size: true\n", "c.yaml: batch_size=True: expected an integer"),
    ("lr: fast\n", "c.yaml: lr='fast': expected a finite number"),
    ("model_options: [1, 2]\n", "c.yaml: model_options=[1, 2]: expected a mapping"),
])
def test_bad_config_file_values_are_one_line_naming_the_file(tmp_path, capsys, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


# -- issue 24 item 1: pcea train's flags are made from TrainConfig's fields -----------------------

# --max-time is a limit of one process, not a setting of the recipe: config.yaml does not keep it
HAND_WRITTEN = {"-h", "--help", "--out", "--resume", "--force", "--config", "--seeds", "--max-time",
                "--model-opt"}
# A flag text out of each checked setting's range (with the other settings it needs).
OUT_OF_RANGE = {
    "model": {"model": "pointnet"}, "points": {"points": "0"}, "epochs": {"epochs": "0"},
    "batch_size": {"batch_size": "1"}, "lr": {"lr": "0"}, "min_lr": {"min_lr": "-1e-4"},
    "warmup_epochs": {"warmup_epochs": "3", "epochs": "3"}, "momentum": {"momentum": "1"},
    "weight_decay": {"weight_decay": "-1"}, "label_smoothing": {"label_smoothing": "1"}, "ema": {"ema": "1"},
    "yaw": {"yaw": "181"}, "tilt": {"tilt": "91"}, "wolf": {"wolf": "1.5"}, "rsmix": {"rsmix": "-0.1"},
    "noise": {"noise": "2"}, "scale": {"scale": "0.5"},
    "occlusion": {"occlusion": "1.5"}, "seed": {"seed": "-1"}, "split_seed": {"split_seed": "-1"},
    "val_split": {"val_split": "1"},
    "select_on": {"select_on": "val", "val_split": "0"}, "threads": {"threads": "0"},
    "workers": {"workers": "-1"},
}


def _train_flags() -> dict[str, argparse.Action]:
    from pcea.cli import _subcommand_parser

    train = _subcommand_parser(build_parser(), "train")
    return {option: action for action in train._actions for option in action.option_strings}


def test_every_setting_has_a_flag_with_its_help_and_only_seven_are_hand_written():
    flags = _train_flags()
    for setting in settings():
        flag = "--model-opt" if setting.name == "model_options" else setting.flag
        assert flag in flags and len(flags[flag].help) > 10, setting.name
        if setting.parse is not None:
            assert setting.help in flags[flag].help
    generated = {s.flag for s in settings()} | {f"--no-{s.flag[2:]}" for s in settings() if s.parse is None}
    assert set(flags) - generated == HAND_WRITTEN
    assert isinstance(flags["--amp"], argparse.BooleanOptionalAction) and "--no-amp" in flags
    assert flags["--optimizer"].choices == ("sgd", "adamw")


@pytest.mark.parametrize("setting", [s for s in settings() if s.parse is not None], ids=lambda s: s.name)
def test_a_flag_of_the_wrong_type_is_a_usage_error_in_train_configs_words(tmp_path, capsys, setting):
    text = "2.5" if setting.expected != "a finite number" else "fast"
    if setting.expected.startswith("a non-empty string"):
        text = ""
    with pytest.raises(PceaError) as config_error:
        TrainConfig(**{setting.name: setting.parse(text)})
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "run"), f"{setting.flag}={text}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"pcea train: error: argument {setting.flag}: {config_error.value}\n"), err
    assert str(config_error.value) == f"{setting.name}={setting.parse(text)!r}: expected {setting.expected}"
    assert not (tmp_path / "run").exists()


def test_the_range_table_covers_every_checked_setting():
    assert set(OUT_OF_RANGE) == {s.name for s in settings() if s.check}


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_a_flag_out_of_range_is_one_line_in_train_configs_words(tmp_path, capsys, name):
    by_name = {s.name: s for s in settings()}
    texts = OUT_OF_RANGE[name]
    with pytest.raises(PceaError, match=rf"^{name}=") as config_error:
        TrainConfig(**{key: by_name[key].parse(text) for key, text in texts.items()})
    flags = [f"{by_name[key].flag}={text}" for key, text in texts.items()]
    assert main(["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "run"), *flags]) == 1
    assert capsys.readouterr().err == f"pcea: error: command line: {config_error.value}\n"
    assert not (tmp_path / "run").exists()


def test_flags_override_the_config_file_and_only_the_flags_given(tmp_path, monkeypatch):
    import pcea.engine.train as train_module

    runs = []
    monkeypatch.setattr(train_module, "train", lambda config, out, **_: runs.append(config) or {})
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nlr: 0.5\namp: true\nthreads: 2\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--lr", "0.1",
                 "--min-lr", "0", "--momentum", "0.5", "--weight-decay=0", "--label-smoothing", "0",
                 "--augment", "none", "--no-amp", "--compile", "--init", "modelnet40", "--yaw", "90"]) == 0
    (got,) = runs
    assert (got.epochs, got.lr, got.min_lr, got.momentum, got.weight_decay, got.label_smoothing) == (
        3, 0.1, 0.0, 0.5, 0.0, 0.0)
    assert (got.augment, got.amp, got.compile, got.init, got.yaw, got.threads) == (
        "none", False, True, "modelnet40", 90.0, 2)
    assert (got.batch_size, got.points, got.workers) == (32, 1024, 4)  # not given: the defaults


@pytest.mark.parametrize("argv, message", [
    (["info", "--model", "pcea", "--num-classes", "-3"], "-3: expected a positive integer"),
    (["info", "--model", "pcea", "--num-classes", "0"], "0: expected a positive integer"),
    (["classify", "CKPT", "CLOUD", "--seed", "-1"], "-1: need 0 to 4294967295"),
    (["eval", "CKPT", "--seed", "18446744073709551616"], "need 0 to 4294967295"),
    (["bench", "--threads", "100000"], "100000: need 1 to"),
    (["prepare", "modelnet40", "--src", "x", "--out", "y", "--workers", "100000"], "100000: need 1 to"),
])
def test_bad_flag_values_are_usage_errors(checkpoint, capsys, argv, message):
    argv = [str({"CKPT": checkpoint[0], "CLOUD": checkpoint[1]}.get(arg, arg)) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_max_gb_must_be_finite(value, capsys):
    assert main(["download", "modelnet40", "--max-gb", value]) == 1
    expected = f"pcea: error: --max-gb {float(value)}: must be a positive, finite number of GiB\n"
    assert capsys.readouterr().err == expected


def test_classify_refuses_too_few_points_before_printing_anything(checkpoint, capsys):
    path, cloud = checkpoint
    assert main(["classify", str(path), str(cloud), "--points", "10"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no table header before the error
    assert captured.err == "pcea: error: num_points=10: the model's first stage needs at least 32 points\n"


@pytest.mark.parametrize("change, message", [
    ({"model_config": {**SMALLEST, "memory": "abc"}},
     "malformed checkpoint: its model_config is invalid: memory='abc'"),
    ({"class_names": "abcd"}, "malformed checkpoint: 'class_names' is not a list of strings"),
    ({"model": {"weight": "w"}}, "malformed checkpoint: 'model' is not a mapping of parameter names"),
])
def test_a_malformed_checkpoint_is_one_line_in_eval_classify_and_load_model(checkpoint, tmp_path, capsys,
                                                                           change, message):
    from pcea.engine.checkpoint import load_checkpoint

    path, cloud = checkpoint
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {**load_checkpoint(path), **change})  # a valid header and hash
    with pytest.raises(PceaFileError, match=f"bad.pt: {message}"):
        pcea.load_model(bad)
    for argv in (["eval", str(bad), "--data", str(tmp_path)], ["classify", str(bad), str(cloud)]):
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert captured.err == f"pcea: error: {bad}: " + captured.err.split(f"{bad}: ", 1)[1]
        assert message in captured.err and captured.err.count("\n") == 1 and captured.out == ""


@pytest.mark.slow
def test_baseline_accepts_synthetic(tmp_path, capsys, monkeypatch):
    from pcea.data import synth

    made = synth.generate(tmp_path / "shapes", classes=3, per_class=10, points=64)
    monkeypatch.setattr(synth, "ensure_synthetic", lambda: made)  # the default dataset takes ~30 s to make
    assert main(["baseline", "--data", "synthetic"]) == 0
    assert "D2 baseline" in capsys.readouterr().out


def test_synth_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from pcea.data import synth

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synth, "_write_h5", full)
    out = tmp_path / "shapes"
    assert main(["synth", "--out", str(out), "--classes", "2", "--per-class", "2", "--points", "16"]) == 1
    err = capsys.readouterr().err
    assert err == f"pcea: error: {out}: cannot write the dataset: No space left on device\n"
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary directory


def test_help_texts_quote_the_measured_amp_figures():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {name: sub.format_help() for name, sub in subparsers.choices.items()}
    for name in ("train", "eval", "classify"):
        assert "2x faster" not in helps[name].replace("\n", " ")
    assert "no faster than float32 for training" in " ".join(helps["train"].split())
    assert "1.4x faster inference" in " ".join(helps["eval"].split())


# -- issue 23: numbers the user types, configs, crafted checkpoints and devices ----------------

BIG = str(10**12)


@pytest.mark.parametrize("argv, message", [
    (["classify", "CKPT", "CLOUD", "--points", BIG], f"argument --points: {BIG}: at most 10,000,000"),
    (["classify", "CKPT", "CLOUD", "--votes", str(10**9)], "argument --votes: 1000000000: at most 100"),
    (["eval", "CKPT", "--votes", "101"], "argument --votes: 101: at most 100 (pcea.errors.MAX_VOTES"),
    (["export", "CKPT", "--onnx", "m.onnx", "--points", BIG], "argument --points: 1000000000000: at most"),
    (["synth", "--points", BIG], "argument --points: 1000000000000: at most 10,000,000"),
    (["prepare", "modelnet40", "--src", "x", "--out", "y", "--points", BIG], "at most 10,000,000"),
    (["synth", "--per-class", "-5"], "argument --per-class: -5: expected a positive integer"),
])
def test_counts_over_their_bound_are_usage_errors_before_any_work(checkpoint, capsys, argv, message):
    argv = [str({"CKPT": checkpoint[0], "CLOUD": checkpoint[1]}.get(arg, arg)) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "DATA", "--out", "OUT", "--points", BIG],
     f"pcea: error: command line: points={BIG}: at most 10,000,000 (pcea.errors.MAX_POINTS"),
    (["train", "--data", "DATA", "--out", "OUT", "--model-opt", "memory=2001-02-30"],
     "memory='2001-02-30': expected a positive integer"),
    (["train", "--data", "DATA", "--out", "OUT", "--model-opt", "in_channels=7"],
     "unknown model option(s) in_channels"),
    (["synth", "--out", "OUT", "--per-class", BIG],
     f"pcea: error: --per-class {BIG} x --classes 10 x --points 2048 needs at least"),
])
def test_counts_that_only_the_config_or_the_memory_bound_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = [str({"DATA": tmp_path / "no-data", "OUT": out}.get(arg, arg)) for arg in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("pcea: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_hostile_config_file_is_one_line(tmp_path, capsys):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)))
    for config, message in ((fifo, "is a FIFO, not a regular file"), ("/dev/zero", "is a device"),
                            (bomb, "anchors and aliases (&name, *name) are not allowed")):
        assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"pcea: error: {config}: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["meta", "xla", "ipu", "privateuseone", "cpu:1", "CUDA", "cuda:-1"])
def test_a_device_pcea_does_not_run_on_is_one_line_in_every_command(checkpoint, tmp_path, capsys, device):
    path, cloud = checkpoint
    expected = (f"pcea: error: --device {device!r}: not a device pcea runs on; expected auto, cpu, cuda, "
                "cuda:N or mps\n")
    for argv in (["classify", str(path), str(cloud), "--device", device],
                 ["eval", str(path), "--data", str(tmp_path), "--device", device],
                 ["train", "--data", "synthetic", "--out", str(tmp_path / "run"), "--device", device],
                 ["bench", "--device", device, "--only", "ops"]):
        assert main(argv) == 1, argv
        captured = capsys.readouterr()
        assert captured.err == expected, (argv, captured.err)
    assert not (tmp_path / "run").exists()


def test_devices_this_build_cannot_use_are_one_line():
    from pcea.engine.distributed import resolve_device

    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(pcea.PceaError, match=r"^--device cuda:0: CUDA is not available"):
            resolve_device("cuda:0")
    else:
        count = torch.cuda.device_count()
        with pytest.raises(pcea.PceaError, match=rf"^--device cuda:{count}: this machine has {count}"):
            resolve_device(f"cuda:{count}")
    if not torch.backends.mps.is_available():
        with pytest.raises(pcea.PceaError, match=r"^--device mps: MPS is not available"):
            resolve_device("mps")
    with pytest.raises(pcea.PceaError, match="not a device pcea runs on"):
        pcea.load_model("modelnet40", device="meta")


def test_eval_of_a_checkpoint_with_a_crafted_seed_is_one_line(checkpoint, tmp_path, capsys):
    from pcea.engine.checkpoint import load_checkpoint

    path, _ = checkpoint
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {**load_checkpoint(path), "train_config": {"seed": -1, "val_split": 0.25}})
    assert main(["eval", str(bad), "--data", str(tmp_path), "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert err == (f"pcea: error: {bad}: malformed checkpoint: its train_config seed=-1 is not a run's seed "
                   "(0 to 4294967295); use --split test or train\n")
    crafted = {"seed": 0, "split_seed": -1, "val_split": 0.25}
    save_checkpoint(bad, {**load_checkpoint(path), "train_config": crafted})
    assert main(["eval", str(bad), "--data", str(tmp_path), "--split", "val"]) == 1
    assert capsys.readouterr().err == (f"pcea: error: {bad}: malformed checkpoint: its train_config "
                                       "split_seed=-1 is not a run's seed (0 to 4294967295); use --split "
                                       "test or train\n")
