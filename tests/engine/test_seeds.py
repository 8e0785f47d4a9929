"""pcea.engine.seeds: one run per seed and the mean ± std table."""

from __future__ import annotations

import json
import math

import pytest
from engine_tiny import tiny_config

from pcea.engine.seeds import train_seeds


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
