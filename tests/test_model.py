"""The PCT-style classifier: every preset forward and backward, exactness, size, errors."""

import dataclasses
from pathlib import Path

import pytest
import torch
from autograd_graph import backward_node_names

import pcea
from pcea.engine.checkpoint import load_checkpoint
from pcea.model import PRESETS, ModelConfig, NeighborEmbedding, PCTClassifier
from pcea.ops import sample_and_group


def test_pct_preset_has_the_parameter_count_of_the_original_pct():
    model = pcea.build_model("pct", num_classes=40)
    assert sum(p.numel() for p in model.parameters()) == 2_876_136


def test_external_attention_preset_is_smaller_than_pct():
    count = {name: sum(p.numel() for p in pcea.build_model(name).parameters()) for name in PRESETS}
    # Each block's offset-attention core (16,384 + 65,792) becomes two 256x64 memories (32,768).
    assert count["pct"] - count["pcea"] == 4 * (16_384 + 65_792 - 32_768)
    assert count["pct-sa"] > count["pct"]


@pytest.mark.parametrize("name", list(PRESETS))
# 1,024 and 2,048 points: the full-size model for seconds each, left to `make test` (slow)
@pytest.mark.parametrize("num_points", [512, pytest.param(1024, marks=pytest.mark.slow),
                                        pytest.param(2048, marks=pytest.mark.slow)])
def test_presets_forward_in_train_and_eval_mode(name, num_points):
    torch.manual_seed(0)
    model = pcea.build_model(name, num_classes=10, num_points=num_points)
    points = torch.randn(4, num_points, 3)
    logits = model.train()(points)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    model.eval()
    with torch.no_grad():
        assert model(points).shape == (4, 10)
        assert model(points[:1]).shape == (1, 10)


@pytest.mark.parametrize("name", list(PRESETS))
def test_backward_gives_finite_gradients_for_every_parameter(name):
    torch.manual_seed(0)
    model = pcea.build_model(name, num_classes=5, num_points=512)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 512, 3)), torch.tensor([1, 3]))
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.slow
def test_logits_do_not_depend_on_the_batch(name):
    """In eval mode a cloud gets the same logits alone or in a batch of 16."""
    torch.manual_seed(0)
    model = pcea.build_model(name, num_classes=40, num_points=512).eval()
    with torch.no_grad():  # non-trivial running statistics, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    points = torch.randn(16, 512, 3)
    with torch.no_grad():
        batched = model(points)
        for i in (0, 7, 15):
            torch.testing.assert_close(model(points[i : i + 1])[0], batched[i], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_tiny_batch_is_overfitted(tiny_model):
    model = tiny_model("pcea", num_classes=4, dropout=0.0)
    points = torch.randn(8, 128, 3)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):  # stops as soon as the loss has fallen by 90 %
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(points), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] <= 0.1 * losses[0]:
            break
    assert losses[-1] <= 0.1 * losses[0], (losses[0], min(losses), len(losses))


def test_state_dict_round_trip_gives_identical_logits(tiny_model):
    model = tiny_model("pcea", num_classes=7)
    model.train()(torch.randn(4, 128, 3))  # move the running statistics away from their init
    clone = PCTClassifier(ModelConfig(**model.config.to_dict()))
    clone.load_state_dict(model.state_dict())
    points = torch.randn(3, 128, 3)
    with torch.no_grad():
        assert torch.equal(model.eval()(points), clone.eval()(points))


@pytest.mark.parametrize("training", [True, False])
def test_neighbor_embedding_equals_the_plain_grouped_mlp(training):
    """The pre-gather rewrite against sample_and_group followed by the MLP on every row:
    the same outputs and, in training mode, the same gradients."""
    torch.manual_seed(0)
    stage = NeighborEmbedding(6, 16, num_centers=20, k=5)
    with torch.no_grad():
        stage.lbr1.bn.running_mean.uniform_(-0.5, 0.5)
    stage.train(training)
    xyz, feats = torch.randn(3, 50, 3), torch.randn(3, 50, 6, requires_grad=True)
    cotangent = torch.randn(3, 20, 16)

    def grads(out):
        stage.zero_grad()
        feats.grad = None
        (out * cotangent).sum().backward()
        return [feats.grad] + [p.grad for p in stage.parameters()]

    centers, out = stage(xyz, feats)
    fast_grads = grads(out)
    expected_centers, grouped = sample_and_group(xyz, feats, 20, 5)  # (B, M, k, 12)
    # The plain form, spelled out: Linear, BatchNorm and ReLU on every row, then the max.
    rows = grouped.reshape(-1, 12)
    for lbr in (stage.lbr1, stage.lbr2):
        rows = torch.relu(lbr.bn(lbr.linear(rows)))
    expected = rows.view(3, 20, 5, 16).amax(dim=2)  # (B, M, 16)
    assert torch.equal(centers, expected_centers)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for fast, plain in zip(fast_grads, grads(expected), strict=True):
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)


