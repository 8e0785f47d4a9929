"""The accelerated model against the plain one at model scale, and what accelerate() decides.

No monkeypatching: each test builds a plain tiny model (tests/conftest.py), a copy
goes through pcea.fast.accelerate, and both see the same inputs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from autograd_graph import backward_node_names
from torch import nn

import pcea
from pcea.fast import Features, accelerate, plain, sampling
from pcea.fast.layers import FastLBR, FastLinear
from pcea.fast.model import FastNeighborEmbedding, FastPCTClassifier
from pcea.layers import LBR
from pcea.model import NeighborEmbedding, PCTClassifier
from pcea.ops import sample_and_group

PRESETS = ["pcea", "pct", "pct-sa"]
HERE = Features.detect()


def accelerated(model: nn.Module, features: Features = HERE) -> nn.Module:
    return accelerate(copy.deepcopy(model), features)


def test_accelerate_swaps_every_module_once_and_keeps_the_state_dict(tiny_model):
    plain = tiny_model("pcea", trained=True)
    fast = accelerated(plain)
    assert type(fast) is FastPCTClassifier and isinstance(fast, PCTClassifier)
    assert type(fast.stage1) is type(fast.stage2) is FastNeighborEmbedding
    assert all(type(m) is FastLBR for m in fast.modules() if isinstance(m, LBR))
    linears = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert all(type(m) is (FastLinear if HERE.conv_linear else nn.Linear) for m in linears)
    assert not any(type(m) in (FastLBR, FastNeighborEmbedding, FastLinear) for m in plain.modules())
    state = fast.state_dict()
    assert list(state) == list(plain.state_dict())
    assert all(torch.equal(state[key], value) for key, value in plain.state_dict().items())
    assert accelerate(fast) is fast and type(fast.stage1) is FastNeighborEmbedding  # again: harmless
    subclass = type("MyStage", (NeighborEmbedding,), {})(4, 8, num_centers=4, k=2)
    assert type(accelerate(subclass)) is not FastNeighborEmbedding  # a subclass keeps its own forward


def test_the_switch_turns_everything_off(tiny_model, monkeypatch):
    monkeypatch.setenv("PCEA_FAST_OPS", "0")
    model = tiny_model("pcea")
    assert accelerate(model) is model
    assert not any(type(m).__module__.startswith("pcea.fast") for m in model.modules())


def test_a_model_off_the_cpu_is_left_as_built(tiny_model):
    """The fast paths are CPU code: accelerate decides by the device the model is on."""
    on_meta = tiny_model("pcea").to("meta")  # meta: another device type, on a CPU-only torch too
    assert accelerate(on_meta, HERE) is on_meta
    assert not any(type(m).__module__.startswith("pcea.fast") for m in on_meta.modules())
    with torch.device("meta"):
        built_there = pcea.build_model("pcea", num_classes=4)
    assert not any(type(m).__module__.startswith("pcea.fast") for m in accelerate(built_there).modules())
    partly = tiny_model("pcea")
    partly.head.to("meta")  # one part off the CPU is enough to keep the model as built
    assert not any(type(m).__module__.startswith("pcea.fast") for m in accelerate(partly).modules())
    on_cpu = tiny_model("pcea").to("meta").to_empty(device="cpu")  # back on the CPU: accelerated
    assert type(accelerate(on_cpu)) is FastPCTClassifier


@pytest.mark.parametrize("name", PRESETS)
def test_plain_undoes_accelerate(tiny_model, name):
    built = tiny_model(name, trained=True)
    model = accelerate(copy.deepcopy(built), HERE)
    points = torch.randn(3, 128, 3)
    with torch.no_grad():
        expected = built.eval()(points)
        model.eval()(points)  # the fast forward caches its folded weights on the modules
    assert plain(model) is model
    for (path, original), (path_back, back) in zip(built.named_modules(), model.named_modules(), strict=True):
        assert path_back == path and type(back) is type(original), path
        assert set(vars(back)) == set(vars(original)), path  # no decision or cache left behind
    state = model.state_dict()
    assert list(state) == list(built.state_dict())
    assert all(torch.equal(state[key], value) for key, value in built.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(points), expected)  # the same class runs the same operations
    assert plain(built) is built and type(built) is PCTClassifier  # a plain model: nothing to undo
    assert type(accelerate(model, HERE)) is FastPCTClassifier  # and it can be accelerated again


@pytest.mark.skipif(not sampling.available(), reason="numba is not installed")
def test_the_kernels_decision_governs_fps_and_knn(tiny_model, monkeypatch):
    calls = []

    def count(kernel):
        def counted(*args):
            calls.append(kernel.__name__)
            return kernel(*args)
        return counted

    monkeypatch.setattr(sampling, "farthest_point_sample_cpu", count(sampling.farthest_point_sample_cpu))
    monkeypatch.setattr(sampling, "knn_cpu", count(sampling.knn_cpu))
    built = tiny_model("pcea", trained=True)
    points = torch.randn(2, 128, 3)
    without = accelerate(copy.deepcopy(built), Features(conv_linear=HERE.conv_linear, kernels=False))
    with_kernels = accelerate(copy.deepcopy(built), Features(conv_linear=HERE.conv_linear, kernels=True))
    monkeypatch.setenv("PCEA_FAST_OPS", "0")  # read once, by accelerate: a later change has no effect
    with torch.no_grad():
        torch.testing.assert_close(without.eval()(points), built.eval()(points), atol=1e-5, rtol=1e-5)
        without.train()(points)
        assert calls == []  # Features.kernels off: the plain FPS and kNN, in eval and in training
        torch.testing.assert_close(with_kernels.eval()(points), built(points), atol=1e-5, rtol=1e-5)
    assert sorted(set(calls)) == ["farthest_point_sample_cpu", "knn_cpu"]


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("pool", ["max", "max+mean"])
def test_eval_logits_equal_the_plain_model(tiny_model, name, pool):
    plain = tiny_model(name, trained=True, pool=pool)
    fast = accelerated(plain).eval()
    points = torch.randn(3, 128, 3)
    with torch.no_grad():
        expected = plain(points)
        torch.testing.assert_close(fast(points), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast(points), expected, atol=1e-5, rtol=1e-5)  # eval with autograd
    assert not torch.equal(expected, torch.zeros_like(expected))


@pytest.mark.parametrize("features", [Features(conv_linear=False, kernels=False), HERE])
def test_eval_logits_with_each_feature_set(tiny_model, features):
    plain = tiny_model("pcea", trained=True)
    points = torch.randn(3, 128, 3)
    with torch.no_grad():
        torch.testing.assert_close(accelerated(plain, features)(points), plain(points), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PRESETS)
def test_a_training_step_gives_the_plain_loss_gradients_and_statistics(tiny_model, name):
    """In float64, so that the comparison is tight (in float32 the tiny batch's BatchNorms amplify
    rounding to ~1e-4 either way); float64 still takes the fused BatchNorm kernels."""
    plain = tiny_model(name, num_classes=5).double()
    fast = accelerated(plain)
    points, labels = torch.randn(4, 128, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 3])

    def step(net):
        torch.manual_seed(1)  # the same dropout masks
        loss = nn.functional.cross_entropy(net.train()(points), labels)
        loss.backward()
        return loss, backward_node_names(loss)

    loss, nodes = step(fast)
    if HERE.kernels:  # both stages and the fusion layer went through the fused kernels
        assert {"_GatherNormActBackward", "_NormMaxBackward"} <= nodes
    plain_loss, plain_nodes = step(plain)
    assert "_NormMaxBackward" not in plain_nodes
    torch.testing.assert_close(loss, plain_loss, atol=1e-12, rtol=1e-10)
    for (key, p), q in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-8, msg=key)
    for (key, a), b in zip(fast.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=key)


def test_a_float32_training_step_stays_close_to_the_plain_model(tiny_model):
    plain = tiny_model("pcea", num_classes=5)
    fast = accelerated(plain)
    points, labels = torch.randn(4, 128, 3), torch.tensor([0, 1, 2, 3])
    losses = []
    for net in (fast, plain):
        torch.manual_seed(1)
        loss = nn.functional.cross_entropy(net.train()(points), labels)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    for p, q in zip(fast.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("name", PRESETS)
def test_training_graph_has_no_copy_of_a_whole_tensor(tiny_model, name):
    nodes = backward_node_names(accelerated(tiny_model(name)).train()(torch.randn(2, 128, 3)).sum())
    assert not any("CopySlices" in node or "AsStrided" in node for node in nodes), nodes


def test_an_optimiser_built_before_accelerate_trains_the_accelerated_model(tiny_model):
    model = tiny_model("pcea")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    accelerate(model)  # the same parameter objects: nothing to rebuild
    nn.functional.cross_entropy(model(torch.randn(4, 128, 3)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)
               if p.grad is not None and p.grad.abs().sum() > 0)


@pytest.mark.parametrize("chunk_elements", [7 * 5 * 16, 1, 1 << 20])
def test_inference_in_chunks_equals_the_plain_grouped_mlp(chunk_elements):
    """Without autograd in eval mode the stage runs a few centres at a time: 7 centres of 5
    neighbours per chunk (60 centres: 8 full chunks and a ragged one), one, or all at once."""
    torch.manual_seed(0)
    stage = NeighborEmbedding(6, 16, num_centers=20, k=5)
    with torch.no_grad():
        for lbr in (stage.lbr1, stage.lbr2):
            lbr.bn.weight.uniform_(-1, 1)
            lbr.bn.running_mean.uniform_(-0.5, 0.5)
            lbr.bn.running_var.uniform_(0.5, 2.0)
    stage.eval()
    fast = accelerated(stage)
    fast.chunk_elements = chunk_elements
    xyz, feats = torch.randn(3, 50, 3), torch.randn(3, 50, 6)
    with torch.no_grad():
        centers, out = fast(xyz, feats)
        expected_centers, grouped = sample_and_group(xyz, feats, 20, 5)  # (B, M, k, 12)
        rows = grouped.reshape(-1, 12)
        for lbr in (stage.lbr1, stage.lbr2):
            rows = torch.relu(lbr.bn(lbr.linear(rows)))  # the plain modules, eval statistics
        expected = rows.view(3, 20, 5, 16).amax(dim=2)
    assert torch.equal(centers, expected_centers)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_batch_independent_and_bf16_autocast(tiny_model):
    fast = accelerated(tiny_model("pcea", trained=True))
    points = torch.randn(16, 128, 3)
    with torch.no_grad():
        batch = fast(points)
        torch.testing.assert_close(fast(points[5:6])[0], batch[5], atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(points)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - batch).abs().max() < 0.1 * batch.abs().max()


def test_accelerate_in_eval_mode_is_the_plain_model(tiny_model):
    plain = tiny_model("pcea", trained=True)
    points = torch.randn(3, 128, 3)
    with torch.no_grad():
        expected = plain(points)
        model = accelerate(copy.deepcopy(plain).train()).eval()
        assert not model.training and type(model) is FastPCTClassifier
        torch.testing.assert_close(model(points), expected, atol=1e-5, rtol=1e-5)


FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.mark.parametrize("name", PRESETS)
def test_checkpoints_written_before_give_their_logits_accelerated(name):
    """The accelerated path of tests/test_model.py's checkpoint test, with each feature set."""
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)
    for features in (Features(conv_linear=False, kernels=False), HERE):
        model = accelerate(pcea.load_model(FIXTURES / f"{name}.pt"), features)
        with torch.no_grad():
            torch.testing.assert_close(model(expected["points"]), expected[name]["logits"],
                                       atol=1e-5, rtol=1e-5)
