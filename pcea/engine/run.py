"""What a training run works with, built from its recipe: data, model, optimiser, schedule.

:func:`build_run` returns a :class:`Run`, a plain record that :mod:`pcea.engine.train`'s
epoch loop reads and updates; :func:`resume_config` reads the recipe and the checkpoint of a
run to continue. The model's forward pass is here too (:func:`forward`), with the fallback
from ``torch.compile`` to eager mode, because the record says which of the two it runs.
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from pcea.data import open_dataset
from pcea.data.corruptions import Noise, Occlude
from pcea.data.synth import ensure_synthetic
from pcea.data.transforms import Compose, PointWOLF, RotateUp, Tilt, Transform, pct_train_transform
from pcea.digest import file_sha256
from pcea.engine.checkpoint import (
    RESUME_KEYS,
    check_resumed_state,
    load_latest,
    open_checkpoint,
    previous_path,
    resolve_checkpoint,
    set_rng_state,
)
from pcea.engine.config import RUNTIME_KEYS, TrainConfig, load_config_file, max_threads, max_workers
from pcea.engine.distributed import DistEnv, ShardSampler
from pcea.engine.rundir import run_state
from pcea.engine.splits import AugmentedSubset, BalancedSampler, holdout_seed, split_train_val, stream_seed
from pcea.errors import MissingSplitError, PceaError, PceaFileError
from pcea.fast import accelerate
from pcea.model import build_model
from pcea.precision import use_amp
from pcea.runtime import keep_freed_memory

__all__ = ["Run", "build_run", "ema_update", "forward", "init_weights", "refuse_another_holdout",
           "resume_config", "train_transform", "warmup_cosine"]


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
    """The per-cloud training augmentation of a recipe: occlusion, PointWOLF, noise, tilt, yaw, then PCT's.

    With ``yaw``, ``tilt``, ``occlusion``, ``wolf`` and ``noise`` at 0 this is exactly PCT's
    augmentation (the same draws from the same generator), so older recipes train as before.
    PointWOLF comes before PCT's scaling and shift because it ends by normalising into the unit
    sphere, which would undo them.
    """
    steps: list[Transform] = []
    if config.occlusion > 0:
        steps.append(Occlude(config.occlusion))
    if config.wolf > 0:
        steps.append(PointWOLF(config.wolf))
    if config.noise > 0:
        steps.append(Noise(config.noise))  # the sensor sees the deformed shape
    if config.tilt > 0:
        steps.append(Tilt(math.radians(config.tilt)))  # leaning first, then turned about the up axis
    if config.yaw > 0:
        steps.append(RotateUp("y", math.radians(config.yaw)))  # pcea's frame is y-up
    if config.augment == "pct":
        steps.extend(pct_train_transform(config.scale).transforms)
    return Compose(steps) if steps else None


def init_weights(model: nn.Module, source: str, class_names: list[str],
                 log: Callable[[str], None] = print, *, holdout: tuple[float, int] | None = None) -> None:
    """Load the weights of checkpoint ``source`` into ``model`` (``--init``), for fine-tuning.

    Every layer is copied when the source was trained on the same classes in the same
    order; otherwise every layer but the classifier's last Linear, which keeps its fresh
    initialisation (timm's ``reset_classifier`` convention). The frame is checked by
    :func:`pcea.engine.checkpoint.open_checkpoint` (a model of another frame is refused).

    ``holdout`` is this run's ``(val_split, hold-out seed)``. A source trained on the same
    classes, so taken to be the same data, with another hold-out is refused: some of this
    run's validation clouds would be clouds the source trained on, and its validation figures
    optimistic. The check compares the recorded settings, not the clouds: the same seed on the
    same data in another layout (another order of the shapes) draws another hold-out unseen.

    Raises:
        PceaFileError: the source cannot be opened, its layers do not fit ``model``, or its
            validation hold-out is not this run's.
    """
    source_model, payload, path = open_checkpoint(source)
    state = source_model.state_dict()
    same_classes = [str(name) for name in source_model.class_names] == list(class_names)
    if same_classes and holdout is not None:
        refuse_another_holdout(path, payload, len(class_names), holdout)
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


def refuse_another_holdout(path: Path, payload: dict, num_classes: int, holdout: tuple[float, int]) -> None:
    """Refuse ``--init`` weights (checkpoint ``path``, its ``payload``) trained on this run's classes,
    so taken to be the same data, that held out other clouds than ``holdout``, this run's
    ``(val_split, hold-out seed)``; weights that record no hold-out, or a run without one, pass.

    Raises:
        PceaFileError: the two hold-outs differ; the message says how to keep the source's.
    """
    trained = payload.get("train_config") or {}
    if holdout[0] <= 0 or "val_split" not in trained:
        return
    their_split, their_seed = trained["val_split"], holdout_seed(trained)
    if (their_split, their_seed) == tuple(holdout):
        return
    if not their_split:
        way = "it held out none, so use --val-split 0 --select-on last"
    else:
        way = f"to hold out the clouds it did, use --val-split {their_split} --split-seed {their_seed}"
    raise PceaFileError(path, f"--init: trained on these {num_classes} classes with another validation "
                              f"hold-out (val_split {their_split}, seed {their_seed}; this run: "
                              f"{holdout[0]}, seed {holdout[1]}), so this run would validate on clouds "
                              f"it trained on; {way}")


@dataclass(eq=False)
class Run:
    """What one training run works with: built once by :func:`build_run`, then read and updated by
    :mod:`pcea.engine.train` (``train_one_epoch``, ``evaluate_loader`` and the loop in ``Trainer.run``)."""

    config: TrainConfig
    out: Path
    env: DistEnv
    device: torch.device
    log: Callable[[str], None]  # progress lines, rank 0 only
    class_names: list[str]
    train_set: AugmentedSubset
    val_set: AugmentedSubset | None
    test_set: AugmentedSubset | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    test_loader: DataLoader | None
    loader_generator: torch.Generator  # the training order's: its state is in every checkpoint
    stream_seed: int  # what the order, augmentation, mixing and dropout draw from (splits.stream_seed)
    model: nn.Module  # the classifier whose weights are saved
    net: nn.Module  # what batches go through: the model, wrapped by DDP and/or torch.compile
    compiled: bool
    amp: bool  # bf16 autocast
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step_schedule: bool  # the scheduler steps after every batch (warm-up), else after every epoch
    criterion: nn.Module
    ema: AveragedModel | None = None  # --ema: the running average of the model's weights and statistics
    history: list[dict] = field(default_factory=list)  # one row per completed epoch
    best: dict = field(default_factory=lambda: {"epoch": None, "score": -math.inf})
    start_epoch: int = 0  # the last epoch a resumed run had completed
    curves_ok: bool = False  # curves.png was drawn (matplotlib is installed)
    curves_written: float = 0.0  # when: the plot is refreshed at most every 30 s

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, tested and saved as the model: the average with --ema,
        else the model being trained."""
        return self.model if self.ema is None else self.ema.module


# -- building it -------------------------------------------------------------------------------


def build_run(config: TrainConfig, out: Path, env: DistEnv, device: torch.device, log: Callable[[str], None],
              *, resume: dict | None = None, resume_path: Path | None = None) -> Run:
    """Data, model, optimiser and schedule of a run, restored from a checkpoint when resuming.

    Nothing is written: the caller creates and locks the run directory once this succeeded.

    Args:
        config: the recipe.
        out: the run directory (named in messages).
        env: the process group (one process when not distributed).
        device: where the model trains.
        log: where progress lines go (rank 0 only).
        resume: the payload of ``resume_path`` (a ``last.pt``) to continue from.

    Raises:
        PceaError: the data, the model options or the checkpoint do not fit the recipe.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        keep_freed_memory()  # the malloc settings `pcea train` restarts with, for a library caller
    if env.enabled and config.batch_size // env.world_size < 2:
        raise PceaError(f"batch_size={config.batch_size} over {env.world_size} processes leaves "
                        "fewer than 2 clouds per process (BatchNorm needs 2)")
    amp = use_amp(config.amp, device, lambda why: log(f"note: --amp ignored, training in float32: {why}"))

    streams = _stream_seed(config, resume)
    torch.manual_seed(streams)
    random.seed(streams)
    np.random.seed(streams % 2**32)
    train_base, test = _datasets(config, env, log)
    class_names = [str(name) for name in train_base.class_names]
    split_seed = holdout_seed(config.to_dict())
    train_idx, val_idx = split_train_val(np.asarray(train_base.labels), config.val_split, split_seed, log=log)
    if len(train_idx) < config.batch_size:
        raise PceaError(f"{config.data}: {len(train_idx)} training clouds, fewer than one batch "
                        f"of {config.batch_size}; use a smaller --batch-size")
    train_set = AugmentedSubset(train_base, train_idx, transform=train_transform(config), seed=streams)
    val_set = AugmentedSubset(train_base, val_idx) if len(val_idx) else None
    test_set = AugmentedSubset(test, np.arange(len(test))) if test is not None else None
    loader_generator, eval_generator = torch.Generator(), torch.Generator()
    train_loader = _loader(train_set, config, env, device, train=True, generator=loader_generator,
                           seed=streams)
    val_loader, test_loader = (_loader(subset, config, env, device, train=False, generator=eval_generator)
                               if subset is not None else None for subset in (val_set, test_set))

    model = _new_model(config, len(class_names))
    if config.init and resume is None:  # a resumed run has its own weights
        init_weights(model, config.init, class_names, log=log, holdout=(config.val_split, split_seed))
        log(f"random streams: seed {config.seed} with the --init file's SHA-256 ({streams}), not the "
            "draws its weights were trained with")
    model.class_names = class_names
    # The CPU speed-ups, decided by where the model lives (a no-op off the CPU), before the optimiser.
    model = accelerate(model.to(device))
    optimizer = _optimizer(config, model)
    run = Run(config=config, out=out, env=env, device=device, log=log, class_names=class_names,
              train_set=train_set, val_set=val_set, test_set=test_set, train_loader=train_loader,
              val_loader=val_loader, test_loader=test_loader, loader_generator=loader_generator,
              stream_seed=streams, model=model, net=model, compiled=False, amp=amp, optimizer=optimizer,
              scheduler=_scheduler(config, optimizer, steps_per_epoch=len(train_loader)),
              step_schedule=config.warmup_epochs > 0,
              criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), ema=_ema(config, model))
    if resume is not None:
        _restore(run, resume, resume_path)
    run.net, run.compiled = _wrap(model, config, env, device, log)
    return run


def _datasets(config: TrainConfig, env: DistEnv,
              log: Callable[[str], None]) -> tuple[Dataset, Dataset | None]:
    """The train and test splits of ``config.data`` (no test split: None, unless selecting on it)."""
    data = config.data
    if data == "synthetic":
        if env.is_main:
            data = str(ensure_synthetic())
        env.barrier()
        data = str(ensure_synthetic())
    kwargs = {"num_points": config.points, "normals": config.normals, "seed": config.seed}
    train_base = open_dataset(data, split="train", transform=None, **kwargs)
    try:
        test = open_dataset(data, split="test", transform=None, **kwargs)
    except MissingSplitError as err:
        if config.select_on == "test":
            raise PceaError(f"--select-on test needs a test split: {err}") from None
        log(f"note: {err}; training and selecting on the validation split, no test figures")
        return train_base, None
    if list(test.class_names) != list(train_base.class_names):
        raise PceaError(f"{data}: the train and test splits name different classes")
    return train_base, test


def _stream_seed(config: TrainConfig, resume: dict | None) -> int:
    """The run's :func:`~pcea.engine.splits.stream_seed`: a resumed run's is in its checkpoint (one
    from before it was recorded drew from its seed), a new run's from its seed and ``--init`` file.

    Raises:
        PceaFileError: the ``--init`` checkpoint does not exist.
    """
    if resume is not None:
        return int(resume.get("stream_seed", config.seed))
    if not config.init:
        return config.seed
    return stream_seed(config.seed, file_sha256(resolve_checkpoint(config.init)))


def _loader(dataset: Dataset, config: TrainConfig, env: DistEnv, device: torch.device, *, train: bool,
            generator: torch.Generator, seed: int = 0) -> DataLoader:
    """One split's loader; ``seed`` is the shuffle seed of the distributed training sampler, the
    only sampler that takes one (the others draw from ``generator``)."""
    per_rank = config.batch_size // env.world_size
    if train and config.balanced:  # every rank draws the same sequence and keeps its share
        labels = np.asarray(dataset.base.labels)[dataset.indices]
        sampler = BalancedSampler(labels, generator, rank=env.rank, world_size=env.world_size)
    elif train and env.enabled:
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                     shuffle=True, seed=seed, drop_last=True)
    elif train:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    else:
        sampler = ShardSampler(len(dataset), env)
    # More workers than cores only competes with the model for the CPU; the
    # batches do not depend on the worker count (each item has its own rng).
    workers = min(config.workers, os.cpu_count() or 1)
    return DataLoader(
        dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=train, generator=generator,
        # Not persistent: each epoch's workers must start from the dataset with the new epoch set.
        persistent_workers=False,
    )


def _new_model(config: TrainConfig, num_classes: int) -> nn.Module:
    options = {"num_points": config.points, "in_channels": 6 if config.normals else 3, **config.model_options}
    try:
        return build_model(config.model, num_classes=num_classes, **options)
    except (ValueError, TypeError) as err:
        raise PceaError(f"model {config.model!r}: {err}") from None


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.momentum, 0.999),
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
               steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """With warm-up epochs, a per-step warm-up then cosine; else PCT's one cosine step per epoch."""
    if config.warmup_epochs > 0:
        warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        lr_lambda = warmup_cosine(config.epochs * steps_per_epoch, warmup_steps, config.min_lr / config.lr)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.min_lr)


