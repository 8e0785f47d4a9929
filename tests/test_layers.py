"""Attention cores: normalisations, shapes, permutation equivariance, the offset block."""

import pytest
import torch
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


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_lbr_on_any_rank_matches_flat_batchnorm(slope):
    torch.manual_seed(0)
    lbr = LBR(6, 8, negative_slope=slope)
    x = torch.randn(2, 5, 7, 6)
    out = lbr(x)
    flat = lbr.bn(lbr.linear(x.reshape(-1, 6)))
    torch.testing.assert_close(out, nn.functional.leaky_relu(flat, slope).view(2, 5, 7, 8))
    assert isinstance(lbr.linear, nn.Linear) and (out < 0).any() == bool(slope)
