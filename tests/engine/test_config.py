"""The training config: PCT defaults, YAML files, flag parsing and validation."""

from __future__ import annotations

import contextlib
import os
import re
import signal

import pytest

from pcea.engine.config import TrainConfig, load_config_file, parse_model_options, settings
from pcea.errors import MAX_POINTS, PceaError, PceaFileError, positive_int_problem, too_large_problem


def test_defaults_are_pcts_recipe():
    c = TrainConfig()
    assert (c.points, c.batch_size, c.epochs, c.lr, c.min_lr) == (1024, 32, 250, 0.01, 1e-4)
    assert (c.momentum, c.weight_decay, c.label_smoothing, c.augment) == (0.9, 5e-4, 0.2, "pct")
    assert (c.model, c.select_on, c.val_split, c.seed) == ("pcea", "val", 0.1, 0)


def test_yaml_round_trip_and_unknown_keys(tmp_path):
    config = TrainConfig(epochs=3, model_options={"memory": 32}, threads=2)
    path = tmp_path / "c.yaml"
    path.write_text(config.dump_yaml())
    assert TrainConfig.from_dict(load_config_file(path)) == config
    with pytest.raises(PceaError, match="command line: unknown setting.*batchsize"):
        TrainConfig.from_dict({"batchsize": 4}, source="command line")
    path.write_text("- just\n- a list\n")
    with pytest.raises(PceaFileError, match="c.yaml: expected a mapping"):
        load_config_file(path)
    path.write_text("epochs: [1,\n")
    with pytest.raises(PceaFileError, match="c.yaml: not valid YAML"):
        load_config_file(path)
    with pytest.raises(PceaFileError, match="missing.yaml: no such config file"):
        load_config_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 1}, "batch_size=1"),
    ({"val_split": 0.0}, "select_on='val': needs val_split > 0"),
    ({"select_on": "best"}, "select_on='best'"),
    ({"label_smoothing": 1.0}, "label_smoothing=1.0"),
    ({"epochs": 0}, "epochs=0"),
    ({"ema": 1.0}, r"ema=1.0: need 0 <= x < 1"),
    ({"ema": -0.1}, r"ema=-0.1: need 0 <= x < 1"),
])
def test_invalid_values_are_refused(values, message):
    with pytest.raises(PceaError, match=message):
        TrainConfig(**values)


def test_model_options_are_parsed_as_yaml():
    assert parse_model_options(["memory=32", "centers=[256, 128]", "pool=max+mean", "dropout=0.3"]) == {
        "memory": 32, "centers": [256, 128], "pool": "max+mean", "dropout": 0.3}
    with pytest.raises(PceaError, match="expected KEY=VALUE"):
        parse_model_options(["memory"])


@pytest.mark.parametrize("values, message", [
    ({"epochs": 2.5}, r"epochs=2.5: expected an integer"),
    ({"epochs": True}, r"epochs=True: expected an integer"),
    ({"normals": "no"}, r"normals='no': expected true or false"),
    ({"amp": 1}, r"amp=1: expected true or false"),
    ({"lr": float("inf")}, r"lr=inf: expected a finite number"),
    ({"lr": "0.1"}, r"lr='0.1': expected a finite number"),
    ({"seed": 2**64}, r"seed=18446744073709551616: need 0 <= seed <= 4294967295"),
    ({"seed": -1}, r"seed=-1: need 0 <= seed"),
    ({"threads": 100_000}, r"threads=100000: need 1 to \d+ on this machine"),
    ({"workers": 100_000}, r"workers=100000: need 0 to \d+ on this machine"),
    ({"model_options": {"memory": -1}}, r"memory=-1: expected a positive integer"),
    ({"model_options": {"num_classes": 3}}, r"unknown model option\(s\) num_classes"),
    ({"model": "pointnet"}, r"model='pointnet': expected one of 'pcea', 'pct', 'pct-sa'"),
    ({"points": 100}, r"need num_points >= centers\[0\]"),
])
def test_every_value_is_checked_once_for_type_and_range(values, message):
    with pytest.raises(PceaError, match=message):
        TrainConfig(**values)


def test_thread_and_worker_bounds_follow_the_machine(monkeypatch):
    import os

    from pcea.engine import config as config_module

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert (config_module.max_threads(), config_module.max_workers()) == (8, 8)
    assert TrainConfig(threads=8, workers=8).threads == 8
    with pytest.raises(PceaError, match=r"threads=9: need 1 to 8 on this machine \(2 CPUs"):
        TrainConfig(threads=9)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert config_module.max_workers() == 64 and config_module.max_threads() == 256


def test_yaml_exponent_numbers_are_numbers_and_the_summary_lists_changes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5E-5\nepochs: 3\n")  # PyYAML alone reads 1e-3 as a string
    config = TrainConfig.from_dict(load_config_file(path))
    assert (config.lr, config.weight_decay) == (0.001, 5e-5)
    summary = config.summary()
    assert summary.splitlines()[0].startswith("epochs=3  lr=0.001  weight_decay=5e-05")
    assert all(len(line) <= 100 for line in summary.splitlines())
    assert TrainConfig().summary() == "(none: PCT's recipe)"
    assert parse_model_options(["dropout=1e-1"]) == {"dropout": 0.1}