def _ema(config: TrainConfig, model: nn.Module) -> AveragedModel | None:
    """``--ema``: an exponential moving average of ``model``, its BatchNorm statistics included
    (:func:`ema_update`), or None when off. Built from the plain module, before DDP or
    torch.compile wrap it."""
    if config.ema == 0:
        return None
    return AveragedModel(model, multi_avg_fn=ema_update(config.ema), use_buffers=True).eval()


def ema_update(decay: float) -> Callable:
    """The update of ``--ema`` for :class:`AveragedModel`: after step t the average is

        w_ema(t) = sum_s decay^(t-s) w(s) / sum_s decay^(t-s)      (s = 1 .. t)

    the exponential average of the states seen so far, normalised by the weight they have had
    (Adam's bias correction): w_ema(t) = lerp(w_ema(t-1), w(t), (1 - decay) / (1 - decay^t)).
    torch's ``get_ema_multi_avg_fn`` uses 1 - decay throughout, which keeps decay^t of the first
    step's state in the average: nothing for long runs, but from random weights the first step's
    BatchNorm statistics (variance near its initial 1, against ~0.05 once trained) stayed 11 % of
    the average after 4 ModelNet40 epochs at decay 0.998, and the averaged model predicted one class
    (val OA 1.6 %, against 81.5 % for the same averaged weights with their statistics recomputed).
    Integer buffers (BatchNorm's batch count) take the model's value."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        # AveragedModel copies the first state itself and calls this from the second (t = n_averaged + 1),
        # once per group of tensors of one device and dtype: one fused update each, as torch's own EMA.
        t = int(n_averaged) + 1
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, (1 - decay) / (1 - decay**t))
        else:
            torch._foreach_copy_(averaged, current)
    return update


def _restore(run: Run, payload: dict, path: Path) -> None:
    """Continue from a ``last.pt`` payload: weights, optimiser, schedule, RNG and history.

    With ``--ema`` the payload's "model" is the average (what ``pcea eval`` and ``--init`` read) and
    "train_model" the weights being trained, with "ema_updates" the number of updates averaged.
    """
    if list(payload["class_names"]) != run.class_names:
        raise PceaError(f"{run.out}: the checkpoint's classes differ from those of {run.config.data}")
    if run.ema is not None and not {"train_model", "ema_updates"} <= set(payload):
        raise PceaFileError(path, f"malformed checkpoint: a run with ema={run.config.ema} but no "
                                  "'train_model' or 'ema_updates' entry (the weights being trained)")
    try:
        if run.ema is None:
            run.model.load_state_dict(payload["model"])
        else:
            run.model.load_state_dict(payload["train_model"])
            run.ema.module.load_state_dict(payload["model"])
            run.ema.n_averaged.fill_(payload["ema_updates"])
        run.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"], run.loader_generator)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise PceaFileError(path, f"malformed checkpoint: its states do not fit this run "
                                  f"({type(err).__name__}: {text})") from None
    check_resumed_state(run.optimizer, run.scheduler, path)  # loaded is not yet usable
    run.history = list(payload["metrics"]["history"])
    run.best = dict(payload["metrics"]["best"])
    run.start_epoch = int(payload["epoch"])
    run.log(f"resuming {run.out} after epoch {run.start_epoch}/{run.config.epochs}")


def _wrap(model: nn.Module, config: TrainConfig, env: DistEnv, device: torch.device,
          log: Callable[[str], None]) -> tuple[nn.Module, bool]:
    """The module batches go through (DDP when distributed, then torch.compile) and whether it is compiled."""
    net = model
    if env.enabled:
        if device.type == "cuda":
            # PCT's accuracy collapses when BatchNorm sees only one GPU's slice of the batch.
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        try:
            return torch.compile(net), True
        except RuntimeError as err:  # its refusal of this Python; compiling itself waits for the first call
            _compile_failed(err, log)
    return net, False


def _compile_failed(err: RuntimeError, log: Callable[[str], None]) -> None:
    first = (str(err).splitlines() or [""])[0][:160]
    message = f"torch.compile failed ({type(err).__name__}: {first}); continuing in eager mode"
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log(f"warning: {message}")


def _out_of_memory(err: BaseException) -> bool:
    """An allocation failure: torch.cuda.OutOfMemoryError (torch.OutOfMemoryError), or the CPU
    allocator's plain RuntimeError, also when a compiler backend wrapped it (BackendCompilerFailed)."""
    inner = getattr(err, "inner_exception", None)
    return (isinstance(err, torch.cuda.OutOfMemoryError) or "DefaultCPUAllocator" in str(err)
            or (isinstance(inner, BaseException) and _out_of_memory(inner)))


