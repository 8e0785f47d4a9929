"""BatchNorm's running statistics, recomputed for the weights a model has now.

A model's running statistics are gathered while it trains: an exponential average over steps
whose weights kept changing, with dropout on. Two things pcea ships make them stale:

- an average of checkpoints (``scripts/average_weights.py``) averages each member's statistics,
  and the mean of the members' statistics is not the statistics of the mean's activations (SWA,
  Izmailov et al. 2018, arXiv 1803.05407, recomputes them with one pass over the training data);
- dropout in the head is on while they are gathered and off when the model is evaluated, so
  the layer after it sees a variance in training that it never sees again (Li et al. 2019,
  arXiv 1801.05134).

:func:`recompute_batchnorm` gathers them again, with the model as it is evaluated: in eval mode
but for its BatchNorm layers, each batch counted once and equally (torch's ``momentum=None``).
``torch.optim.swa_utils.update_bn`` does the first half, but in train mode, dropout on.

Measure before keeping the result: on pcea's two shipped files, both averages, it lowered
validation OA by 5 to 7 of 985 shapes (docs/modelnet40.md, session 35), so they keep the
statistics training left.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["recompute_batchnorm"]


def recompute_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by those of ``batches``.

    Args:
        model: the model; its weights are not changed, and it is left in the mode it was in.
        batches: model inputs, (B, N, C) each with B >= 2, on the model's device.

    Returns:
        The number of batches the statistics are the mean of.

    Raises:
        ValueError: ``model`` has no BatchNorm layer or ``batches`` is empty; its statistics are
            then as they were (as they are after any error in the pass).
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
             and module.track_running_stats]
    if not norms:
        raise ValueError("the model has no BatchNorm layer with running statistics")
    momenta = [norm.momentum for norm in norms]
    # what a failed pass puts back
    before = [{name: buffer.clone() for name, buffer in norm.named_buffers()} for norm in norms]
    was_training = model.training
    model.eval()  # dropout off, as when the model is evaluated
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # the cumulative mean: every batch counts once
        norm.train()
    count = 0
    try:
        with torch.no_grad():
            for points in batches:
                model(points)  # (B, N, C) -> (B, num_classes), unused: the pass is for the statistics
                count += 1
        if count == 0:
            raise ValueError("no batches to gather BatchNorm statistics from")
    except BaseException:
        for norm, buffers in zip(norms, before, strict=True):
            for name, buffer in norm.named_buffers():
                buffer.copy_(buffers[name])
        raise
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return count
