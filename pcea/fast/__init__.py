"""CPU acceleration of the plain model, applied in one explicit step: :func:`accelerate`.

:mod:`pcea.model` and :mod:`pcea.layers` are the papers' equations in plain
PyTorch. Everything that exists only to make them fast on a CPU lives here:

- :mod:`pcea.fast.sampling`: FPS and kNN compiled with numba (the same indices as :mod:`pcea.ops`);
- :mod:`pcea.fast.batchnorm`: training-mode BatchNorm fused with the gather before it and the
  max after it (numba);
- :mod:`pcea.fast.layers`: the Linear as a oneDNN 1x1 convolution, the LBR with its BatchNorm
  folded at inference;
- :mod:`pcea.fast.model`: the neighbour embedding in cache-sized chunks at inference and through
  the fused kernels in training, the fusion layer's max before its activation.

The process settings that make these kernels fast (glibc malloc, OpenMP idle workers) are not
part of the model: they live in :mod:`pcea.runtime`.

``accelerate(model)`` decides once what this machine offers (:class:`Features`:
the ``PCEA_FAST_OPS`` switch, numba, oneDNN on x86-64) and swaps each plain
module for its fast subclass, the way ``torch.nn.utils.parametrize`` does:
the object, its parameters, buffers, hooks and state_dict stay the same, so an
optimiser built before or after, a checkpoint saved from either, and
``load_state_dict`` all work unchanged; :func:`plain` swaps them back. It
decides by device too: a model whose parameters are not on the CPU (call it
after ``.to(device)``) is left as built. The fast modules then check only what
each call is: device, dtype, training mode, autograd, autocast, tracing.
Every fast path gives the plain model's outputs within float rounding
(tests/fast/). ``PCEA_FAST_OPS=0`` turns all of it off: ``accelerate`` then
returns the model as built. The figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from torch import nn

from pcea.fast import batchnorm, sampling
from pcea.fast.layers import FastLBR, FastLinear, conv_linear_available
from pcea.fast.model import FastNeighborEmbedding, FastPCTClassifier
from pcea.layers import LBR
from pcea.model import NeighborEmbedding, PCTClassifier

__all__ = ["Features", "accelerate", "enabled", "plain"]


def enabled() -> bool:
    """The documented switch: False when the environment sets ``PCEA_FAST_OPS=0``."""
    return os.environ.get("PCEA_FAST_OPS", "1") != "0"


@dataclass(frozen=True)
class Features:
    """What this machine offers the fast modules.

    Attributes:
        conv_linear: float32 Linears run as oneDNN 1x1 convolutions (x86-64 with oneDNN).
        kernels: numba is importable, for the compiled FPS, kNN and fused BatchNorm; False makes the
            accelerated model sample, group and normalise with the plain forms.
    """

    conv_linear: bool
    kernels: bool

    @classmethod
    def detect(cls) -> Features:
        kernels = sampling.available() and batchnorm.available()
        return cls(conv_linear=conv_linear_available(), kernels=kernels)


def accelerate(model: nn.Module, features: Features | None = None) -> nn.Module:
    """Make a built model fast on the CPU, in place; the same function within float rounding.

    Swaps every :class:`pcea.model.PCTClassifier`, :class:`pcea.model.NeighborEmbedding`,
    :class:`pcea.layers.LBR` and (where the convolution is faster) ``nn.Linear`` inside
    ``model`` for its fast subclass. Subclasses of those keep their own class.
    Calling it again is harmless; :func:`plain` undoes it.

    The fast paths are CPU code, so a model with a parameter or buffer off the CPU
    (CUDA, MPS, meta) is returned as built: call it after ``model.to(device)``.

    Args:
        model: a :class:`pcea.PCTClassifier`, or any module built from pcea's layers.
        features: what to use; :meth:`Features.detect` by default.

    Returns:
        ``model`` itself; unchanged when ``PCEA_FAST_OPS=0`` or when it is not on the CPU.
    """
    if not enabled() or not _on_cpu(model):
        return model
    features = Features.detect() if features is None else features
    for module in model.modules():
        fast = _SWAPS.get(type(module))  # the exact class: a subclass keeps its own forward
        if fast is FastLinear and not features.conv_linear:
            continue  # F.linear is the fast form here
        if fast is FastLBR and not _plain_batchnorm(module.bn):
            continue  # folding needs BatchNorm's affine terms and running statistics
        if fast is not None:
            module.__class__ = fast  # same object, parameters, buffers and state_dict
        if isinstance(module, FastLinear | FastLBR | FastNeighborEmbedding | FastPCTClassifier):
            module.conv = features.conv_linear
        if isinstance(module, FastNeighborEmbedding | FastPCTClassifier):
            module.kernels = features.kernels
    return model


def plain(model: nn.Module) -> nn.Module:
    """Undo :func:`accelerate` in place: every fast module gets its plain class back.

    As ``torch.nn.utils.parametrize.remove_parametrizations`` restores the original
    class: the object, its parameters, buffers and state_dict stay the same, and
    what ``accelerate`` and the fast forwards set on the modules (the machine's
    decisions, the cached folded weights) goes, so the model is the one built.

    Args:
        model: any module; modules that were not accelerated are left alone.

    Returns:
        ``model`` itself.
    """
    for module in model.modules():
        original = _PLAIN.get(type(module))
        if original is not None:
            module.__class__ = original
            module.__dict__.pop("conv", None)  # accelerate's decisions
            module.__dict__.pop("kernels", None)
        if isinstance(module, LBR):
            module.__dict__.pop("_folded", None)  # pcea.fast.layers.fold's cache
    return model


_SWAPS = {LBR: FastLBR, NeighborEmbedding: FastNeighborEmbedding, PCTClassifier: FastPCTClassifier,
          nn.Linear: FastLinear}
_PLAIN = {fast: original for original, fast in _SWAPS.items()}


def _on_cpu(model: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in itertools.chain(model.parameters(), model.buffers()))


def _plain_batchnorm(bn: nn.Module) -> bool:
    return type(bn) is nn.BatchNorm1d and bn.affine and bn.track_running_stats

