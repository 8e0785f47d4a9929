"""Numeric precision: float32 by default, bf16 autocast (``--amp``) where the hardware has it.

float32 is the reference: every optimisation in pcea keeps the float32 logits
within 1e-5 of the plain formulation. bf16 autocast keeps the weights in
float32 and runs the matmuls on bfloat16 inputs; on the CPU the activations
that follow them (BatchNorm, softmax) then stay in bfloat16 too, while the loss
is computed in float32 (PyTorch's CPU autocast rules, checked with torch
2.13). It is not exact (logits move by about 1e-2), but on hardware with
native bf16 it runs the model much faster (docs/benchmarks.md has the figures).
Without native instructions the CPU emulates bf16 and gets slower than float32,
so pcea only turns it on where it helps.
"""

from __future__ import annotations

import contextlib
import platform
import sys
from collections.abc import Callable

import torch

__all__ = ["cpu_has_native_bf16", "amp_support", "autocast", "cpu_autocast_active", "use_amp"]

_X86_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 dot-product instructions that oneDNN uses.

    x86: ``avx512_bf16`` (AMD Zen 4 and later, Intel Cooper Lake) or
    ``amx_bf16`` (Intel Sapphire Rapids and later); Arm: the ``bf16`` feature
    (Graviton 3, Neoverse V1 and later). Read from /proc/cpuinfo, so Linux
    only; elsewhere this answers False and bf16 stays off on the CPU.

    Args:
        cpuinfo: the text of /proc/cpuinfo (for tests); read from the file when None.
    """
    if cpuinfo is None:
        if not sys.platform.startswith("linux"):
            return False
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return bool(flags & set(_X86_FLAGS)) or "bf16" in flags
    return False


def amp_support(device: torch.device | str) -> tuple[bool, str]:
    """Whether bf16 autocast helps on ``device``, and if not, why (one line for the log)."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, ""
        return False, f"{torch.cuda.get_device_name(device)} has no bf16 support"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return True, ""
        return False, (f"this CPU ({platform.machine()}) has no native bf16 instructions "
                       "(avx512_bf16, amx_bf16 or Arm bf16), so bf16 would be slower than float32")
    return False, f"bf16 autocast is not supported by pcea on {device.type}"


def use_amp(requested: bool, device: torch.device | str, note: Callable[[str], None]) -> bool:
    """Whether to run under bf16 autocast: ``requested`` and it helps on ``device``.

    When it was requested but does not help, ``note`` gets the one-line reason
    (each caller words and routes it: a log line, stderr, a warning).
    """
    if not requested:
        return False
    helps, why = amp_support(device)
    if not helps:
        note(why)
    return helps


def autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def cpu_autocast_active() -> bool:
    """Whether CPU autocast is on at this point of the program.

    pcea's float32-only CPU shortcuts (:mod:`pcea.fast`) step aside under it. torch >= 2.4 asks
    ``is_autocast_enabled("cpu")``; older versions have a call of their own.
    """
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: is_autocast_enabled() takes no device
        return torch.is_autocast_cpu_enabled()
