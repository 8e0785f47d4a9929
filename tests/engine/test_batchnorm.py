"""pcea.engine.batchnorm: running statistics recomputed as the model is evaluated."""

from __future__ import annotations

import pytest
import torch
from tiny_models import SMALLEST, build_tiny
from torch import nn

from pcea.engine.batchnorm import recompute_batchnorm


def _net() -> nn.Sequential:
    """Linear, BatchNorm, dropout, then a BatchNorm that sees the dropout's output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    with torch.no_grad():  # statistics as a training run leaves them: somewhere else
        for norm in (net[1], net[3]):
            norm.running_mean.fill_(7.0)
            norm.running_var.fill_(9.0)
            norm.num_batches_tracked.fill_(123)
    return net


def _expected(net: nn.Sequential, batches: list[torch.Tensor],
              upto: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over batches of each batch's mean and unbiased variance of the input of ``net[upto]``,
    with dropout as in evaluation (the identity) and each earlier BatchNorm normalising by its batch."""
    means, variances = [], []
    for x in batches:
        for layer in net[:upto]:
            if isinstance(layer, nn.BatchNorm1d):
                x = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + layer.eps)
                x = x * layer.weight + layer.bias
            elif not isinstance(layer, nn.Dropout):
                x = layer(x)
        means.append(x.mean(0))
        variances.append(x.var(0, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def test_statistics_are_the_mean_over_batches_with_dropout_off():
    net = _net()
    batches = [torch.randn(8, 3) * 3 + 1, torch.randn(5, 3) - 2, torch.randn(16, 3)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    assert recompute_batchnorm(net, iter(batches)) == 3
    with torch.no_grad():
        for index in (1, 3):
            mean, var = _expected(net, batches, index)
            torch.testing.assert_close(net[index].running_mean, mean)
            torch.testing.assert_close(net[index].running_var, var)
            assert net[index].num_batches_tracked.item() == 3
    for key, value in weights.items():  # the weights are not touched
        assert torch.equal(net.state_dict()[key], value), key
    assert net[1].momentum == 0.1 and net[3].momentum == 0.1  # torch's default, restored


@pytest.mark.parametrize("training", [True, False])
def test_the_model_is_left_in_the_mode_it_was_in(training):
    net = _net().train(training)
    recompute_batchnorm(net, [torch.randn(4, 3)])
    assert all(module.training == training for module in net.modules())


def test_no_batches_leaves_the_statistics_as_they_were():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="no batches"):
        recompute_batchnorm(net, iter([]))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert net[1].momentum == 0.1


def test_an_error_mid_pass_leaves_the_statistics_as_they_were():
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def batches():
        yield torch.randn(4, 3)
        yield torch.randn(4, 5)  # the wrong width: the Linear refuses it, after one batch was counted

    with pytest.raises(RuntimeError):
        recompute_batchnorm(net, batches())
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert not any(module.training for module in net.modules()) and net[3].momentum == 0.1


def test_a_model_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="no BatchNorm"):
        recompute_batchnorm(nn.Sequential(nn.Linear(3, 3), nn.Dropout()), [torch.randn(2, 3)])


def test_pcea_models_every_batchnorm_is_recomputed_and_the_output_is_deterministic():
    model = build_tiny(trained=True, size=SMALLEST)
    before = {name: module.running_var.clone() for name, module in model.named_modules()
              if isinstance(module, nn.BatchNorm1d)}
    torch.manual_seed(1)
    batches = [torch.randn(4, SMALLEST["num_points"], 3) for _ in range(2)]
    recompute_batchnorm(model, batches)
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm1d):
            assert not torch.equal(module.running_var, before[name]), name
            assert module.num_batches_tracked.item() == 2, name
    first = model(batches[0])
    recompute_batchnorm(model, batches)  # the same batches give the same statistics: dropout is off
    assert torch.equal(model(batches[0]), first) and not model.training
