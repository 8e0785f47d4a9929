"""``pcea train --seeds 0,1,2``: one run per seed and a mean ± std table of the test figures."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pcea.atomic import write_atomic
from pcea.engine.config import TrainConfig
from pcea.engine.distributed import DistEnv
from pcea.engine.train import train
from pcea.errors import PceaError

__all__ = ["format_seed_table", "summarise_seeds", "train_seeds"]

def train_seeds(config: TrainConfig, out: str | os.PathLike, seeds: list[int], *, force: bool = False,
                log: Callable[[str], None] = print) -> dict:
    """Train one run per seed in ``out/seed<S>`` and summarise each figure as mean ± std and best.

    A seed whose run directory already holds a finished run (results.json) is
    not trained again, so an interrupted sweep continues where it stopped.

    Returns:
        {"seeds": [...], "rows": [{"metric", "values", "mean", "std", "best"}]}, also
        written to ``out/seeds.json``; the table is logged.
    """
    out = Path(out)
    runs = []
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        done = run_dir / "results.json"
        if done.exists() and not force:
            log(f"seed {seed}: already finished, reading {done}")
            runs.append(json.loads(done.read_text()))
            continue
        resume = (run_dir / "last.pt").exists() and not force
        log(f"seed {seed}: {'resuming' if resume else 'training'} {run_dir}")
        seeded = TrainConfig.from_dict({**config.to_dict(), "seed": seed})
        result = train(None if resume else seeded, run_dir, resume=resume, force=force, log=log)
        if result.get("interrupted"):
            raise PceaError(f"seed {seed} was interrupted; rerun the same command to continue")
        runs.append(result)
    summary = summarise_seeds(seeds, runs)
    if DistEnv.from_env().is_main:
        write_atomic(out / "seeds.json", json.dumps(summary, indent=2) + "\n")
        log(format_seed_table(summary))
    return summary


def summarise_seeds(seeds: list[int], runs: list[dict]) -> dict:
    """Mean, sample standard deviation (n - 1) and best of every test figure over seeds."""
    rows = []
    for entry_index, entry in enumerate(runs[0]["test"]):
        for key, name in (("oa", "OA"), ("macc", "mAcc")):
            values = [run["test"][entry_index][key] for run in runs]
            rows.append({
                "metric": f"test {name} ({entry['protocol']})",
                "values": values,
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "best": float(np.max(values)),
            })
    return {"seeds": list(seeds), "rows": rows}


def format_seed_table(summary: dict) -> str:
    seeds = summary["seeds"]
    header = f"{'metric':<30} {'mean ± std':>17} {'best':>8}  "
    header += "  ".join(f"{'seed ' + str(s):>8}" for s in seeds)
    lines = [header, "-" * len(header)]
    for row in summary["rows"]:
        mean_std = f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f}"
        values = "  ".join(f"{100 * v:>8.2f}" for v in row["values"])
        lines.append(f"{row['metric']:<30} {mean_std:>17} {100 * row['best']:>8.2f}  {values}")
    lines.append(f"(percent; std over {len(seeds)} seeds with n - 1; 'best' is the best single seed, "
                 "as papers often report)")
    return "\n".join(lines)

