"""The fast layers against the plain ones: the oneDNN Linear, the folded LBR, the max before activation."""

import copy

import pytest
import torch
from autograd_graph import backward_node_names
from torch import nn

from pcea.fast import Features, accelerate
from pcea.fast.layers import FastLBR, FastLinear, conv_linear_available, linear, linear_norm_max
from pcea.layers import LBR, batch_norm


def trained_lbr(in_dim=8, out_dim=6, **kwargs) -> LBR:
    """An eval-mode LBR with BatchNorm scales of both signs and moved statistics."""
    torch.manual_seed(0)
    lbr = LBR(in_dim, out_dim, **kwargs)
    with torch.no_grad():
        lbr.bn.weight.copy_(torch.linspace(-3.0, 2.0, out_dim))
        lbr.bn.bias.uniform_(-1, 1)
        lbr.bn.running_mean.uniform_(-1, 1)
        lbr.bn.running_var.uniform_(0.5, 2)
    return lbr.eval()


@pytest.mark.parametrize("shape", [(2048, 24), (4, 300, 24), (2, 16, 40, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear_values_and_gradients(shape, bias):
    """From 1024 float32 CPU rows, the 1x1 convolution where this machine has it; checked against
    the float64 product, forward and backward, for 2-, 3- and 4-dimensional rows."""
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(40, 24, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if bias else None
    out = linear(x, weight, b, conv=conv_linear_available())
    assert ("ConvolutionBackward0" in backward_node_names(out)) == conv_linear_available()
    assert out.shape == (*shape[:-1], 40) and out.is_contiguous()
    params = [x, weight] + ([b] if bias else [])
    doubles = [p.detach().double().requires_grad_() for p in params]
    expected = nn.functional.linear(*doubles)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    cotangent = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, params, cotangent),
                         torch.autograd.grad(expected, doubles, cotangent.double()), strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not conv_linear_available(), reason="no oneDNN convolution on this machine")
def test_linear_is_f_linear_where_the_convolution_does_not_pay():
    weight = torch.randn(8, 6, requires_grad=True)
    rows = torch.randn(2048, 6)
    assert "ConvolutionBackward0" in backward_node_names(linear(rows, weight, conv=True))
    assert "ConvolutionBackward0" not in backward_node_names(linear(rows[:1023], weight, conv=True))
    doubles = linear(rows.double(), weight.double(), conv=True)
    assert "ConvolutionBackward0" not in backward_node_names(doubles)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "ConvolutionBackward0" not in backward_node_names(linear(rows, weight, conv=True))
    assert "ConvolutionBackward0" not in backward_node_names(linear(rows, weight, conv=False))  # e.g. Arm


def test_accelerate_swaps_linears_only_where_the_convolution_is_faster():
    layers = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8))
    accelerate(layers, Features(conv_linear=False, kernels=False))
    assert [type(m) for m in layers] == [nn.Linear, nn.Linear]
    plain = copy.deepcopy(layers)
    accelerate(layers, Features(conv_linear=True, kernels=False))
    assert [type(m) for m in layers] == [FastLinear, FastLinear]
    assert list(layers.state_dict()) == list(plain.state_dict())  # the same names and shapes
    x = torch.randn(3000, 6)
    torch.testing.assert_close(layers(x), plain(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("bias", [False, True])
def test_folded_lbr_equals_the_plain_lbr(slope, bias):
    plain = trained_lbr(bias=bias, negative_slope=slope)
    fast = accelerate(copy.deepcopy(plain))
    assert type(fast) is FastLBR
    x = torch.randn(4, 10, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-6, rtol=1e-5)
    calls = []
    fast.bn.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        fast(x)
    assert calls == []  # folded: the BatchNorm itself never runs
    fast(x)
    assert calls == [1]  # with autograd it does


def test_folded_weights_follow_every_change_of_the_parameters():
    plain = trained_lbr()
    fast = accelerate(copy.deepcopy(plain))
    x = torch.randn(5, 8)
    with torch.no_grad():
        fast(x)  # folds and caches
        for module in (plain, fast):
            module.bn.running_mean.add_(0.5)  # in place, as a training step would
        torch.testing.assert_close(fast(x), plain(x), atol=1e-6, rtol=1e-5)
        other = trained_lbr()
        other.bn.bias.add_(1.0)
        for module in (plain, fast):
            module.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x), plain(x), atol=1e-6, rtol=1e-5)
        for module in (plain, fast):
            module.double()  # new storage
        torch.testing.assert_close(fast(x.double()), plain(x.double()), atol=1e-12, rtol=1e-10)


def test_lbr_in_training_and_with_autograd_is_the_plain_lbr():
    plain = trained_lbr().train()
    fast = accelerate(copy.deepcopy(plain))
    x = torch.randn(5, 7, 8, requires_grad=True)
    for module in (plain, fast):
        module.train()
        out = module(x)
        out.square().sum().backward()
        assert not any("CopySlices" in name for name in backward_node_names(out))
    for p, q in zip(plain.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.bn.running_mean, plain.bn.running_mean)
    plain.eval(), fast.eval()
    torch.testing.assert_close(fast(x), plain(x), atol=1e-6, rtol=1e-5)  # eval with autograd: unfolded
    assert "NativeBatchNormBackward0" in backward_node_names(fast(x))


@pytest.mark.parametrize("inference", [True, False])
def test_linear_norm_max_equals_the_max_of_every_row(inference):
    """Folded, the bias comes after the max; a negative BatchNorm scale must still give the max
    of the normalised rows (the reason the unfolded path normalises every row first)."""
    lbr = trained_lbr()
    x = torch.randn(4, 10, 8)
    with torch.set_grad_enabled(not inference):
        expected = batch_norm(lbr.bn, lbr.linear(x)).amax(dim=1)  # every row, then the max
        got = linear_norm_max(lbr, x, dim=1, conv=conv_linear_available(), kernels=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
