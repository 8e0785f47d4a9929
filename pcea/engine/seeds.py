"""``pcea train --seeds 0,1,2``: one run per seed and a mean ± std table of the test figures."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pcea.atomic import write_atomic
from pcea.data import dataset_class_names
from pcea.engine.checkpoint import open_checkpoint
from pcea.engine.config import TrainConfig
from pcea.engine.distributed import DistEnv
from pcea.engine.run import refuse_another_holdout
from pcea.engine.splits import holdout_seed
from pcea.engine.train import train
from pcea.errors import PceaError, PceaFileError

__all__ = ["format_seed_table", "results_problem", "summarise_seeds", "train_seeds"]

def train_seeds(config: TrainConfig, out: str | os.PathLike, seeds: list[int], *, force: bool = False,
                log: Callable[[str], None] = print) -> dict:
    """Train one run per seed in ``out/seed<S>`` and summarise each figure as mean ± std and best.

    A seed whose run directory already holds a finished run (results.json) is
    not trained again, so an interrupted sweep continues where it stopped.

    Returns:
        {"seeds": [...], "rows": [{"metric", "values", "mean", "std", "best"}]}, also
        written to ``out/seeds.json``; the table is logged.

    Raises:
        PceaFileError: before any seed trains, when ``config.init`` names weights trained on
            the same classes that one of the seeds' validation hold-outs would score on
            (pass ``split_seed`` to hold out their clouds in every seed).
    """
    out = Path(out)
    # A seed with a last.pt resumes (or is finished): it has its own weights, --init is not read.
    _check_init_holdouts(config, [seed for seed in seeds
                                  if force or not (out / f"seed{seed}" / "last.pt").exists()])
    runs = []
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        done = run_dir / "results.json"
        if done.exists() and not force:
            problem = results_problem(done)
            if problem is None:
                log(f"seed {seed}: already finished, reading {done}")
                runs.append(json.loads(done.read_text()))
                continue
            # Truncated or emptied (a disk that filled, a hand edit): the weights are intact, so the
            # final evaluation is redone by resuming the finished run.
            log(f"seed {seed}: {done} {problem}; redoing its final evaluation")
            try:
                done.unlink()
            except OSError as err:
                raise PceaFileError(done, f"{problem}; cannot remove it: {err.strerror or err}") from None
        resume = (run_dir / "last.pt").exists() and not force
        log(f"seed {seed}: {'resuming' if resume else 'training'} {run_dir}")
        seeded = TrainConfig.from_dict({**config.to_dict(), "seed": seed})
        result = train(None if resume else seeded, run_dir, resume=resume, force=force, log=log)
        if result.get("interrupted"):
            raise PceaError(f"seed {seed} was interrupted; rerun the same command to continue")
        problem = _figures_problem(result)
        if problem is not None:  # never a traceback from summarising what a run returned
            raise PceaFileError(done, f"{problem}; delete it and rerun the same command to redo seed {seed}")
        runs.append(result)
    summary = summarise_seeds(seeds, runs)
    if DistEnv.from_env().is_main:
        write_atomic(out / "seeds.json", json.dumps(summary, indent=2) + "\n")
        log(format_seed_table(summary))
    return summary


def _check_init_holdouts(config: TrainConfig, seeds: list[int]) -> None:
    """Raise now, before any seed trains, what a seed's own run would raise later
    (:func:`pcea.engine.run.refuse_another_holdout`): without ``split_seed`` each seed draws its own
    hold-out, so ``--init`` weights trained on the same data match at most one of them.

    ``seeds`` are those still to start; the data counts as the same when its class names
    (read from its lists or folders, no cloud loaded) are the weights' own.
    """
    if not (config.init and config.val_split > 0 and seeds) or config.data == "synthetic":
        return  # the synthetic set is written on first use; each run's own check still applies
    source, payload, path = open_checkpoint(config.init)
    names = [str(name) for name in source.class_names]
    if names != dataset_class_names(config.data):
        return  # other data: its hold-out says nothing of these runs'
    for seed in seeds:
        holdout = (config.val_split, holdout_seed({**config.to_dict(), "seed": seed}))
        refuse_another_holdout(path, payload, len(names), holdout)


def results_problem(path: Path) -> str | None:
    """Why a run's ``results.json`` cannot be summarised (unreadable, not JSON, no test figures), or None."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    except ValueError:  # JSONDecodeError, UnicodeDecodeError: truncated or garbled
        return "is damaged (not JSON)"
    return _figures_problem(results)


def _figures_problem(results: object) -> str | None:
    entries = results.get("test") if isinstance(results, dict) else None
    if not (isinstance(entries, list) and all(
            isinstance(entry, dict) and isinstance(entry.get("protocol"), str)
            and all(isinstance(entry.get(key), int | float) and not isinstance(entry.get(key), bool)
                    for key in ("oa", "macc")) for entry in entries)):
        return "holds no test figures (expected {\"test\": [{\"protocol\", \"oa\", \"macc\"}, ...]})"
    return None


def summarise_seeds(seeds: list[int], runs: list[dict]) -> dict:
    """Mean, sample standard deviation (n - 1) and best of every test figure over seeds."""
    rows = []
    protocols = {tuple(entry["protocol"] for entry in run["test"]) for run in runs}
    if len(protocols) > 1:
        raise PceaError(f"the seeds' runs report different test figures ({' / '.join(map(str, protocols))}); "
                        "train them with the same settings")
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

