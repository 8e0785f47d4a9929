"""Training for real files: --yaw, --tilt, --scale, --occlusion, --wolf and --noise augmentations, and --init
(fine-tuning)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from engine_tiny import TINY_MODEL, tiny_config
from tiny_models import build_tiny, save_tiny_checkpoint

import pcea.engine.run as run_module
import pcea.engine.splits as splits_module
import pcea.engine.train as train_module
from pcea.data.transforms import augment_item, pct_train_transform
from pcea.digest import file_sha256
from pcea.engine.checkpoint import load_checkpoint, save_classifier
from pcea.engine.config import TrainConfig
from pcea.engine.evaluate import evaluate_checkpoint
from pcea.engine.splits import stream_seed
from pcea.engine.train import init_weights, train, train_transform
from pcea.errors import PceaError, PceaFileError
from pcea.model import build_model

pytestmark = pytest.mark.slow  # each test trains the tiny model for an epoch or more (seconds each)


def _cloud() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((128, 3)) * np.array([1.0, 0.5, 0.25])).astype(np.float32)


def test_without_yaw_or_occlusion_the_augmentation_is_pcts_draw_for_draw():
    cloud = _cloud()
    ours = augment_item(cloud, train_transform(TrainConfig()), seed=3, epoch=2, index=7)
    pcts = augment_item(cloud, pct_train_transform(), seed=3, epoch=2, index=7)
    np.testing.assert_array_equal(ours, pcts)
    assert train_transform(TrainConfig(augment="none")) is None


def test_yaw_turns_clouds_about_the_up_axis_only_and_is_seeded():
    cloud = _cloud()
    transform = train_transform(TrainConfig(augment="none", yaw=180))
    turned = [augment_item(cloud, transform, seed=0, epoch=1, index=i) for i in range(20)]
    for out in turned:
        np.testing.assert_allclose(out[:, 1], cloud[:, 1], atol=1e-5)                   # y is up
        np.testing.assert_allclose(np.linalg.norm(out[:, [0, 2]], axis=1),
                                   np.linalg.norm(cloud[:, [0, 2]], axis=1), atol=1e-5)
    angles = [np.arctan2(out[0, 2], out[0, 0]) for out in turned]
    assert np.ptp(angles) > 2.0                                                       # many yaws
    np.testing.assert_array_equal(turned[4], augment_item(cloud, transform, seed=0, epoch=1, index=4))
    assert not np.array_equal(turned[4], augment_item(cloud, transform, seed=0, epoch=2, index=4))


def test_tilt_leans_the_up_axis_by_at_most_the_angle_keeps_the_shape_and_is_seeded():
    cloud = _cloud()
    transform = train_transform(TrainConfig(augment="none", tilt=20))
    leaned = [augment_item(cloud, transform, seed=0, epoch=1, index=i) for i in range(200)]
    up = np.array([0.0, 1.0, 0.0])
    tilts = []
    for out in leaned:
        matrix, *_ = np.linalg.lstsq(cloud, out, rcond=None)            # out = cloud @ matrix
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-4)  # a rotation: shape kept
        tilts.append(np.degrees(np.arccos(np.clip((up @ matrix) @ up, -1, 1))))
    # Rz(az) @ Rx(ax) leans y by arccos(cos ax cos az): at most about 28 degrees for 20 and 20.
    assert max(tilts) <= np.degrees(np.arccos(np.cos(np.radians(20)) ** 2)) + 1e-3
    assert max(tilts) > 15 and min(tilts) < 5                                        # the whole range
    np.testing.assert_array_equal(leaned[4], augment_item(cloud, transform, seed=0, epoch=1, index=4))
    assert not np.array_equal(leaned[4], augment_item(cloud, transform, seed=0, epoch=2, index=4))
    config = TrainConfig(tilt=10, yaw=180)
    assert [type(step).__name__ for step in train_transform(config).transforms][:2] == ["Tilt", "RotateUp"]


def test_scale_draws_pcts_per_axis_factors_from_one_over_s_to_s():
    cloud = _cloud()
    extent = np.ptp(cloud[:, :3], axis=0)

    def factors(transform) -> np.ndarray:  # the shift and the shuffle leave each axis' extent x factor
        outs = [augment_item(cloud, transform, seed=0, epoch=1, index=i) for i in range(300)]
        return np.array([np.ptp(out[:, :3], axis=0) / extent for out in outs])    # (300, 3)

    pcts = factors(train_transform(TrainConfig()))                              # 1.5: PCT's range
    assert pcts.min() >= 2 / 3 - 1e-5 and pcts.max() <= 3 / 2 + 1e-5
    wide = factors(train_transform(TrainConfig(scale=2)))
    assert wide.min() >= 0.5 - 1e-5 and wide.max() <= 2 + 1e-5
    assert wide.min() < 0.6 and wide.max() > 1.8                                     # the whole range


def test_occlusion_removes_part_of_some_clouds_and_keeps_their_size():
    cloud = _cloud()
    transform = train_transform(TrainConfig(augment="none", occlusion=0.5))
    outs = [augment_item(cloud, transform, seed=0, epoch=1, index=i) for i in range(40)]
    assert all(out.shape == cloud.shape for out in outs)
    occluded = [len(np.unique(out, axis=0)) < len(cloud) for out in outs]
    assert 0.25 < np.mean(occluded) < 0.75                                            # about half


def test_wolf_deforms_some_clouds_before_pcts_augmentation_and_keeps_their_size():
    cloud = _cloud()
    transform = train_transform(TrainConfig(wolf=0.5))
    assert [type(step).__name__ for step in transform.transforms] == [
        "PointWOLF", *(type(step).__name__ for step in pct_train_transform().transforms)]
    alone = train_transform(TrainConfig(augment="none", wolf=0.5))
    outs = [augment_item(cloud, alone, seed=0, epoch=1, index=i) for i in range(40)]
    assert all(out.shape == cloud.shape for out in outs)
    deformed = [not np.array_equal(out, cloud) for out in outs]
    assert 0.25 < np.mean(deformed) < 0.75                                            # about half


def test_noise_comes_after_the_shape_changes_and_before_the_pose():
    config = TrainConfig(occlusion=0.5, wolf=0.5, noise=0.3, yaw=180)
    pcts = [type(step).__name__ for step in pct_train_transform().transforms]
    assert [type(step).__name__ for step in train_transform(config).transforms] == [
        "Occlude", "PointWOLF", "Noise", "RotateUp", *pcts]
    cloud = _cloud()
    alone = train_transform(TrainConfig(augment="none", noise=0.5))
    outs = [augment_item(cloud, alone, seed=0, epoch=1, index=i) for i in range(40)]
    assert all(out.shape == cloud.shape for out in outs)
    assert 0.25 < np.mean([not np.array_equal(out, cloud) for out in outs]) < 0.75    # about half
    np.testing.assert_array_equal(outs[3], augment_item(cloud, alone, seed=0, epoch=1, index=3))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("yaw", 181, "yaw=181: need 0 <= x <= 180"),
    ("tilt", 91, "tilt=91: need 0 <= x <= 90"),
    ("scale", 0.9, "scale=0.9: need 1 <= x <= 4"),
    ("occlusion", 1.5, "occlusion=1.5: need 0 <= x <= 1"),
    ("wolf", 1.5, "wolf=1.5: need 0 <= x <= 1"),
    ("noise", -0.1, "noise=-0.1: need 0 <= x <= 1"),
    ("rsmix", -0.5, "rsmix=-0.5: need 0 <= x <= 1"),
    ("init", "", "init='': expected a non-empty string or null"),
])
def test_bad_values_are_refused_with_the_config_wording(field, value, message):
    with pytest.raises(PceaError, match=message.replace("(", r"\(")):
        TrainConfig(**{field: value})


def test_init_copies_every_layer_for_the_same_classes_and_all_but_the_classifier_otherwise(tmp_path):
    source = save_tiny_checkpoint(tmp_path / "src.pt", size=dict(TINY_MODEL))
    reference = load_checkpoint(source)["model"]
    same = build_tiny(num_classes=4, seed=1, size=dict(TINY_MODEL))
    init_weights(same, str(source), ["ball", "box", "disc", "rod"], log=lambda line: None)
    for key, value in same.state_dict().items():
        torch.testing.assert_close(value, reference[key])
    other = build_tiny(num_classes=3, seed=1, size=dict(TINY_MODEL))
    fresh = other.get_classifier().weight.detach().clone()
    lines = []
    init_weights(other, str(source), ["a", "b", "c"], log=lines.append)
    torch.testing.assert_close(other.get_classifier().weight, fresh)                  # kept fresh
    for key, value in other.state_dict().items():
        if not key.startswith(f"head.{len(other.head) - 1}."):
            torch.testing.assert_close(value, reference[key])                        # copied
    assert "every layer but the classifier (4 classes -> 3)" in lines[0]


def test_init_refuses_weights_that_do_not_fit(tmp_path):
    source = save_tiny_checkpoint(tmp_path / "src.pt", size=dict(TINY_MODEL))
    wider = build_model("pcea", num_classes=4, **dict(TINY_MODEL, memory=32))
    with pytest.raises(PceaFileError, match="--init: its layers do not fit this model"):
        init_weights(wider, str(source), ["ball", "box", "disc", "rod"])


def test_a_run_started_from_init_begins_where_the_source_ended(tiny_h5, tmp_path):
    train(tiny_config(tiny_h5, epochs=2), tmp_path / "first", log=lambda line: None)
    lines = []
    train(tiny_config(tiny_h5, epochs=1, init=str(tmp_path / "first")), tmp_path / "tuned", log=lines.append)
    assert any(line.startswith("init: every layer from") for line in lines)
    first = load_checkpoint(tmp_path / "first" / "last.pt")["metrics"]["history"]
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt")["metrics"]["history"]
    assert tuned[0]["train_loss"] < first[0]["train_loss"]       # its first epoch starts trained
    train(tiny_config(tiny_h5, epochs=1, init=str(tmp_path / "first"), yaw=90, occlusion=0.3),
          tmp_path / "robust", log=lambda line: None)
    stored = load_checkpoint(tmp_path / "robust" / "last.pt")["train_config"]
    assert (stored["init"], stored["yaw"], stored["occlusion"]) == (str(tmp_path / "first"), 90, 0.3)


def _record_training_steps(monkeypatch) -> list[tuple[bytes, bytes]]:
    """Record each training step's batch and the dropout masks' random state (the torch generator's)."""
    steps = []
    plain = train_module.forward

    def recording(run, points, net=None):
        if run.net.training:  # a training step, not validation
            steps.append((points.numpy().tobytes(), torch.get_rng_state().numpy().tobytes()))
        return plain(run, points, net)

    monkeypatch.setattr(train_module, "forward", recording)
    return steps


def test_a_run_from_init_does_not_replay_the_draws_its_source_trained_with(tiny_h5, tmp_path, monkeypatch):
    # With the source's seed alone, every step would pair the source's batch with the source's
    # dropout masks again, and weights continued that way learn to read the labels from the masks.
    steps = _record_training_steps(monkeypatch)
    recipe = {"epochs": 1, "balanced": True, "wolf": 0.5, "rsmix": 0.5}
    train(tiny_config(tiny_h5, **recipe), tmp_path / "first", log=lambda line: None)
    first = list(steps)
    steps.clear()
    train(tiny_config(tiny_h5, **recipe), tmp_path / "again", log=lambda line: None)
    assert steps == first                                  # the same seed from random weights: the same run
    steps.clear()
    lines = []
    train(tiny_config(tiny_h5, init=str(tmp_path / "first"), **recipe), tmp_path / "tuned", log=lines.append)
    assert len(steps) == len(first)
    assert not {batch for batch, _ in steps} & {batch for batch, _ in first}     # other batches
    assert not {masks for _, masks in steps} & {masks for _, masks in first}     # other dropout masks
    digest = file_sha256(tmp_path / "first" / "best.pt")
    assert load_checkpoint(tmp_path / "tuned" / "last.pt")["stream_seed"] == stream_seed(0, digest)
    assert any(line.startswith("random streams: seed 0 with the --init file's SHA-256") for line in lines)


def test_a_run_from_init_resumes_its_own_draws_without_the_init_file(tiny_h5, tmp_path, monkeypatch):
    recipe = {"epochs": 2, "balanced": True, "rsmix": 0.5}
    train(tiny_config(tiny_h5, epochs=1), tmp_path / "first", log=lambda line: None)
    config = tiny_config(tiny_h5, init=str(tmp_path / "first"), **recipe)
    train(config, tmp_path / "straight", log=lambda line: None)
    train(config, tmp_path / "resumed", stop_after=1, log=lambda line: None)
    shutil.rmtree(tmp_path / "first")  # the stream seed is in the checkpoint: the file is not read again
    train(None, tmp_path / "resumed", resume=True, log=lambda line: None)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert straight["stream_seed"] == resumed["stream_seed"] != 0
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    # A last.pt from before the stream seed was recorded resumes with the seed, as it was trained.
    assert run_module._stream_seed(config, {"epoch": 1}) == 0
    assert run_module._stream_seed(config, {"stream_seed": 7}) == 7


@pytest.mark.parametrize(("trained", "holdout", "refused"), [
    ({"seed": 0, "val_split": 0.25}, (0.25, 0), None),                              # the same hold-out
    ({"seed": 0, "val_split": 0.25}, (0.25, 1), "--val-split 0.25 --split-seed 0"),  # another seed
    ({"seed": 0, "val_split": 0.25}, (0.1, 0), "--val-split 0.25 --split-seed 0"),   # another fraction
    ({"seed": 0, "val_split": 0.25, "split_seed": 3}, (0.25, 3), None),             # its split_seed counts
    ({"seed": 3, "val_split": 0.25, "split_seed": None}, (0.25, 3), None),          # unset: its seed
    ({"seed": 0, "val_split": 0.0}, (0.25, 0), "it held out none, so use --val-split 0 --select-on last"),
    ({"seed": 0, "val_split": 0.25}, (0.0, 1), None),                               # no validation here
    ({}, (0.25, 1), None),                                                          # nothing to compare
])
def test_init_refuses_weights_of_the_same_classes_that_held_out_other_clouds(tmp_path, trained, holdout,
                                                                             refused):
    names = ["ball", "box", "disc", "rod"]
    source = build_tiny(num_classes=4, size=dict(TINY_MODEL))
    source.class_names = names
    path = save_classifier(tmp_path / "src.pt", source, extra={"train_config": trained})
    model = build_tiny(num_classes=4, seed=1, size=dict(TINY_MODEL))
    if refused is None:
        init_weights(model, str(path), names, log=lambda line: None, holdout=holdout)
    else:
        with pytest.raises(PceaFileError, match=r"src.pt: --init: trained on these 4 classes with "
                                                r"another validation hold-out .* would validate on clouds "
                                                r"it trained on") as refusal:
            init_weights(model, str(path), names, log=lambda line: None, holdout=holdout)
        assert refusal.value.args[0].endswith(refused)
    # Other classes are other data: their hold-out says nothing of this run's.
    init_weights(build_tiny(num_classes=3, size=dict(TINY_MODEL)), str(path), ["a", "b", "c"],
                 log=lambda line: None, holdout=holdout)


def test_another_seed_from_init_keeps_the_sources_hold_out_with_split_seed(tiny_h5, tmp_path, monkeypatch):
    train(tiny_config(tiny_h5, epochs=1), tmp_path / "first", log=lambda line: None)
    leaky = tiny_config(tiny_h5, epochs=1, seed=1, init=str(tmp_path / "first"))
    with pytest.raises(PceaFileError, match=r"\(val_split 0.25, seed 0; this run: 0.25, seed 1\)"):
        train(leaky, tmp_path / "leaky", log=lambda line: None)
    assert not (tmp_path / "leaky" / "config.yaml").exists()                      # refused before writing
    # The run and pcea eval --split val draw the hold-out with split_seed, not seed.
    seeds = []
    draw = splits_module.split_train_val

    def recorded(labels, fraction, seed, **kwargs):
        seeds.append(seed)
        return draw(labels, fraction, seed, **kwargs)

    monkeypatch.setattr(run_module, "split_train_val", recorded)
    monkeypatch.setattr(splits_module, "split_train_val", recorded)  # pcea eval's, through recorded_split
    tuned = tiny_config(tiny_h5, epochs=1, seed=1, split_seed=0, init=str(tmp_path / "first"))
    train(tuned, tmp_path / "tuned", log=lambda line: None)
    report = evaluate_checkpoint(tmp_path / "tuned", split="val", write=False)
    assert seeds == [0, 0]
    history = load_checkpoint(tmp_path / "tuned" / "last.pt")["metrics"]["history"]
    assert report["results"]["single_pass"]["overall_accuracy"] == pytest.approx(history[-1]["val_oa"])