def forward(run: Run, points: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
    """The logits of a batch under the run's autocast; if torch.compile fails, eager from then on."""
    with torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        if net is not None or not run.compiled:
            return (run.net if net is None else net)(points)
        try:
            return run.net(points)
        # Compiling happens on the first call of each new shape. Everything dynamo and inductor
        # raise is a RuntimeError (TorchDynamoException, BackendCompilerFailed, InductorError,
        # CppCompileError, InvalidCxxCompiler); a model's own error raises again in eager mode below.
        except RuntimeError as err:
            if _out_of_memory(err):
                raise  # too large a batch for this machine, compiled or not: not a compile failure
            _compile_failed(err, run.log)
            run.net, run.compiled = getattr(run.net, "_orig_mod", run.net), False
            return run.net(points)


def resume_config(out: Path, overrides: dict, log: Callable[[str], None]
                  ) -> tuple[TrainConfig, dict | None, Path | None]:
    """The recipe of the run in ``out`` with the runtime options of ``overrides``, and the
    checkpoint to continue from (``last.pt``, else ``last.prev.pt``; None for a run stopped
    before its first checkpoint) with its path.

    Raises:
        PceaError: ``overrides`` changes the recipe, or there is nothing to resume.
    """
    last = out / "last.pt"
    payload = used = None
    if not last.exists() and not previous_path(last).exists():
        if run_state(out) != "unstarted":
            raise PceaFileError(out, "no run to resume here (no last.pt)")
        # Stopped before its first checkpoint was written: nothing was trained, start it again.
        source = out / "config.yaml"
        values = load_config_file(source)
        log(f"note: {out} was stopped before its first checkpoint; starting it from scratch "
            "with its config.yaml")
    else:
        used, payload, problems = load_latest(last, require=RESUME_KEYS)
        for problem in problems:
            log(f"warning: {problem}")
        if problems:
            log(f"resuming from the previous checkpoint {used} instead")
        values, source = dict(payload["train_config"]), f"{used} (train_config)"
    # A setting newer than the checkpoint (ema in a run from before it) has its default there.
    defaults = TrainConfig().to_dict()
    changed = sorted(k for k, v in overrides.items()
                     if k not in RUNTIME_KEYS and v != values.get(k, defaults.get(k)))
    if changed:
        raise PceaError(f"--resume continues {out} with its own recipe; "
                        f"cannot change {', '.join(changed)} (only {', '.join(RUNTIME_KEYS)})")
    values.update({k: v for k, v in overrides.items() if k in RUNTIME_KEYS})
    # A run from a larger machine: its thread and worker counts are only runtime options.
    for key, bound in (("threads", max_threads()), ("workers", max_workers())):
        if key not in overrides and isinstance(values.get(key), int) and values[key] > bound:
            log(f"note: {key}={values[key]} is more than this machine allows; using {bound}")
            values[key] = bound
    return TrainConfig.from_dict(values, source=str(source)), payload, used
