"""Attention cores: normalisations, shapes, permutation equivariance, the offset block."""

import pytest
import torch
from autograd_graph import backward_node_names
from torch import nn

from pcea import ExternalAttention, OffsetAttention, OffsetBlock, SelfAttention
from pcea.layers import LBR


def make_cores(dim=32):
    return {
        "external": ExternalAttention(dim, memory=16),
        "external-4-heads": ExternalAttention(dim, memory=16, heads=4),
        "offset": OffsetAttention(dim),
        "self": SelfAttention(dim, heads=4),
    }


def test_external_attention_double_normalisation():
    torch.manual_seed(0)
    attn = ExternalAttention(32, memory=16)
    x = torch.randn(3, 50, 32)
    after_softmax, after_l1 = attn.attention_weights(x)
    assert after_softmax.shape == after_l1.shape == (3, 50, 16)
    # First normalisation: every slot's weights over the points sum to 1 ...
    torch.testing.assert_close(after_softmax.sum(dim=1), torch.ones(3, 16))
    # ... and they do not yet sum to 1 over the slots.
    assert not torch.allclose(after_softmax.sum(dim=2), torch.ones(3, 50))
    # Second normalisation: each point's weights over the slots sum to 1.
    torch.testing.assert_close(after_l1.sum(dim=2), torch.ones(3, 50))
    # The output is M_v applied to those weights.
    torch.testing.assert_close(attn(x), after_l1 @ attn.memory_value.weight.t())


def test_external_attention_memories_start_transposed_and_stay_independent():
    attn = ExternalAttention(32, memory=8)
    assert attn.memory_key.weight.shape == (8, 32) and attn.memory_value.weight.shape == (32, 8)
    assert torch.equal(attn.memory_value.weight, attn.memory_key.weight.t())
    assert attn.memory_value.weight.data_ptr() != attn.memory_key.weight.data_ptr()
    assert attn.memory_key.bias is None and attn.memory_value.bias is None


