"""What a call is, the one thing the accelerated modules check each time they run.

Whether a fast path exists on this machine is decided once, by
:func:`pcea.fast.accelerate`. Whether it serves a given call depends on the
call: its tensors' device and dtype, training mode and autograd (checked by
each module) and the two program states below.
"""

from __future__ import annotations

import torch

from pcea.precision import cpu_autocast_active

__all__ = ["eager_cpu", "traced"]


def traced() -> bool:
    """Whether torch.compile or torch.jit.trace is recording this call.

    Neither can see into numba or make use of a cache-sized loop, and a traced
    graph should hold the model's plain operations, so the fast paths step aside.
    """
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling()) or torch.jit.is_tracing()


def eager_cpu(x: torch.Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    """Whether ``x`` is a CPU tensor of one of ``dtypes`` in an eager call without CPU autocast."""
    return x.device.type == "cpu" and x.dtype in dtypes and not cpu_autocast_active() and not traced()
