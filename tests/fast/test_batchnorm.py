"""The fused training-mode BatchNorm of pcea.fast.batchnorm against the plain ops it replaces."""

import pytest
import torch
from torch import nn

from pcea.fast import batchnorm
from pcea.ops import gather

pytestmark = pytest.mark.skipif(not batchnorm.available(), reason="numba is not installed")


def make_bn(channels, dtype=torch.float32, momentum=0.1):
    """A BatchNorm with scales of both signs (a negative one turns the max into a min)."""
    bn = nn.BatchNorm1d(channels, momentum=momentum).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-1.5, 2.0, channels, dtype=dtype))
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
    return bn


def twin(bn):
    """An independent copy with the same parameters and running statistics."""
    copy = nn.BatchNorm1d(bn.num_features, momentum=bn.momentum).to(bn.weight.dtype)
    copy.load_state_dict(bn.state_dict())
    return copy


def assert_same_statistics(bn, plain):
    torch.testing.assert_close(bn.running_mean, plain.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, plain.running_var, atol=1e-6, rtol=1e-5)
    assert bn.num_batches_tracked == plain.num_batches_tracked == 1


def grouped_inputs(dtype=torch.float32, B=3, N=40, M=12, k=6, C=10):
    torch.manual_seed(0)
    points = torch.randn(B, N, C, dtype=dtype, requires_grad=True)
    centers = torch.randn(B, M, C, dtype=dtype, requires_grad=True)
    idx = torch.randint(0, N, (B, M, k))
    return points, centers, idx


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_gather_norm_act_matches_gather_batchnorm_activation(slope, momentum):
    points, centers, idx = grouped_inputs()
    B, M, k = idx.shape
    C = points.shape[-1]
    bn = make_bn(C, momentum=momentum)
    plain_bn = twin(bn)
    out = batchnorm.gather_norm_act(points, centers, idx, bn, slope)
    h = gather(points, idx) + centers.unsqueeze(2)  # (B, M, k, C)
    expected = nn.functional.leaky_relu(plain_bn(h.reshape(-1, C)), slope).view(B, M, k, C)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert_same_statistics(bn, plain_bn)

    cotangent = torch.randn_like(out)
    fast = torch.autograd.grad(out, [points, centers, bn.weight, bn.bias], cotangent)
    plain = torch.autograd.grad(expected, [points, centers, plain_bn.weight, plain_bn.bias], cotangent)
    for name, f, p in zip(["points", "centers", "weight", "bias"], fast, plain, strict=True):
        torch.testing.assert_close(f, p, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_norm_max_matches_batchnorm_then_max(momentum):
    torch.manual_seed(0)
    y = torch.randn(3, 12, 6, 10, requires_grad=True)  # (B, M, k, C)
    bn = make_bn(10, momentum=momentum)
    plain_bn = twin(bn)
    out = batchnorm.norm_max(y, bn)  # (B, M, C)
    expected = plain_bn(y.reshape(-1, 10)).view(3, 12, 6, 10).max(dim=2).values
    assert out.shape == (3, 12, 10)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert_same_statistics(bn, plain_bn)

    cotangent = torch.randn_like(out)
    fast = torch.autograd.grad(out, [y, bn.weight, bn.bias], cotangent)
    plain = torch.autograd.grad(expected, [y, plain_bn.weight, plain_bn.bias], cotangent)
    for name, f, p in zip(["y", "weight", "bias"], fast, plain, strict=True):
        torch.testing.assert_close(f, p, atol=1e-5, rtol=1e-4, msg=name)


def test_norm_max_sends_a_tie_to_the_first_maximum_as_max_does():
    """Whole numbers make ties in every group; the gradient goes where max(dim) sends it."""
    torch.manual_seed(0)
    y = torch.randint(-2, 3, (20, 8, 4)).float().requires_grad_()
    bn = make_bn(4)
    plain_bn = twin(bn)
    out = batchnorm.norm_max(y, bn)
    expected = plain_bn(y.reshape(-1, 4)).view(20, 8, 4).max(dim=1).values
    cotangent = torch.randn_like(out)
    (fast,) = torch.autograd.grad(out, [y], cotangent)
    (plain,) = torch.autograd.grad(expected, [y], cotangent)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)


def test_gradcheck_in_float64():
    points, centers, idx = grouped_inputs(torch.float64, B=2, N=15, M=5, k=4, C=3)
    bn = make_bn(3, torch.float64)
    assert torch.autograd.gradcheck(
        lambda p, c, w, b: batchnorm._GatherNormAct.apply(p, c, w, b, idx, bn, 0.1),
        (points, centers, bn.weight, bn.bias),
    )
    y = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda y, w, b: batchnorm._NormMax.apply(y, w, b, bn), (y, bn.weight, bn.bias)
    )


def test_statistics_do_not_depend_on_the_number_of_threads():
    points, centers, idx = grouped_inputs(B=4)
    bn = make_bn(10)
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(batchnorm.gather_norm_act(points, centers, idx, twin(bn)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_serves_only_an_eager_cpu_float_training_step_with_autograd():
    x = torch.randn(4, 3)
    bn = nn.BatchNorm1d(3)
    assert batchnorm.serves(x, bn)
    assert batchnorm.serves(x.double(), bn)
    assert not batchnorm.serves(x, bn.eval())
    bn.train()
    with torch.no_grad():
        assert not batchnorm.serves(x, bn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not batchnorm.serves(x, bn)
    assert not batchnorm.serves(x.half(), bn)
    assert not batchnorm.serves(x, type("MyNorm", (nn.BatchNorm1d,), {})(3))  # keeps its own forward


def test_outputs_are_fresh_tensors_an_in_place_activation_may_change():
    """Autograd forbids in-place ops on a view a custom function returns; the model applies
    its activations in place, so both functions return their tensor as allocated."""
    points, centers, idx = grouped_inputs()
    out = batchnorm.gather_norm_act(points, centers, idx, make_bn(10))
    assert out._base is None
    pooled = batchnorm.norm_max(out, make_bn(10))  # (B, M, C)
    assert pooled._base is None
    torch.relu_(pooled).sum().backward()  # raises if either output were a view
    assert points.grad is not None and torch.isfinite(points.grad).all()