@pytest.mark.parametrize("name", ["external", "external-4-heads", "offset", "self"])
def test_cores_keep_shape_and_are_permutation_equivariant(name):
    torch.manual_seed(0)
    core = make_cores()[name].eval()
    x = torch.randn(2, 40, 32)
    perm = torch.randperm(40)
    out = core(x)
    assert out.shape == (2, 40, 32) and torch.isfinite(out).all()
    torch.testing.assert_close(core(x[:, perm]), out[:, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["external", "offset", "self"])
def test_offset_block_is_equivariant_and_trains(name):
    torch.manual_seed(0)
    block = OffsetBlock(make_cores()[name], 32)
    x = torch.randn(2, 40, 32, requires_grad=True)
    block(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    block.eval()
    perm = torch.randperm(40)
    torch.testing.assert_close(block(x[:, perm]), block(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="heads=3.*dim=32"):
        ExternalAttention(32, heads=3)
    with pytest.raises(ValueError, match="heads=5.*dim=32"):
        SelfAttention(32, heads=5)


def test_offset_attention_matches_pct_formulation():
    """PCT's SA layer on (B, C, N) with conv1d, written from the paper (eq. 9-11),
    against OffsetBlock(OffsetAttention) on (B, N, C) with the same weights."""
    torch.manual_seed(0)
    dim = 32
    block = OffsetBlock(OffsetAttention(dim), dim).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        block.lbr.bn.running_mean.uniform_(-0.5, 0.5)
        block.lbr.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 30, dim)

    core = block.attention
    xc = x.transpose(1, 2)  # (B, C, N)
    q = nn.functional.conv1d(xc, core.query_key.weight[:, :, None])  # (B, C/4, N)
    energy = q.transpose(1, 2) @ q  # (B, N, N)
    attention = energy.softmax(dim=-1)
    attention = attention / (1e-9 + attention.sum(dim=1, keepdim=True))
    v = nn.functional.conv1d(xc, core.value.weight[:, :, None], core.value.bias)  # (B, C, N)
    x_r = v @ attention  # (B, C, N)
    lin = block.lbr.linear
    trans = nn.functional.conv1d(xc - x_r, lin.weight[:, :, None], lin.bias)
    expected = xc + torch.relu(block.lbr.bn(trans))  # (B, C, N)

    torch.testing.assert_close(block(x), expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_lbr_on_any_rank_matches_flat_batchnorm():
    torch.manual_seed(0)
    lbr = LBR(6, 8, negative_slope=0.2)
    x = torch.randn(2, 5, 7, 6)
    out = lbr(x)
    flat = lbr.bn(lbr.linear(x.reshape(-1, 6)))
    torch.testing.assert_close(out, nn.functional.leaky_relu(flat, 0.2).view(2, 5, 7, 8))


@pytest.mark.parametrize("fused", [False, True])
def test_linear_norm_max_equals_the_max_of_every_row(fused):
    """Fused, the bias comes after the max; a negative BatchNorm scale must still give the max
    of the normalised rows (the reason the unfused path normalises every row first)."""
    torch.manual_seed(0)
    lbr = LBR(8, 6)
    with torch.no_grad():
        lbr.bn.weight.copy_(torch.tensor([1.0, -1.0, 2.0, -0.5, 0.3, -3.0]))
        lbr.bn.bias.uniform_(-1, 1)
        lbr.bn.running_mean.uniform_(-1, 1)
        lbr.bn.running_var.uniform_(0.5, 2)
    lbr.eval()
    x = torch.randn(4, 10, 8)
    with torch.no_grad():
        expected = lbr.linear_norm(x).amax(dim=1)  # unfused: every row, then the max
        if fused:
            lbr.fuse()
        torch.testing.assert_close(lbr.linear_norm_max(x, dim=1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2048, 24), (4, 300, 24), (2, 16, 40, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear_values_and_gradients(shape, bias):
    """On an x86-64 CPU in float32, from 1024 rows, the 1x1 convolution; checked against the
    float64 product, forward and backward, for 2-, 3- and 4-dimensional rows."""
    import pcea.layers
    from pcea.layers import linear

    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(40, 24, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if bias else None
    out = linear(x, weight, b)
    if pcea.layers._CONV_LINEAR_CPU and torch.backends.mkldnn.is_available():
        assert "ConvolutionBackward0" in backward_node_names(out)
    assert out.shape == (*shape[:-1], 40) and out.is_contiguous()
    params = [x, weight] + ([b] if bias else [])
    doubles = [p.detach().double().requires_grad_() for p in params]
    expected = nn.functional.linear(*doubles)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    cotangent = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, params, cotangent),
                         torch.autograd.grad(expected, doubles, cotangent.double()), strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch's notice on entering mkldnn.flags
def test_linear_is_f_linear_where_the_convolution_does_not_pay(monkeypatch):
    import pcea.layers
    from pcea.layers import linear

    weight = torch.randn(8, 6, requires_grad=True)
    too_few_rows = torch.randn(1023, 6)
    assert "ConvolutionBackward0" not in backward_node_names(linear(too_few_rows, weight))
    rows64 = torch.randn(2048, 6, dtype=torch.float64)
    assert "ConvolutionBackward0" not in backward_node_names(linear(rows64, weight.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "ConvolutionBackward0" not in backward_node_names(linear(torch.randn(2048, 6), weight))
    with torch.backends.mkldnn.flags(enabled=False):
        assert "ConvolutionBackward0" not in backward_node_names(linear(torch.randn(2048, 6), weight))
    monkeypatch.setattr(pcea.layers, "_CONV_LINEAR_CPU", False)  # an Arm CPU
    assert "ConvolutionBackward0" not in backward_node_names(linear(torch.randn(2048, 6), weight))


def test_linear_module_keeps_nn_linear_parameters():
    from pcea.layers import Linear

    layer, plain = Linear(6, 8), nn.Linear(6, 8)
    plain.load_state_dict(layer.state_dict())  # same names and shapes
    x = torch.randn(3000, 6)
    torch.testing.assert_close(layer(x), plain(x), atol=1e-5, rtol=1e-5)
