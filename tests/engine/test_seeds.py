"""pcea.engine.seeds: one run per seed and the mean ± std table."""

from __future__ import annotations

import json
import math

import pytest
from engine_tiny import tiny_config

from pcea.engine.seeds import train_seeds
from pcea.engine.train import train
from pcea.errors import PceaFileError

pytestmark = pytest.mark.slow  # each test trains the tiny model for an epoch or more (seconds each)


def test_seeds_table_reports_mean_std_and_best(tiny_h5, tmp_path):
    lines: list[str] = []
    summary = train_seeds(tiny_config(tiny_h5, epochs=1, select_on="last"), tmp_path / "sweep", [0, 1],
                          log=lines.append)
    assert (tmp_path / "sweep" / "seed0" / "results.json").exists()
    assert (tmp_path / "sweep" / "seed1" / "results.json").exists()
    row = summary["rows"][0]
    assert row["metric"] == "test OA (last epoch)"
    values = [json.loads((tmp_path / "sweep" / f"seed{s}" / "results.json").read_text())["test"][0]["oa"]
              for s in (0, 1)]
    assert row["values"] == values
    assert row["mean"] == pytest.approx(sum(values) / 2)
    assert row["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert row["best"] == max(values)
    assert "mean ± std" in "\n".join(lines)
    assert json.loads((tmp_path / "sweep" / "seeds.json").read_text()) == summary


@pytest.mark.parametrize("damage", ["truncated", "empty list", "empty object", "wrong figures"])
def test_a_damaged_results_json_is_redone_on_rerun(tiny_h5, tmp_path, damage):
    """Issue 23 item 7: a rerun over seed1/results.json truncated or holding [] redid nothing and raised
    JSONDecodeError / TypeError; now the seed's final evaluation is redone from its weights."""
    config = tiny_config(tiny_h5, epochs=1, select_on="last")
    first = train_seeds(config, tmp_path / "sweep", [0, 1], log=lambda line: None)
    results = tmp_path / "sweep" / "seed1" / "results.json"
    text = results.read_text()
    results.write_text({"truncated": text[:len(text) // 2], "empty list": "[]", "empty object": "{}",
                        "wrong figures": '{"test": [{"protocol": "last epoch", "oa": "high"}]}'}[damage])
    lines: list[str] = []
    again = train_seeds(config, tmp_path / "sweep", [0, 1], log=lines.append)
    assert again == first  # the same weights give the same figures
    assert json.loads(results.read_text())["test"] == json.loads(text)["test"]
    assert any(f"{results} " in line and "redoing its final evaluation" in line for line in lines)


def test_init_weights_that_one_seed_would_refuse_are_refused_before_any_seed_trains(tiny_h5, tmp_path):
    """Seed 0 used to train in full before seed 1's run refused the --init weights (seed 0's hold-out)."""
    train(tiny_config(tiny_h5, epochs=1), tmp_path / "first", log=lambda line: None)
    config = tiny_config(tiny_h5, epochs=1, select_on="last", init=str(tmp_path / "first"))
    refusal = r"first.*--init: .*\(val_split 0.25, seed 0; this run: 0.25, seed 1\).*--split-seed 0$"
    with pytest.raises(PceaFileError, match=refusal):
        train_seeds(config, tmp_path / "sweep", [0, 1], log=lambda line: None)
    assert not (tmp_path / "sweep").exists()
    # With the source's hold-out kept in every seed, both train.
    kept = tiny_config(tiny_h5, epochs=1, select_on="last", init=str(tmp_path / "first"), split_seed=0)
    summary = train_seeds(kept, tmp_path / "sweep", [0, 1], log=lambda line: None)
    assert summary["seeds"] == [0, 1] and (tmp_path / "sweep" / "seed1" / "results.json").exists()
