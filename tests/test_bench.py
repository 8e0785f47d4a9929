"""pcea bench on a tiny setting: it runs and its JSON has the expected fields (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch

import pcea
from pcea.bench import BenchConfig, format_report, measure_model, run_bench
from pcea.bench_reference import ReferencePCT
from pcea.cli import main
from pcea.errors import PceaError

# The training step is tested in test_measure_model_train_step.
TINY = BenchConfig(models=("pcea",), batch_size=2, points=(512,), attention=("external", "offset"),
                   attention_batch=2, fps=((2, 128, 16),), repeats=1, warmup=0, reference=True,
                   precision=("fp32", "bf16"), train=False, isolate=False)


def positive(row: dict, keys: list[str]) -> None:
    for key in keys:
        assert row[key] > 0, (key, row)


@pytest.mark.slow
def test_run_bench_tiny_in_process():
    result = run_bench(TINY)
    assert set(result["machine"]) >= {"cpu", "cores", "threads", "torch", "allocator", "date"}
    rows = {(row["model"], row["precision"]): row for row in result["models"]}
    assert set(rows) == {(m, p) for m in ("pcea", "reference") for p in ("fp32", "bf16")}
    models = {model: row for (model, prec), row in rows.items() if prec == "fp32"}
    positive(models["pcea"], ["infer_clouds_s", "plain_clouds_s", "infer_peak_mb", "plain_peak_mb", "params"])
    positive(models["reference"], ["infer_clouds_s", "infer_peak_mb"])
    positive(rows[("pcea", "bf16")], ["infer_clouds_s", "plain_clouds_s"])
    assert "plain_clouds_s" not in models["reference"]  # the reference is only ever plain
    assert "train_clouds_s" not in models["pcea"]
    assert models["reference"]["params"] == 2_876_136  # PCT's size, like the pct preset
    interleaved = {(row["model"], row["precision"]): row for row in result["interleaved"]}
    assert set(interleaved) == set(rows)
    positive(interleaved[("pcea", "fp32")], ["infer_clouds_s", "infer_vs_reference"])
    for prec in ("fp32", "bf16"):
        assert interleaved[("reference", prec)]["infer_vs_reference"] == 1.0
    bf16 = interleaved[("pcea", "bf16")]  # its two ratios: to the bf16 and to the fp32 reference
    assert bf16["infer_vs_reference"] == pytest.approx(
        bf16["infer_clouds_s"] / interleaved[("reference", "bf16")]["infer_clouds_s"])
    assert bf16["infer_vs_reference_fp32"] == pytest.approx(
        bf16["infer_clouds_s"] / interleaved[("reference", "fp32")]["infer_clouds_s"])
    kinds = [(r["attention"], r["tokens"]) for r in result["attention"]]
    assert kinds == [("external", 512), ("offset", 512)]
    for row in result["attention"]:
        positive(row, ["ms", "tokens_s", "peak_mb"])
    ops = {row["op"]: row for row in result["ops"]}
    assert set(ops) == {"fps", "knn"}
    for row in ops.values():
        positive(row, ["torch_ms"] + (["fast_ms"] if "fast_ms" in row else []))
    report = format_report(result)
    assert "allocator" in report and "reference" in report and "fps" in report and "bf16" in report


def test_measure_model_train_step(tiny_options):
    tiny = {key: value for key, value in tiny_options.items() if key != "num_points"}
    row = measure_model({"model": "pcea", "points": 128, "batch_size": 2, "train": True, "device": "cpu",
                         "repeats": 1, "warmup": 0, "overrides": {"num_classes": 4, **tiny}})
    positive(row, ["train_clouds_s", "train_ms", "train_peak_mb", "infer_clouds_s", "plain_clouds_s"])
    assert row["train_user_ms"] >= 0 and row["train_sys_ms"] >= 0


@pytest.mark.slow
def test_cli_bench_isolated_child_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--only", "attention", "--attention", "external", "--points", "256",
                 "--attention-batch", "2", "--repeats", "1", "--warmup", "0", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    (row,) = result["attention"]
    assert row["attention"] == "external" and row["tokens"] == 256
    positive(row, ["ms", "peak_mb"])
    assert result["models"] == [] and result["ops"] == [] and result["interleaved"] == []
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--model", "pointnet"], "unknown model"),
        (["bench", "--attention", "linear"], "unknown attention"),
        (["bench", "--points", "128"], "at least 512 points"),
        (["bench", "--fps", "2x64:100"], "1 <= m <= N"),
        (["bench", "--only", "model"], "unknown section"),
        (["bench", "--weights", "no-such-weights"], "no such weights no-such-weights"),
        (["bench", "--only", ""], "unknown section(s) (none)"),  # not the defaults, silently
        (["bench", "--only", "models", "--weights", "modelnet40"], "--only models,weights"),
    ],
)
def test_bench_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("pcea: error:") and message in err and err.count("\n") == 1


def test_cli_bench_weights_times_each_at_its_cards_size(tiny_checkpoint, tmp_path, capsys):
    """--weights alone runs only the weights section, each model at the input size it was trained with."""
    out = tmp_path / "weights.json"
    names = ["modelnet40", "modelnet40-aligned", str(tiny_checkpoint)]
    assert main(["bench", "--weights", ",".join(names), "--batch-size", "1", "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--no-isolate", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["models"] == [] and result["attention"] == [] and result["ops"] == []
    rows = result["weights"]
    assert [row["weights"] for row in rows] == names
    for row, name in zip(rows[:2], names[:2], strict=True):
        card = pcea.weights.builtin_card(name)
        assert row["points"] == card["num_points"]  # 512 and 1024: the size, not --points
        positive(row, ["ms_per_cloud", "infer_clouds_s", "infer_peak_mb"])
    assert rows[2]["points"] == pcea.load_model(tiny_checkpoint).config.num_points
    report = capsys.readouterr().out
    assert "cost relative to modelnet40" in report and "1.00x" in report
    assert str(tiny_checkpoint) + " " in report  # a long name keeps its column


def test_bench_usage_error_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--fps", "32by1024"])
    assert exit_info.value.code == 2


def test_unwritable_json_names_the_file(tmp_path, capsys):
    target = tmp_path / "missing" / "out.json"
    assert main(["bench", "--only", "ops", "--fps", "2x64:8", "--points", "64", "--repeats", "1",
                 "--warmup", "0", "--json", str(target)]) == 1
    assert str(target) in capsys.readouterr().err


def test_bench_config_validate_direct():
    with pytest.raises(PceaError, match="repeats=0: expected a positive integer"):
        BenchConfig(repeats=0).validate()
    with pytest.raises(PceaError, match="precision.*fp16.*fp32, bf16"):
        BenchConfig(precision=("fp16",)).validate()


def test_reference_matches_pct_preset_size_and_runs():
    reference = ReferencePCT(num_classes=40)
    preset = pcea.build_model("pct")
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in preset.parameters())
    logits = reference.eval()(torch.randn(2, 512, 3))
    assert logits.shape == (2, 40) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_plot_bench_draws_the_recorded_attention_curves(tmp_path):
    """scripts/plot_bench.py on the JSON that docs/benchmarks.md shows: a PNG, and a clear
    one-line error for a file without attention results."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "plot_bench.py"
    out = tmp_path / "attention.png"
    done = subprocess.run([sys.executable, str(script), str(root / "docs/bench/s3_attention.json"), str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = subprocess.run([sys.executable, str(script), str(root / "tests/fixtures/s2_models_r5.json"),
                           str(tmp_path / "none.png")], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "no attention results" in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "none.png").exists()
