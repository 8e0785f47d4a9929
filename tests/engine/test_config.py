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
