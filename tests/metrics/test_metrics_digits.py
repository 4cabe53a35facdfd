"""Tests for the digits yardstick (ddim_jax.metrics.digits) and its bundled classifier weights."""

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from ddim_jax.metrics import digits_features, digits_metrics, feature_statistics, frechet_distance
from ddim_jax.metrics.cli import main
from ddim_jax.metrics.digits import (
    DIGITS_CLASSIFIER_PATH,
    NUM_TRAIN,
    digits_dataset,
    digits_logits_and_features,
    load_digits_classifier,
)


@pytest.fixture(scope="module")
def data():
    return digits_dataset()


def test_bundled_classifier_is_accurate_and_its_predictions_are_pinned(data):
    images, labels = data
    held_out = digits_metrics(images[NUM_TRAIN:], labels[NUM_TRAIN:])
    assert held_out["accuracy"] >= 0.95
    with safe_open(DIGITS_CLASSIFIER_PATH, framework="numpy") as weights:
        recorded = float(weights.metadata()["heldout_accuracy"])
    assert held_out["accuracy"] == pytest.approx(recorded, abs=1e-6)  # what the training script reported
    logits, feats = digits_logits_and_features(images)
    again_logits, again_feats = digits_logits_and_features(images[::-1])
    np.testing.assert_array_equal(again_logits[::-1], logits)  # deterministic, independent of batch order
    np.testing.assert_array_equal(again_feats[::-1], feats)
    assert feats.shape == (1797, 128) and feats.dtype == np.float32
    assert int(np.sum(np.argmax(logits[NUM_TRAIN:], 1) == labels[NUM_TRAIN:])) == round(recorded * 450)
    # The count above is compared with one recorded on another machine: it is safe from CPU-dependent
    # float rounding (~1e-6 here) only while no image's top two logits are that close (measured: 0.0096).
    top_two = np.sort(logits, axis=1)[:, -2:]
    assert np.min(top_two[:, 1] - top_two[:, 0]) > 1e-3
    assert digits_metrics(images[:3], labels=int(labels[0]))["accuracy"] == pytest.approx(
        np.mean(np.argmax(logits[:3], 1) == labels[0]))


def test_real_vs_real_is_small_and_noise_vs_real_is_large(data):
    images, _ = data
    real = digits_metrics(images[NUM_TRAIN:])
    noise = digits_metrics(np.random.default_rng(0).integers(0, 256, (450, 8, 8, 1), dtype=np.uint8))
    assert real["fd_digits"] < 10.0 and noise["fd_digits"] > 100.0
    assert noise["fd_digits"] > 20 * real["fd_digits"]
    assert real["confidence"] > 0.9 > noise["confidence"]
    train = digits_features(images[:NUM_TRAIN])
    held_out = digits_features(images[NUM_TRAIN:])
    assert frechet_distance(*feature_statistics(held_out), *feature_statistics(train)) < 10.0


def test_bad_inputs_are_refused(data):
    images, _ = data
    with pytest.raises(ValueError, match="images_uint8 must be uint8"):
        digits_metrics(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"images_uint8 must have shape \[N, 8, 8, 1\]"):
        digits_metrics(np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="labels must be integers in 0..9"):
        digits_metrics(images[:4], labels=np.array([0, 1, 2, 10]))
    with pytest.raises(FileNotFoundError, match="train-digits-classifier"):
        load_digits_classifier("/nonexistent/classifier.safetensors")


def test_training_script_is_deterministic(tmp_path, capsys):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        assert main(["train-digits-classifier", "--out", str(path), "--epochs", "1"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    first, second = load_file(str(paths[0])), load_file(str(paths[1]))
    assert sorted(first) == sorted(load_file(DIGITS_CLASSIFIER_PATH))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    params = load_digits_classifier(paths[0])
    assert digits_features(np.zeros((2, 8, 8, 1), np.uint8), params).shape == (2, 128)
