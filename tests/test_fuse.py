"""BatchNorm folding for inference: the fused model computes the same logits."""

from __future__ import annotations

import pytest
import torch

import pcea
from pcea.layers import LBR
from pcea.model import fuse_batchnorm

TINY = dict(num_classes=4, num_points=128, centers=(64, 32), neighbors=(8, 8), embed_dim=16,
            stage_dims=(32, 64), fuse_dim=128, head_dims=(64, 32), memory=16)


def trained_statistics(name: str, seed: int = 0, **overrides) -> pcea.PCTClassifier:
    """A tiny model whose BatchNorms hold non-trivial running statistics and affine terms."""
    torch.manual_seed(seed)
    model = pcea.build_model(name, **{**TINY, **overrides})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
        for _ in range(3):  # train-mode passes move the running mean and variance
            model(torch.randn(4, 128, 3) * 2 + 0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["pcea", "pct", "pct-sa"])
@pytest.mark.parametrize("pool", ["max", "max+mean"])
def test_fused_logits_match_unfused(name, pool):
    model = trained_statistics(name, pool=pool)
    points = torch.randn(3, 128, 3)
    with torch.no_grad():
        expected = model(points)
        fused = fuse_batchnorm(model)(points)
    assert all(m.is_fused for m in model.modules() if isinstance(m, LBR))
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(expected, torch.zeros_like(expected))


def test_fused_layer_differs_from_unfused_code_path():
    # The folded weights are really used: a fused LBR with its BatchNorm
    # removed afterwards still gives the BatchNorm'd output.
    torch.manual_seed(1)
    lbr = LBR(5, 7, bias=True).eval()
    with torch.no_grad():
        lbr.bn.running_mean.uniform_(-1, 1)
        lbr.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(10, 5)
    expected = lbr(x)
    lbr.fuse()
    lbr.bn = torch.nn.Identity()  # would break an unfused forward's statistics
    torch.testing.assert_close(lbr(x), expected, atol=1e-6, rtol=1e-6)


def test_state_dict_unchanged_and_train_or_load_unfuses():
    model = trained_statistics("pcea")
    keys = list(model.state_dict())
    model.fuse_batchnorm()
    assert list(model.state_dict()) == keys  # folded copies are not saved
    model.train()
    assert not any(m.fused_weight is not None for m in model.modules() if isinstance(m, LBR))
    model.fuse_batchnorm()
    model.load_state_dict(trained_statistics("pcea", seed=2).state_dict())
    assert not any(m.fused_weight is not None for m in model.modules() if isinstance(m, LBR))


def test_fuse_needs_eval_mode():
    lbr = LBR(3, 4)
    with pytest.raises(RuntimeError, match="eval mode"):
        lbr.fuse()


def test_fused_model_batch_independent():
    model = fuse_batchnorm(trained_statistics("pcea"))
    points = torch.randn(16, 128, 3)
    with torch.no_grad():
        batch = model(points)
        alone = model(points[5:6])
    torch.testing.assert_close(alone[0], batch[5], atol=1e-5, rtol=1e-5)