def test_normals_and_max_mean_pooling(tiny_model, tiny_options):
    model = tiny_model("pcea", num_classes=3, in_channels=6, pool="max+mean")
    assert model.head[0].linear.in_features == model.num_features == 2 * tiny_options["fuse_dim"]
    assert model(torch.randn(2, 128, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(B, N, 6\).*\(2, 128, 3\)"):
        model(torch.randn(2, 128, 3))


def test_too_few_points_names_both_numbers():
    model = pcea.build_model("pcea").eval()
    with pytest.raises(ValueError, match="N=300.*512 centres"):
        model(torch.randn(1, 300, 3))


def test_training_on_one_cloud_is_a_clear_error(tiny_model):
    model = tiny_model("pcea")
    with pytest.raises(ValueError, match="at least 2 clouds"):
        model(torch.randn(1, 128, 3))


def test_predict_returns_probabilities_and_keeps_the_mode(tiny_model):
    model = tiny_model("pcea", num_classes=5).train()
    probs = model.predict(torch.randn(128, 3).numpy())
    assert probs.shape == (5,)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    assert model.predict(torch.randn(3, 128, 3)).shape == (3, 5)
    assert model.training


@pytest.mark.parametrize(
    "kwargs, match",
    [({"name": "pointnet"}, "unknown model 'pointnet'"), ({"memroy": 8}, "unknown model option.*memroy"),
     ({"attention": "self"}, "preset name"), ({"centers": (512, 600)}, "centers"),
     ({"neighbors": (32, 600)}, "k=600"), ({"pool": "sum"}, "pool='sum'")],
)
def test_build_model_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pcea.build_model(**kwargs)


@pytest.mark.parametrize("name", list(PRESETS))
def test_training_graph_has_no_copy_of_a_whole_tensor(name, tiny_model):
    """No in-place op on a view in the training forward: autograd would otherwise clone the base
    tensor in the backward pass (CopySlices), the B x M x k x C groups included."""
    model = tiny_model(name).train()
    nodes = backward_node_names(model(torch.randn(2, 128, 3)).sum())
    assert "MmBackward0" in nodes  # the walk does reach the layers
    assert not any("CopySlices" in node or "AsStrided" in node for node in nodes), nodes


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", list(PRESETS))
def test_checkpoints_written_before_load_with_the_same_logits(name):
    """tests/fixtures holds tiny checkpoints and their logits written by the model code of
    commit 5542844 (tests/fixtures/make_checkpoints.py): every state_dict key and its
    meaning must survive any rewrite of the model."""
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)
    points, want = expected["points"], expected[name]
    payload = load_checkpoint(FIXTURES / f"{name}.pt")
    plain = PCTClassifier(ModelConfig(**payload["model_config"]))
    plain.load_state_dict(payload["model"])  # strict: the same keys, no more, no fewer
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(points), want["logits"], atol=1e-5, rtol=1e-5)
        # Batch statistics (this forward also moves the running ones, hence second).
        torch.testing.assert_close(plain.train().forward_features(points), want["train_features"],
                                   atol=1e-5, rtol=1e-5)
        loaded = pcea.load_model(FIXTURES / f"{name}.pt")
        torch.testing.assert_close(loaded(points), want["folded_logits"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(points), want["logits"], atol=1e-5, rtol=1e-5)
    assert loaded.class_names == ["a", "b", "c"]


def test_presets_are_configurations_that_differ_only_in_the_attention():
    assert {name: config.attention for name, config in PRESETS.items()} == {
        "pcea": "external", "pct": "offset", "pct-sa": "self"}
    for config in PRESETS.values():
        assert dataclasses.replace(config, attention="external") == ModelConfig()
    model = pcea.build_model("pct", num_classes=7, memory=8)
    assert model.config == dataclasses.replace(PRESETS["pct"], num_classes=7, memory=8)
    assert PRESETS["pct"].num_classes == 40 and PRESETS["pct"].memory == 64  # the preset is untouched


def test_timm_classifier_interface(tiny_model, tiny_options):
    model = tiny_model("pcea", num_classes=5).eval()
    points = torch.randn(3, 128, 3)
    with torch.no_grad():
        features = model.forward_features(points)
        hidden = model.forward_head(features, pre_logits=True)
        logits = model(points)
    assert features.shape == (3, model.num_features) and model.num_features == tiny_options["fuse_dim"]
    assert hidden.shape == (3, model.head_hidden_size)
    assert model.head_hidden_size == tiny_options["head_dims"][1]
    torch.testing.assert_close(model.get_classifier()(hidden), logits)
    torch.testing.assert_close(model.forward_head(features), logits)


def test_reset_classifier_keeps_the_features_and_replaces_the_last_layer(tiny_model):
    model = tiny_model("pcea", num_classes=5).eval()
    model.class_names = list("abcde")
    points = torch.randn(2, 128, 3)
    with torch.no_grad():
        features = model.forward_features(points)
        model.reset_classifier(3)
        assert model(points).shape == (2, 3)
        torch.testing.assert_close(model.forward_features(points), features)
    assert model.config.num_classes == 3 and model.class_names is None
    clone = PCTClassifier(ModelConfig(**model.config.to_dict()))
    clone.load_state_dict(model.state_dict())  # the stored config describes the new head
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(0)


def test_class_labels_are_the_names_or_numbered_classes(tiny_model):
    """The one fallback that classify, export and checkpoints use for a model without names."""
    model = tiny_model("pcea", num_classes=3)
    assert model.class_labels() == ["class0", "class1", "class2"]
    model.class_names = ["ball", "box", "rod"]
    labels = model.class_labels()
    assert labels == ["ball", "box", "rod"] and labels is not model.class_names
