"""bf16 autocast: where pcea turns it on, and that it stays close to float32 (never timed)."""

from __future__ import annotations

import pytest
import torch

import pcea
from pcea import precision
from pcea.precision import amp_support, autocast, cpu_has_native_bf16

ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
SKYLAKE = "flags\t\t: fpu sse avx2 avx512f avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd atomics\n"


@pytest.mark.parametrize("cpuinfo, native", [
    (ZEN4, True), (SAPPHIRE, True), (GRAVITON3, True),
    (SKYLAKE, False), (GRAVITON2, False), ("", False), ("garbage without a colon", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert cpu_has_native_bf16(cpuinfo) is native


def test_amp_support_on_the_cpu_follows_the_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert amp_support("cpu") == (True, "")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    ok, why = amp_support("cpu")
    assert not ok and "no native bf16" in why and "slower than float32" in why
    ok, why = amp_support("meta")
    assert not ok and "meta" in why


def test_autocast_off_is_float32_and_on_is_bf16():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with autocast("cpu", False):
        assert layer(x).dtype == torch.float32
    with autocast("cpu", True):
        assert layer(x).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["pcea", "pct"])
@pytest.mark.slow
def test_bf16_logits_stay_close_to_float32(name):
    """bf16 is not exact: the logits agree to about 1e-2 of their scale, not 1e-5."""
    torch.manual_seed(0)
    model = pcea.build_model(name, num_classes=10, num_points=512).eval()
    points = torch.randn(4, 512, 3)
    with torch.no_grad():
        reference = model(points)
        with autocast("cpu", True):
            low = model(points)
    assert low.dtype == torch.bfloat16
    error = (low.float() - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.05, error  # it does change the numbers, by a little


def test_use_amp_notes_why_only_when_it_was_asked_for_and_cannot_help(monkeypatch):
    notes = []
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.use_amp(False, "cpu", notes.append) is False and notes == []
    assert precision.use_amp(True, "cpu", notes.append) is False
    assert len(notes) == 1 and "no native bf16" in notes[0]
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.use_amp(True, "cpu", notes.append) is True and len(notes) == 1


def test_cpu_autocast_active_follows_the_context():
    assert not precision.cpu_autocast_active()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision.cpu_autocast_active()
    assert not precision.cpu_autocast_active()
