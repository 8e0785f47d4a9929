"""``--ema``: a moving average of the weights, what a run validates, tests and saves (issue 21)."""

from __future__ import annotations

import json

import pytest
import torch
from engine_tiny import tiny_config
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.optim.swa_utils import AveragedModel

import pcea.engine.train as train_module
from pcea.cli import main
from pcea.engine.checkpoint import load_checkpoint, save_checkpoint
from pcea.engine.run import ema_update
from pcea.engine.train import Trainer, train
from pcea.errors import PceaError, PceaFileError

pytestmark = pytest.mark.slow  # each test trains the tiny model for an epoch or more (seconds each)
QUIET = {"log": lambda line: None}


def _trained_with_every_step_recorded(config, out, monkeypatch) -> list[dict]:
    """Train ``config`` into ``out``; returns the model's state (weights and BatchNorm statistics)
    right after every optimiser step, as the EMA sees it."""
    runs, states = [], []
    build_run = train_module.build_run

    def recorded_build_run(*args, **kwargs):
        runs.append(build_run(*args, **kwargs))
        return runs[-1]

    def after_step(optimizer, args, kwargs) -> None:
        states.append({key: value.detach().clone() for key, value in runs[-1].model.state_dict().items()})

    monkeypatch.setattr(train_module, "build_run", recorded_build_run)
    handle = register_optimizer_step_post_hook(after_step)
    try:
        train(config, out, **QUIET)
    finally:
        handle.remove()
        monkeypatch.undo()
    return states


def test_best_pt_holds_the_average_and_training_is_what_it_was_without_it(tiny_h5, tmp_path, monkeypatch,
                                                                          capsys):
    decay = 0.8
    config = tiny_config(tiny_h5, ema=decay, select_on="last")
    states = _trained_with_every_step_recorded(config, tmp_path / "ema", monkeypatch)
    assert len(states) == 2 * 4  # 2 epochs of 36 training clouds in batches of 8

    # The average by hand: every step's state weighted by decay^(steps after it), normalised.
    weights = [decay ** (len(states) - 1 - s) for s in range(len(states))]
    expected = {key: sum(w * state[key] for w, state in zip(weights, states, strict=True)) / sum(weights)
                if value.is_floating_point() else value for key, value in states[-1].items()}
    best, last = load_checkpoint(tmp_path / "ema" / "best.pt"), load_checkpoint(tmp_path / "ema" / "last.pt")
    floats = [key for key, value in expected.items() if value.is_floating_point()]
    assert any("running_var" in key for key in floats)  # BatchNorm statistics are averaged too
    for key in floats:
        torch.testing.assert_close(best["model"][key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(last["model"][key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    # And the check can fail: the average is not the last step's weights.
    assert not torch.allclose(best["model"]["head.4.weight"], states[-1]["head.4.weight"])

    # last.pt keeps the weights being trained beside the average, for --resume.
    assert last["ema_updates"] == len(states)
    for key, value in states[-1].items():
        assert torch.equal(last["train_model"][key], value), key

    # The average only watches: the weights trained are those of a run without it, bit for bit.
    train(tiny_config(tiny_h5, select_on="last"), tmp_path / "plain", **QUIET)
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")
    assert "train_model" not in plain and "ema_updates" not in plain
    for key, value in plain["model"].items():
        assert torch.equal(last["train_model"][key], value), key

    # Validation measured the average: the weights pcea eval reads from best.pt, on the same clouds.
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ema"), "--split", "val", "--device", "cpu", "--json", "--out",
                 str(tmp_path / "eval")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"]["single_pass"]["overall_accuracy"] == pytest.approx(
        last["metrics"]["history"][-1]["val_oa"])


def test_the_average_forgets_the_first_state_as_fast_as_any_other():
    # From random weights the first step's state is the worst one; torch's plain EMA keeps decay^t of
    # it (at 0.998 after 4 ModelNet40 epochs, 11 % of BatchNorm variances near 1: one class predicted).
    averaged = AveragedModel(nn.Linear(1, 1, bias=False), multi_avg_fn=ema_update(0.99), use_buffers=True)
    source = nn.Linear(1, 1, bias=False)
    values = [100.0] + [1.0] * 499                    # one outlying first state, then a constant
    for value in values:
        source.weight.data.fill_(value)
        averaged.update_parameters(source)
    weights = [0.99 ** (len(values) - 1 - s) for s in range(len(values))]
    expected = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    assert averaged.module.weight.item() == pytest.approx(expected, rel=1e-5)
    assert averaged.module.weight.item() < 1.01  # 1.0066; the plain EMA's 1 + 99 * 0.99^499 is 1.66


def test_resume_refuses_to_add_ema_and_an_older_last_pt_resumes_without_it(tiny_h5, tmp_path):
    out = tmp_path / "old"
    train(tiny_config(tiny_h5), out, stop_after=1, **QUIET)
    for name in ("last.pt", "last.prev.pt"):  # as written before ema and balanced existed
        payload = load_checkpoint(out / name)
        payload["train_config"] = {k: v for k, v in payload["train_config"].items()
                                   if k not in ("ema", "balanced")}
        save_checkpoint(out / name, payload)
    with pytest.raises(PceaError, match=r"cannot change ema \(only data, device"):
        Trainer(None, out, resume=True, overrides={"ema": 0.999})
    assert main(["train", "--resume", str(out), "--ema", "0.999"]) == 1
    # The defaults are no change; the run continues as it started.
    assert train(None, out, resume=True, overrides={"ema": 0.0, "balanced": False}, **QUIET)["epochs"] == 2


def test_a_last_pt_of_an_ema_run_without_its_training_weights_is_refused_or_falls_back(tiny_h5, tmp_path):
    out = tmp_path / "ema"
    train(tiny_config(tiny_h5, ema=0.9), out, stop_after=1, **QUIET)
    good = load_checkpoint(out / "last.pt")
    save_checkpoint(out / "last.pt", {**good, "train_model": "weights"})  # wrong type: last.prev.pt is used
    lines: list[str] = []
    trainer = Trainer(None, out, resume=True, log=lines.append)
    assert trainer.resume_path.name == "last.prev.pt"
    assert any("'train_model' is not a mapping of parameter names to tensors" in line for line in lines)

    save_checkpoint(out / "last.pt", {k: v for k, v in good.items() if k != "train_model"})
    with pytest.raises(PceaFileError, match=r"last.pt: malformed checkpoint: a run with ema=0.9 but no "
                                            r"'train_model' or 'ema_updates' entry"):
        train(None, out, resume=True, **QUIET)


def test_an_interrupted_and_resumed_ema_run_with_balanced_sampling_ends_bit_identical(tiny_h5, tmp_path):
    # As test_train's test_interrupted_and_resumed_run_ends_bit_identical, for the state --ema adds.
    config = tiny_config(tiny_h5, epochs=3, ema=0.9, balanced=True)
    train(config, tmp_path / "straight", **QUIET)
    assert train(config, tmp_path / "resumed", stop_after=1, **QUIET)["epochs_completed"] == 1
    train(None, tmp_path / "resumed", resume=True, **QUIET)

    straight, resumed = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert straight["ema_updates"] == resumed["ema_updates"] == 3 * 4
    for part in ("model", "train_model"):
        assert straight[part].keys() == resumed[part].keys()
        for key in straight[part]:
            assert torch.equal(straight[part][key], resumed[part][key]), (part, key)
    rows = [[{k: v for k, v in json.loads(line).items() if k != "time_s"}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("straight", "resumed")]
    assert rows[0] == rows[1]