# -- hostile config files and option values (issue 23, item 2) --------------------------------

# "Billion laughs": nine levels of nine aliases each, about 540 bytes that expand to 9**9 strings.
ALIAS_BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
              + "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n"
                        for a, b in zip("abcdefgh", "bcdefghi", strict=True)))


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: SIGALRM raises in the test after ``seconds``."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("text, message", [
    (ALIAS_BOMB, "anchors and aliases .* are not allowed"),
    ("epochs: &n 3\nwarmup_epochs: *n\n", "anchors and aliases"),
    ("model_options: {memory: " + "[" * 5000 + "]" * 5000 + "}\n", "nested more than 20 levels deep"),
    ("seed: " + "9" * 5000 + "\n", "an integer of 5,000 characters"),
    ("epochs: [1,\n", "not valid YAML settings"),
    ("? [a, b]\n: 1\n", "not valid YAML settings"),  # an unhashable key
])
def test_hostile_yaml_is_one_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with _deadline(10), pytest.raises(PceaFileError, match=f"hostile.yaml: .*{message}"):
        load_config_file(path)


def test_an_impossible_date_is_a_string_the_settings_check_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 2001-02-30\nmodel_options: {memory: 2001-02-03}\n")
    values = load_config_file(path)
    assert values == {"seed": "2001-02-30", "model_options": {"memory": "2001-02-03"}}
    with pytest.raises(PceaError, match=r"c.yaml: seed='2001-02-30': expected an integer"):
        TrainConfig.from_dict(values, source=str(path))
    assert parse_model_options(["memory=2001-02-30"]) == {"memory": "2001-02-30"}
    with pytest.raises(PceaError, match=r"memory='2001-02-30': expected a positive integer"):
        TrainConfig(model_options=parse_model_options(["memory=2001-02-30"]))


@pytest.mark.parametrize("value, message", [
    ("[" * 5000, "nested more than 20 levels"),
    ("1" * 5000, "an integer of 5,000 characters"),
    ("*a", "anchors and aliases"),
    ("[1, 2", "expected ',' or ']'"),
])
def test_hostile_model_option_values_are_one_error_naming_the_option(value, message):
    with pytest.raises(PceaError, match=rf"^--model-opt 'memory=.{{0,50}}(\.\.\.)?': cannot parse the value "
                                        rf"\(.*{re.escape(message)}"):
        parse_model_options([f"memory={value}"])


def test_config_must_be_a_small_regular_file(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading one with no writer blocks for ever
    with _deadline(10), pytest.raises(PceaFileError, match="fifo.yaml: is a FIFO, not a regular file"):
        load_config_file(fifo)
    with _deadline(10), pytest.raises(PceaFileError, match="/dev/zero: is a device, not a regular file"):
        load_config_file("/dev/zero")
    with pytest.raises(PceaFileError, match=f"{tmp_path.name}: is a directory, expected a config file"):
        load_config_file(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)  # 2 MB of comments: valid YAML, but no config is that size
    with pytest.raises(PceaFileError, match=r"big.yaml: 2,000,000 bytes, over the 1,048,576-byte limit"):
        load_config_file(big)


# -- issue 24 item 1: each setting described once, beside its field -----------------------------

def test_every_setting_has_help_a_group_and_a_type_check():
    from pcea.engine import config as config_module

    assert [s.name for s in settings()] == TrainConfig.field_names()
    groups = {config_module.DATA, config_module.OPTIMISATION, config_module.AUGMENTATION,
              config_module.SELECTION, config_module.RUNNING}
    for setting in settings():
        assert len(setting.help) > 10 and setting.group in groups, setting.name
    # Every kind of annotation TrainConfig uses, each with its wording.
    assert {s.expected for s in settings()} == {
        "a non-empty string", "a mapping of model settings, e.g. {memory: 32}", "an integer", "true or false",
        "'sgd' or 'adamw'", "a finite number", "'pct' or 'none'", "a non-empty string or null",
        "'val', 'test' or 'last'", "an integer or null"}


@pytest.mark.parametrize("annotation", [list[int], bytes, int | str, "int"])
def test_a_field_type_without_a_check_fails_at_import(annotation):
    from pcea.engine.config import _kind

    with pytest.raises(TypeError, match="no type check for the annotation"):
        _kind(annotation)


@pytest.mark.parametrize("setting", settings(), ids=lambda s: s.name)
def test_a_value_of_the_wrong_type_is_refused_in_one_wording(setting):
    value = 2.5 if setting.expected != "a finite number" else "x"
    with pytest.raises(PceaError) as error:
        TrainConfig(**{setting.name: value})
    assert str(error.value) == f"{setting.name}={value!r}: expected {setting.expected}"


def test_counts_are_worded_as_every_count_in_pcea():
    with pytest.raises(PceaError) as error:
        TrainConfig(epochs=0)
    assert str(error.value) == positive_int_problem("epochs", 0)
    with pytest.raises(PceaError) as error:
        TrainConfig(points=MAX_POINTS + 1)
    assert str(error.value) == f"points={MAX_POINTS + 1}: {too_large_problem(MAX_POINTS)}"
