"""Two-process DistributedDataParallel training with the gloo backend on the CPU."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from engine_tiny import tiny_config

from pcea.engine.checkpoint import load_checkpoint
from pcea.engine.distributed import DistEnv, ShardSampler
from pcea.engine.train import Trainer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, data: str, out: str, scratch: str,
               recipe: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    lines: list[str] = []
    # 9 validation clouds: shards of 5 and 4, so the ranks run different numbers of eval batches.
    trainer = Trainer(tiny_config(data, epochs=1, batch_size=8, val_split=9 / 48, **recipe), out,
                      log=lines.append)
    results = trainer.run()
    torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()},
               Path(scratch) / f"rank{rank}.pt")
    torch.save({k: v.clone() for k, v in trainer.state.eval_model.state_dict().items()},
               Path(scratch) / f"rank{rank}.eval.pt")  # what was validated and saved: with --ema, the average
    (Path(scratch) / f"rank{rank}.json").write_text(json.dumps({"log": lines, "results": results}))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [{}, {"ema": 0.5, "balanced": True}], ids=["plain", "ema-balanced"])
def test_two_gloo_processes_train_one_model(tiny_h5, tmp_path, recipe):
    out, scratch = tmp_path / "ddp", tmp_path / "scratch"
    scratch.mkdir()
    mp.spawn(_rank_main, args=(2, _free_port(), str(tiny_h5), str(out), str(scratch), recipe), nprocs=2,
             join=True)

    for suffix in ("pt", "eval.pt"):
        rank0 = torch.load(scratch / f"rank0.{suffix}", weights_only=True)
        rank1 = torch.load(scratch / f"rank1.{suffix}", weights_only=True)
        assert rank0.keys() == rank1.keys()
        for key in rank0:  # parameters (DDP) and BatchNorm statistics (averaged) agree on both ranks
            assert torch.equal(rank0[key], rank1[key]), (suffix, key)
    evaluated = torch.load(scratch / "rank0.eval.pt", weights_only=True)
    saved = load_checkpoint(out / "best.pt")["model"]  # the one epoch's: the average with --ema
    assert all(torch.equal(saved[key], evaluated[key]) for key in evaluated)

    # Only rank 0 wrote files and logged; every file exists once, in the run directory.
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.pt", "config.yaml", "curves.png", "last.prev.pt", "last.pt", "metrics.jsonl",
                     "results.json"]
    log0 = json.loads((scratch / "rank0.json").read_text())
    log1 = json.loads((scratch / "rank1.json").read_text())
    assert log1["log"] == [] and any("x 2 processes" in line for line in log0["log"])
    assert log0["results"] == log1["results"]  # metrics were reduced: both ranks report the same

    checkpoint = load_checkpoint(out / "last.pt")
    for key in rank0:  # the saved model is the unwrapped module (no "module." prefix)
        assert key in checkpoint["model"]
    row = json.loads((out / "metrics.jsonl").read_text())
    # 39 training clouds, 19 per process after drop_last, 4 per process and step: 4 steps of 8 in all.
    assert 0 <= row["train_acc"] <= 1 and round(row["train_acc"] * 32, 6) == round(row["train_acc"] * 32)
    # Validation counts come from both shards: 9 clouds in all.
    assert round(row["val_oa"] * 9, 6) == round(row["val_oa"] * 9)
    assert any("39 train / 9 val / 16 test" in line for line in log0["log"])
    assert log0["results"]["num_test"] == 16


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(11, DistEnv(rank=rank, world_size=3))) for rank in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(11))
    assert [len(ShardSampler(11, DistEnv(rank=rank, world_size=3))) for rank in range(3)] == [4, 4, 3]
