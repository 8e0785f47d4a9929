"""The training config: PCT defaults, YAML files, flag parsing and validation."""

from __future__ import annotations

import pytest

from pcea.engine.config import TrainConfig, load_config_file, parse_model_options
from pcea.errors import PceaError, PceaFileError


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
    with pytest.raises(PceaFileError, match="missing.yaml: cannot read"):
        load_config_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 1}, "batch_size=1"),
    ({"val_split": 0.0}, "select_on='val' needs val_split > 0"),
    ({"select_on": "best"}, "select_on='best'"),
    ({"label_smoothing": 1.0}, "label_smoothing=1.0"),
    ({"epochs": 0}, "epochs=0"),
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
