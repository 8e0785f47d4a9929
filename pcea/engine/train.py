"""The training loop behind ``pcea train``: data, optimiser, selection, checkpoints, resume.

What one run writes is listed in :mod:`pcea.engine.rundir`; the data of a run
(validation split, augmentation) is :mod:`pcea.engine.splits`, and
``--seeds`` sweeps are :mod:`pcea.engine.seeds` (which calls :func:`train`; the
command line, :mod:`pcea.cli`, picks one or the other).

Resuming is exact: every epoch's shuffling and augmentation depend only on
(seed, epoch, sample), and the checkpoint holds the optimiser, scheduler and
RNG states, so on the CPU an interrupted and resumed run ends with the same
weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from pcea.atomic import write_atomic
from pcea.data import open_dataset
from pcea.data.corruptions import Occlude
from pcea.data.synth import ensure_synthetic
from pcea.data.transforms import Compose, RotateUp, Transform, pct_train_transform
from pcea.engine.checkpoint import (
    MODEL_KEYS,
    RESUME_KEYS,
    check_resumed_state,
    load_checkpoint,
    load_latest,
    model_payload,
    open_checkpoint,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pcea.engine.config import RUNTIME_KEYS, TrainConfig, load_config_file, max_threads, max_workers
from pcea.engine.distributed import DistEnv, ShardSampler, average_batchnorm_buffers, resolve_device
from pcea.engine.metrics import accuracy_from_counts
from pcea.engine.rundir import check_run_dir, prepare_run_dir, run_state, write_curves
from pcea.engine.splits import AugmentedSubset, epoch_seed, split_train_val
from pcea.errors import MissingSplitError, PceaError, PceaFileError
from pcea.fast import accelerate
from pcea.model import build_model
from pcea.precision import use_amp
from pcea.runtime import keep_freed_memory

__all__ = ["PROTOCOLS", "Trainer", "train"]

PROTOCOLS = {"val": "best on val", "test": "best on test", "last": "last epoch"}
def _format_pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


class warmup_cosine:  # noqa: N801 (a picklable lr_lambda, so the scheduler's state saves)
    """LambdaLR factor at step t: linear from 0.01 to 1 over ``warmup`` steps, then cosine down
    to ``floor`` at step ``total``."""

    def __init__(self, total: int, warmup: int, floor: float):
        self.total, self.warmup, self.floor = max(total, 1), warmup, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.01 + 0.99 * step / self.warmup
        progress = min(1.0, (step - self.warmup) / max(self.total - self.warmup, 1))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_transform(config: TrainConfig) -> Transform | None:
    """The per-cloud training augmentation of a recipe: occlusion, then yaw, then PCT's.

    With ``yaw`` and ``occlusion`` at 0 this is exactly PCT's augmentation (the same draws
    from the same generator), so older recipes train as before.
    """
    steps: list[Transform] = []
    if config.occlusion > 0:
        steps.append(Occlude(config.occlusion))
    if config.yaw > 0:
        steps.append(RotateUp("y", math.radians(config.yaw)))  # pcea's frame is y-up
    if config.augment == "pct":
        steps.extend(pct_train_transform().transforms)
    return Compose(steps) if steps else None


def init_weights(model: nn.Module, source: str, class_names: list[str],
                 log: Callable[[str], None] = print) -> None:
    """Load the weights of checkpoint ``source`` into ``model`` (``--init``), for fine-tuning.

    Every layer is copied when the source was trained on the same classes in the same
    order; otherwise every layer but the classifier's last Linear, which keeps its fresh
    initialisation (timm's ``reset_classifier`` convention). The frame is checked by
    :func:`pcea.engine.checkpoint.open_checkpoint` (a model of another frame is refused).

    Raises:
        PceaFileError: the source cannot be opened, or its layers do not fit ``model``.
    """
    source_model, _, path = open_checkpoint(source)
    state = source_model.state_dict()
    same_classes = [str(name) for name in source_model.class_names] == list(class_names)
    if not same_classes:
        last = f"head.{len(model.head) - 1}."
        state = {key: value for key, value in state.items() if not key.startswith(last)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise PceaFileError(path, f"--init: its layers do not fit this model ({first})") from None
    if unexpected or (missing and same_classes) or any(not key.startswith("head.") for key in missing):
        raise PceaFileError(path, f"--init: its layers do not fit this model (missing {len(missing)}, "
                                  f"unexpected {len(unexpected)} tensors)")
    what = "every layer" if same_classes else (
        f"every layer but the classifier ({len(source_model.class_names)} classes -> {len(class_names)})")
    log(f"init: {what} from {path}")


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks after every step; a second SIGINT aborts."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    """One training run. ``Trainer(config, out).run()`` trains and returns the results dict.

    Args:
        config: the recipe; ignored when resuming (the run's own config is used,
            with only its runtime options, :data:`pcea.engine.config.RUNTIME_KEYS`,
            taken from ``overrides``).
        out: the run directory.
        resume: continue the run in ``out`` from ``last.pt`` (or ``last.prev.pt``).
        force: start over in a directory that already holds a run.
        overrides: with ``resume``, runtime options to change.
        log: where progress lines go (rank 0 only).
        stop_after: stop (as if interrupted) after this many completed epochs;
            used by the resume tests.
    """

    def __init__(self, config: TrainConfig | None, out: str | os.PathLike, *, resume: bool = False,
                 force: bool = False, overrides: dict | None = None,
                 log: Callable[[str], None] = print, stop_after: int | None = None):
        self.env = DistEnv.from_env()
        self.out = Path(out)
        self.resume = resume
        self.force = force
        self._log = log
        self.stop_after = stop_after
        self.resume_payload: dict | None = None
        self.resume_path: Path | None = None
        self.lock = None
        self._curves_ok = False
        if resume:
            config = self._load_resume_config(overrides or {})
        elif config is None:
            raise PceaError("no config given")
        self.config = config
        self.model: nn.Module | None = None

    def log(self, message: str) -> None:
        if self.env.is_main:
            self._log(message)

    def _load_resume_config(self, overrides: dict) -> TrainConfig:
        last = self.out / "last.pt"
        if not last.exists() and not previous_path(last).exists():
            if run_state(self.out) != "unstarted":
                raise PceaFileError(self.out, "no run to resume here (no last.pt)")
            # Stopped before its first checkpoint was written: nothing was trained, start it again.
            source = self.out / "config.yaml"
            values = load_config_file(source)
            self.log(f"note: {self.out} was stopped before its first checkpoint; starting it from scratch "
                     "with its config.yaml")
        else:
            used, payload, problems = load_latest(last, require=RESUME_KEYS)
            for problem in problems:
                self.log(f"warning: {problem}")
            if problems:
                self.log(f"resuming from the previous checkpoint {used} instead")
            self.resume_payload, self.resume_path = payload, used
            values, source = dict(payload["train_config"]), f"{used} (train_config)"
        changed = sorted(k for k, v in overrides.items() if k not in RUNTIME_KEYS and v != values.get(k))
        if changed:
            raise PceaError(f"--resume continues {self.out} with its own recipe; "
                            f"cannot change {', '.join(changed)} (only {', '.join(RUNTIME_KEYS)})")
        values.update({k: v for k, v in overrides.items() if k in RUNTIME_KEYS})
        # A run from a larger machine: its thread and worker counts are only runtime options.
        for key, bound in (("threads", max_threads()), ("workers", max_workers())):
            if key not in overrides and isinstance(values.get(key), int) and values[key] > bound:
                self.log(f"note: {key}={values[key]} is more than this machine allows; using {bound}")
                values[key] = bound
        return TrainConfig.from_dict(values, source=str(source))

    # -- set-up ---------------------------------------------------------------

    def _datasets(self):
        config = self.config
        data = config.data
        if data == "synthetic":
            if self.env.is_main:
                data = str(ensure_synthetic())
            self.env.barrier()
            data = str(ensure_synthetic())
        kwargs = {"num_points": config.points, "normals": config.normals, "seed": config.seed}
        train_base = open_dataset(data, split="train", transform=None, **kwargs)
        try:
            test = open_dataset(data, split="test", transform=None, **kwargs)
        except MissingSplitError as err:
            if self.config.select_on == "test":
                raise PceaError(f"--select-on test needs a test split: {err}") from None
            self.log(f"note: {err}; training and selecting on the validation split, no test figures")
            return train_base, None
        if list(test.class_names) != list(train_base.class_names):
            raise PceaError(f"{data}: the train and test splits name different classes")
        return train_base, test

    def _loader(self, dataset: Dataset, *, train: bool, generator: torch.Generator) -> DataLoader:
        config, env = self.config, self.env
        per_rank = config.batch_size // env.world_size
        if train and env.enabled:
            sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                         shuffle=True, seed=config.seed, drop_last=True)
        elif train:
            sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
        else:
            sampler = ShardSampler(len(dataset), env)
        # More workers than cores only competes with the model for the CPU; the
        # batches do not depend on the worker count (each item has its own rng).
        workers = min(config.workers, os.cpu_count() or 1)
        return DataLoader(
            dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", drop_last=train, generator=generator,
            # Not persistent: each epoch's workers must start from the dataset with the new epoch set.
            persistent_workers=False,
        )

    def _build_model(self, num_classes: int) -> nn.Module:
        config = self.config
        options = {"num_points": config.points, "in_channels": 6 if config.normals else 3,
                   **config.model_options}
        try:
            return build_model(config.model, num_classes=num_classes, **options)
        except (ValueError, TypeError) as err:
            raise PceaError(f"model {config.model!r}: {err}") from None

    def _setup(self) -> None:
        config, env = self.config, self.env
        if config.threads:
            torch.set_num_threads(config.threads)
        if self.device.type == "cpu":
            keep_freed_memory()  # the malloc settings `pcea train` restarts with, for a library caller
        if env.enabled and config.batch_size // env.world_size < 2:
            raise PceaError(f"batch_size={config.batch_size} over {env.world_size} processes leaves "
                            "fewer than 2 clouds per process (BatchNorm needs 2)")
        self.amp = use_amp(config.amp, self.device,
                           lambda why: self.log(f"note: --amp ignored, training in float32: {why}"))

        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        train_base, test = self._datasets()
        self.class_names = [str(name) for name in train_base.class_names]
        self.num_classes = len(self.class_names)
        train_idx, val_idx = split_train_val(np.asarray(train_base.labels), config.val_split, config.seed,
                                             log=self.log)
        if len(train_idx) < config.batch_size:
            raise PceaError(f"{config.data}: {len(train_idx)} training clouds, fewer than one batch "
                            f"of {config.batch_size}; use a smaller --batch-size")
        transform = train_transform(config)
        self.train_set = AugmentedSubset(train_base, train_idx, transform=transform, seed=config.seed)
        self.val_set = AugmentedSubset(train_base, val_idx) if len(val_idx) else None
        self.test_set = AugmentedSubset(test, np.arange(len(test))) if test is not None else None
        self.loader_generator = torch.Generator()
        self.train_loader = self._loader(self.train_set, train=True, generator=self.loader_generator)
        self.eval_generator = torch.Generator()
        self.val_loader = (self._loader(self.val_set, train=False, generator=self.eval_generator)
                           if self.val_set is not None else None)
        self.test_loader = (self._loader(self.test_set, train=False, generator=self.eval_generator)
                            if self.test_set is not None else None)

        model = self._build_model(self.num_classes)
        if config.init and self.resume_payload is None:  # a resumed run has its own weights
            init_weights(model, config.init, self.class_names, log=self.log)
        model = accelerate(model)  # the CPU speed-ups, before the optimiser
        model.class_names = self.class_names
        self.model = model.to(self.device)
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                               betas=(config.momentum, 0.999),
                                               weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        self.step_schedule = config.warmup_epochs > 0
        if self.step_schedule:
            total = config.epochs * len(self.train_loader)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, warmup_cosine(total, round(config.warmup_epochs * len(self.train_loader)),
                                              config.min_lr / config.lr))
        else:  # PCT's: one cosine step per epoch
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs,
                                                                        eta_min=config.min_lr)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.history: list[dict] = []
        self.best: dict = {"epoch": None, "score": -math.inf}
        self.start_epoch = 0
        if self.resume_payload is not None:
            self._restore(self.resume_payload)

        self.net: nn.Module = self.model
        if env.enabled:
            if self.device.type == "cuda":
                # PCT's accuracy collapses when BatchNorm sees only one GPU's slice of the batch.
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.compiled = False
        if config.compile:
            try:
                self.net = torch.compile(self.net)
                self.compiled = True
            except Exception as err:  # compile is an optimisation: any failure means eager mode
                self._compile_failed(err)

    def _on_main_for_all(self, check: Callable[[], object]) -> None:
        """Run a check on rank 0 only; if it fails, every rank raises, so none waits forever."""
        problem = None
        if self.env.is_main:
            try:
                check()
            except PceaError as err:
                problem = err
        shared = self.env.broadcast_object(None if problem is None else str(problem))
        if problem is not None:
            raise problem
        if shared is not None:
            raise PceaError(shared)

    def _check_disk(self) -> None:
        """Refuse to start when the disk cannot hold the checkpoints (last, last.prev, best, a temp).

        The checkpoints a resumed run already holds are replaced, not added to: their space counts.
        """
        state = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        moments = 2 if self.config.optimizer == "adamw" else 1
        one_file = state + moments * params + 2**18  # weights + optimiser state + history
        total = 4 * one_file  # four files at a time
        held, seen = 0, set()
        for name in ("last.pt", "last.prev.pt", "best.pt"):
            try:
                info = (self.out / name).stat()
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:  # last.prev.pt may be a hard link to last.pt
                seen.add((info.st_dev, info.st_ino))
                held += info.st_size
        needed = max(total - held, one_file)  # a new file is always written next to the old one
        free = shutil.disk_usage(self.out).free
        if free < needed:
            reused = f" ({held / 1e6:.1f} MB of its {total / 1e6:.1f} MB are already there)" if held else ""
            raise PceaFileError(self.out, f"only {free / 1e6:.1f} MB free, the checkpoints of this run "
                                          f"need about {needed / 1e6:.1f} MB more{reused}")

    def _compile_failed(self, err: Exception) -> None:
        message = f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:160]}); " \
                  "continuing in eager mode"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        self.log(f"warning: {message}")
        self.compiled = False
        self.net = self.net._orig_mod if hasattr(self.net, "_orig_mod") else self.net

    def _restore(self, payload: dict) -> None:
        if list(payload["class_names"]) != self.class_names:
            raise PceaError(f"{self.out}: the checkpoint's classes differ from those of {self.config.data}")
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            set_rng_state(payload["rng"], self.loader_generator)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise PceaFileError(self.resume_path, f"malformed checkpoint: its states do not fit this run "
                                                  f"({type(err).__name__}: {text})") from None
        check_resumed_state(self.optimizer, self.scheduler, self.resume_path)  # loaded is not yet usable
        self.history = list(payload["metrics"]["history"])
        self.best = dict(payload["metrics"]["best"])
        self.start_epoch = int(payload["epoch"])
        self.log(f"resuming {self.out} after epoch {self.start_epoch}/{self.config.epochs}")

    def _check_best(self) -> None:
        """On resume, with the directory locked: does best.pt still hold the best epoch so far?"""
        if self.best["epoch"] is not None and self.env.is_main:
            problem = self._best_problem(self.best["epoch"])
            if problem and self._rebuild_best(self.best["epoch"], problem) is None:
                # best.pt is damaged, or newer than the checkpoint we fell back to: choose again.
                self.log(f"warning: {problem}; the weights of epoch {self.best['epoch']} (the best so far) "
                         "cannot be recovered, so the best epoch is selected again from here")
                self.best = {"epoch": None, "score": -math.inf}
        self.best = self.env.broadcast_object(self.best)

    def _best_problem(self, epoch: int) -> str | None:
        """Why ``best.pt`` does not hold the selected ``epoch``, or None when it does."""
        try:
            found = load_checkpoint(self.out / "best.pt", require=MODEL_KEYS)["epoch"]
        except PceaFileError as err:
            return str(err)
        return None if found == epoch else f"{self.out / 'best.pt'} holds epoch {found}, not {epoch}"

    def _rebuild_best(self, epoch: int, problem: str) -> Path | None:
        """Rewrite ``best.pt`` from ``last.pt`` or ``last.prev.pt`` when one holds ``epoch``."""
        for candidate in (self.out / "last.pt", previous_path(self.out / "last.pt")):
            try:
                payload = load_checkpoint(candidate, require=RESUME_KEYS)
            except PceaFileError:
                continue
            if payload["epoch"] == epoch:
                protocol = PROTOCOLS[self.config.select_on]
                save_checkpoint(self.out / "best.pt", {**payload, "protocol": protocol})
                self.log(f"warning: {problem}; rebuilt best.pt from {candidate}, which holds the same "
                         f"epoch {epoch}: nothing is lost")
                return candidate
        return None

    # -- one epoch ------------------------------------------------------------

    def _forward(self, points: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if net is not None:
                return net(points)
            if not self.compiled:
                return self.net(points)
            try:
                return self.net(points)
            except Exception as err:  # compilation happens on the first call
                self._compile_failed(err)
                return self.net(points)

    def _train_epoch(self, epoch: int, stop: _StopRequest) -> dict | None:
        """One pass over the training set; None if a stop was requested mid-epoch."""
        from tqdm import tqdm

        env = self.env
        self.train_set.set_epoch(epoch)
        self.loader_generator.manual_seed(epoch_seed(self.config.seed, epoch))
        if isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(epoch)
        self.net.train()
        wide = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        loss_sum = torch.zeros((), dtype=wide, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = torch.zeros((), dtype=torch.int64, device=self.device)
        steps = 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.config.epochs}", leave=False,
                   disable=not (env.is_main and sys.stderr.isatty()), dynamic_ncols=True)
        try:
            for step, (points, labels) in enumerate(bar, start=1):
                points = points.to(self.device, non_blocking=True)  # (B, N, C)
                labels = labels.to(self.device, non_blocking=True)  # (B,)
                logits = self._forward(points)  # (B, num_classes)
                loss = self.criterion(logits.float(), labels)
                # One all-reduce per step tells every rank about a bad loss or a stop signal,
                # so that all of them stop at the same step instead of hanging.
                check = torch.stack([loss.detach().to(wide),
                                     torch.tensor(float(stop.signum is not None), dtype=wide,
                                                  device=self.device)])
                env.sum_(check)
                loss_value, stop_flag = check.tolist()
                if not math.isfinite(loss_value):
                    raise PceaError(
                        f"non-finite loss ({loss_value}) at epoch {epoch}, step {step}; training stopped, "
                        f"{self.out / 'last.pt'} keeps epoch {epoch - 1} (a lower --lr may help)"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if self.step_schedule:
                    self.scheduler.step()
                loss_sum += loss.detach().to(wide)
                correct += (logits.argmax(dim=1) == labels).sum()
                seen += labels.numel()
                steps += 1
                if env.is_main and bar.disable is False:
                    bar.set_postfix(loss=f"{loss_value / env.world_size:.3f}")
                if stop_flag > 0:
                    return None
        except RuntimeError as err:
            if stop.signum is not None:  # a DataLoader worker died from the same Ctrl-C
                return None
            if str(err).startswith("DataLoader worker"):  # kill -9, the OOM killer: resumable as a stop
                self.log(f"a data-loading worker died: {str(err).strip()}")
                return None
            raise
        finally:
            bar.close()
        totals = env.sum_(torch.stack([loss_sum, correct.to(wide), seen.to(wide),
                                       torch.tensor(float(steps), dtype=wide, device=self.device)]))
        loss_total, correct_total, seen_total, steps_total = totals.tolist()
        average_batchnorm_buffers(self.model, env)
        return {"train_loss": loss_total / max(steps_total, 1),
                "train_acc": correct_total / max(seen_total, 1)}

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> tuple[float, float]:
        """(OA, mAcc) of the current weights on a loader's split, exact across ranks."""
        self.net.eval()
        # Under DDP, evaluate the unwrapped module: the DDP wrapper may broadcast buffers on a
        # forward, a collective that ranks with different numbers of batches would not match.
        net = self.model if self.env.enabled else None
        correct = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        total = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        for points, labels in loader:
            labels = labels.to(self.device)
            predictions = self._forward(points.to(self.device), net).argmax(dim=1)  # (B,)
            total += torch.bincount(labels, minlength=self.num_classes)
            correct += torch.bincount(labels[predictions == labels], minlength=self.num_classes)
        self.env.sum_(correct)
        self.env.sum_(total)
        return accuracy_from_counts(correct.cpu().numpy(), total.cpu().numpy())

    # -- files ----------------------------------------------------------------

    def _payload(self, epoch: int, protocol: str) -> dict:
        return {
            **model_payload(self.model, model_name=self.config.model),  # what open_checkpoint reads
            "train_config": self.config.to_dict(),
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.loader_generator),
            "metrics": {"history": self.history, "best": self.best,
                        "last": self.history[-1] if self.history else {}},
            "protocol": protocol,
        }

    def _write_epoch_files(self, epoch: int, improved: bool) -> None:
        if not self.env.is_main:
            return
        payload = self._payload(epoch, "last epoch")
        if improved:
            save_checkpoint(self.out / "best.pt", {**payload, "protocol": PROTOCOLS[self.config.select_on]})
        save_checkpoint(self.out / "last.pt", payload, keep_previous=True)
        write_atomic(self.out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in self.history))
        # Drawing takes about half a second: refresh the plot at most every 30 s, and at the end.
        if epoch == self.config.epochs or time.time() - self._curves_written >= 30:
            self._write_curves()

    def _write_curves(self) -> None:
        if not self.env.is_main or not self.history:
            return
        key = {"val": "val_oa", "test": "test_oa"}.get(self.config.select_on)
        self._curves_ok = write_curves(self.history, self.out / "curves.png",
                                       selected_epoch=self.best["epoch"], selected_key=key)
        if not self._curves_ok:
            self.log("note: matplotlib is not installed, so no curves.png (pip install 'pcea[plot]')")
        self._curves_written = time.time()

    def _written(self) -> str:
        """The files this session wrote, for the last line of a run."""
        names = [name for name in ("results.json", "best.pt", "last.pt", "metrics.jsonl")
                 if (self.out / name).exists()]
        return ", ".join(names + (["curves.png"] if self._curves_ok else []))

    # -- the run --------------------------------------------------------------

    def run(self) -> dict:
        """Train, select, evaluate on test once, and write the run directory.

        Returns:
            The results dict (also written to ``results.json``); with
            ``"interrupted": True`` when a signal or ``stop_after`` ended it early.
        """
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()
            self.env.close()

    def _run(self) -> dict:
        config, env = self.config, self.env
        self.device = resolve_device(config.device, env)
        env.init(self.device)
        # Everything is checked before anything is created: the directory (read-only), the data
        # and the model (_setup), and only then the directory is created and locked.
        self._on_main_for_all(lambda: check_run_dir(self.out, resume=self.resume, force=self.force))
        if self._is_complete():
            return self._complete()
        unstarted = not self.resume and run_state(self.out) == "unstarted"
        self._setup()
        self._on_main_for_all(self._lock_run_dir)
        self._on_main_for_all(self._check_disk)
        if self.resume_payload is not None:
            self._check_best()
        if unstarted:
            self.log(f"note: {self.out} holds a run stopped before its first checkpoint; starting it again")
        if env.is_main:
            write_atomic(self.out / "config.yaml", config.dump_yaml())
            if not self.resume:
                self.log(f"config ({self.out / 'config.yaml'}; settings not listed are PCT's defaults):\n  "
                         + config.summary().replace("\n", "\n  "))
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"run {self.out}: model {config.model} ({n_params:,} parameters), "
                 f"{len(self.train_set)} train / {len(self.val_set) if self.val_set else 0} val / "
                 f"{len(self.test_set) if self.test_set else 0} test clouds, {self.num_classes} classes, "
                 f"device {self.device}"
                 + (f" x {env.world_size} processes" if env.enabled else ""))
        if self.start_epoch == 0 and env.is_main:
            # An epoch-0 checkpoint, so that a run stopped during its first epoch can be resumed.
            save_checkpoint(self.out / "last.pt", self._payload(0, "last epoch"), keep_previous=True)
        started = time.time()
        self._curves_written = started
        with _StopRequest() as stop:
            for epoch in range(self.start_epoch + 1, config.epochs + 1):
                t0 = time.time()
                lr = self.optimizer.param_groups[0]["lr"]
                train_metrics = self._train_epoch(epoch, stop)
                if train_metrics is None:
                    return self._interrupted(epoch, stop.signum, finished=False)
                self._check_finite_weights(epoch)
                if not self.step_schedule:
                    self.scheduler.step()
                row = {"epoch": epoch, "lr": lr, **train_metrics}
                if self.val_loader is not None:
                    row["val_oa"], row["val_macc"] = self.evaluate(self.val_loader)
                if config.select_on == "test":
                    row["test_oa"], row["test_macc"] = self.evaluate(self.test_loader)
                row["time_s"] = round(time.time() - t0, 3)
                self.history.append(row)
                if config.select_on == "last":
                    score, improved = epoch, epoch == config.epochs  # best.pt is written once, at the end
                else:
                    score = row["val_oa"] if config.select_on == "val" else row["test_oa"]
                    improved = score > self.best["score"]
                if improved:
                    self.best = {"epoch": epoch, "score": score}
                self._write_epoch_files(epoch, improved)
                self.log(self._epoch_line(row, improved))
                if epoch == self.start_epoch + 1 < config.epochs:  # this process's first epoch: an estimate
                    left = row["time_s"] * (config.epochs - epoch)
                    self.log(f"about {left / 60:.0f} min for the remaining {config.epochs - epoch} epochs "
                             f"(ETA {time.strftime('%H:%M', time.localtime(time.time() + left))})")
                # A signal that came after the last step's all-reduce: agree on it across ranks.
                stop_now = env.sum_(torch.tensor([float(stop.signum is not None)], device=self.device))
                if stop_now.item() > 0 and epoch < config.epochs:
                    return self._interrupted(epoch, stop.signum, finished=True)
                if self.stop_after is not None and self.stop_after <= epoch < config.epochs:
                    return self._interrupted(epoch, None, finished=True)
        return self._finish(time.time() - started)

    def _lock_run_dir(self) -> None:
        self.lock = prepare_run_dir(self.out, resume=self.resume, force=self.force)

    def _check_finite_weights(self, epoch: int) -> None:
        """Stop like a non-finite loss when a weight or running statistic is NaN or infinite, so
        that no checkpoint holds one (an overflowing step can leave the loss finite)."""
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise PceaError(f"non-finite weights ({name}) after epoch {epoch}; training stopped, "
                                f"{self.out / 'last.pt'} keeps epoch {epoch - 1} (a lower --lr may help)")

    def _is_complete(self) -> bool:
        """A resumed run whose last epoch is done and whose results.json was written."""
        if self.resume_payload is None or self.resume_payload["epoch"] < self.config.epochs:
            return False
        try:
            return isinstance(json.loads((self.out / "results.json").read_text()), dict)
        except (OSError, ValueError):
            return False  # finished training, but not its final evaluation: _finish does it

    def _complete(self) -> dict:
        """``--resume`` of a finished run: say so and leave its files alone; a damaged best.pt is
        rebuilt when another checkpoint holds its epoch, else reported with what is left."""
        results = json.loads((self.out / "results.json").read_text())
        epochs = self.config.epochs
        best_epoch = (epochs if self.config.select_on == "last"
                      else self.resume_payload["metrics"]["best"]["epoch"])
        problem = self._best_problem(best_epoch) if best_epoch is not None and self.env.is_main else None
        if problem:
            self._lock_run_dir()  # about to write best.pt: no other run may be in the directory
            if self._rebuild_best(best_epoch, problem) is None:
                prev = previous_path(self.out / "last.pt")
                raise PceaFileError(self.out / "best.pt", (
                    f"damaged ({problem.removeprefix(str(self.out / 'best.pt') + ': ')}). The weights of the "
                    f"selected epoch {best_epoch} ({PROTOCOLS[self.config.select_on]}) cannot be recovered: "
                    f"last.pt holds epoch {self.resume_payload['epoch']}"
                    + (f" and {prev.name} the one before" if prev.exists() else "")
                    + ". Intact: last.pt (the last epoch's weights), metrics.jsonl, and results.json with "
                    f"the test figures measured on best.pt before the damage. Use {self.out / 'last.pt'}, or "
                    f"retrain with --force"))
        self.log(f"{self.out} is complete ({epochs}/{epochs} epochs; results in "
                 f"{self.out / 'results.json'}); nothing to do. A finished run cannot be extended "
                 f"(its learning-rate schedule ends at epoch {epochs}): train a new run with more --epochs")
        return results

    def _epoch_line(self, row: dict, improved: bool) -> str:
        parts = [f"epoch {row['epoch']:>3}/{self.config.epochs}", f"lr {row['lr']:.5f}",
                 f"loss {row['train_loss']:.4f}", f"train {_format_pct(row['train_acc'])}"]
        if "val_oa" in row:
            parts.append(f"val OA {_format_pct(row['val_oa'])} mAcc {_format_pct(row['val_macc'])}")
        if "test_oa" in row:
            parts.append(f"test OA {_format_pct(row['test_oa'])} mAcc {_format_pct(row['test_macc'])}")
        parts.append(f"{row['time_s']:.1f}s")
        return "  ".join(parts) + ("  *" if improved and self.config.select_on != "last" else "")

    def _interrupted(self, epoch: int, signum: int | None, *, finished: bool) -> dict:
        done = epoch if finished else epoch - 1
        self._write_curves()
        why = f"stopped by {signal.Signals(signum).name}" if signum else "stopped"
        when = f"after epoch {epoch}" if finished else f"during epoch {epoch}"
        self.log(f"{why} {when}; {self.out / 'last.pt'} holds epoch {done}. "
                 f"Continue with: pcea train --resume {self.out}")
        return {"interrupted": True, "signal": signal.Signals(signum).name if signum else None,
                "epochs_completed": done}

    def _finish(self, seconds: float) -> dict:
        config = self.config
        # Every rank returns the results rank 0 writes: its wall time too, which differs by
        # a few tenths of a second from the other ranks' own.
        seconds = self.env.broadcast_object(round(seconds, 1))
        results: dict = {"run": str(self.out), "model": config.model, "data": config.data,
                         "seed": config.seed, "epochs": config.epochs, "select_on": config.select_on,
                         "num_test": len(self.test_set) if self.test_set else 0,
                         "class_names": self.class_names,
                         "train_seconds_this_session": seconds, "test": []}
        best_row = self.history[self.best["epoch"] - 1] if self.best["epoch"] is not None else {}
        if "val_oa" in best_row:
            row = best_row
            results["val"] = {"protocol": PROTOCOLS[config.select_on], "epoch": self.best["epoch"],
                              "oa": row["val_oa"], "macc": row["val_macc"]}
        if self.test_loader is None:
            if self.env.is_main:
                write_atomic(self.out / "results.json", json.dumps(results, indent=2) + "\n")
                if "val" in results:
                    val = results["val"]
                    self.log(f"val ({val['protocol']}, epoch {val['epoch']}): OA {_format_pct(val['oa'])}  "
                             f"mAcc {_format_pct(val['macc'])}  (no test split in the data)")
                self.log(f"wrote {self.out}: {self._written()}")
            self.env.barrier()
            return results
        last_oa, last_macc = self.evaluate(self.test_loader)
        results["test"].append({"protocol": "last epoch", "epoch": config.epochs,
                                "oa": last_oa, "macc": last_macc})
        if config.select_on != "last" and self.best["epoch"] is not None:
            self.env.barrier()
            best = load_checkpoint(self.out / "best.pt", map_location=self.device)
            self.model.load_state_dict(best["model"])
            oa, macc = self.evaluate(self.test_loader)
            entry = {"protocol": PROTOCOLS[config.select_on], "epoch": best["epoch"], "oa": oa, "macc": macc}
            row = self.history[best["epoch"] - 1]
            if "val_oa" in row:
                entry.update(val_oa=row["val_oa"], val_macc=row["val_macc"])
            results["test"].append(entry)
        if self.env.is_main:
            write_atomic(self.out / "results.json", json.dumps(results, indent=2) + "\n")
            for entry in results["test"]:
                self.log(f"test ({entry['protocol']}, epoch {entry['epoch']}): "
                         f"OA {_format_pct(entry['oa'])}  mAcc {_format_pct(entry['macc'])}")
            self.log(f"wrote {self.out}: {self._written()}")
        self.env.barrier()  # all ranks leave together, so none tears the process group down early
        return results


def train(config: TrainConfig | None, out: str | os.PathLike, *, resume: bool = False, force: bool = False,
          overrides: dict | None = None, log: Callable[[str], None] = print,
          stop_after: int | None = None) -> dict:
    """Run one training (see :class:`Trainer`); returns the results dict."""
    return Trainer(config, out, resume=resume, force=force, overrides=overrides, log=log,
                   stop_after=stop_after).run()
