"""Input pipeline: scaling, shapes, deterministic (seed, step) order, process slices, TFDS mock data."""

import importlib
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

import configs  # noqa: F401  (the package; modules are imported by name below)
import configs.celeba64
import configs.digits
import configs.mnist
import configs.tiny
from ddim_jax.training import input_pipeline
from ddim_jax.training.schema import default_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




def test_digits_batches_are_the_sklearn_digits_scaled_to_minus_one_one():
    config = configs.tiny.get_config()
    config.data.random_flip = False
    batch = input_pipeline.train_dataset(config)[0]
    assert batch.shape == (8, 8, 8, 1) and batch.dtype == np.float32
    # Every image is one of the 1,797 digits, with grey level g in 0..16 mapped to round(g*255/16)/127.5-1.
    digits = np.rint(load_digits().images * 255.0 / 16.0) / 127.5 - 1.0
    flat = digits.reshape(len(digits), -1)
    for image in batch:
        distances = np.abs(flat - image.reshape(1, -1)).max(axis=1)
        assert distances.min() < 1e-6
    all_values = np.concatenate([input_pipeline.train_dataset(config)[i].ravel() for i in range(20)])
    assert all_values.min() == -1.0 and all_values.max() == 1.0


def test_order_is_a_function_of_seed_and_step_and_epochs_reshuffle():
    config = configs.tiny.get_config()
    full = input_pipeline.train_dataset(config)
    resumed = input_pipeline.train_batches(config, start_step=5)
    for step in range(5, 8):
        np.testing.assert_array_equal(next(resumed), full[step])
    # One epoch is 1797 // 8 = 224 full batches plus a remainder; examples of epoch 2 come in a new order.
    steps_per_epoch = 1797 // 8
    assert not np.array_equal(full[0], full[steps_per_epoch + 10])
    other_seed = configs.tiny.get_config()
    other_seed.training.seed = 1
    assert not np.array_equal(input_pipeline.train_dataset(other_seed)[0], full[0])


def test_processes_read_contiguous_slices_of_the_global_batch():
    config = configs.tiny.get_config()
    global_batch = input_pipeline.train_dataset(config, start_step=3)[0]
    parts = [input_pipeline.train_dataset(config, start_step=3, process_index=p, process_count=2)[0]
             for p in range(2)]
    assert parts[0].shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(np.concatenate(parts), global_batch)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        input_pipeline.train_dataset(config, process_count=3)


def test_random_flips_mirror_about_half_the_images_deterministically():
    flipped_config = configs.tiny.get_config()
    plain_config = configs.tiny.get_config()
    plain_config.data.random_flip = False
    flipped = np.concatenate([input_pipeline.train_dataset(flipped_config)[i] for i in range(16)])
    plain = np.concatenate([input_pipeline.train_dataset(plain_config)[i] for i in range(16)])
    is_mirror = np.array([np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p)
                          for f, p in zip(flipped, plain)])
    is_same = np.array([np.array_equal(f, p) for f, p in zip(flipped, plain)])
    assert np.all(is_mirror | is_same)
    assert 0.3 < is_mirror.mean() < 0.7  # 128 fair coin flips
    np.testing.assert_array_equal(input_pipeline.train_dataset(flipped_config)[3], flipped[24:32])


@pytest.mark.parametrize("name, size, channels", [("mnist", 28, 1), ("cifar10", 32, 3)])
def test_tfds_mock_data_batches_are_scaled_and_shaped(name, size, channels):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = importlib.import_module(f"configs.{name}").get_config()
    config.training.batch_size = 4
    config.data.num_workers = 0  # mock data is patched into this process only
    with tfds.testing.mock_data(num_examples=10):
        batches = input_pipeline.train_batches(config)
        batch = np.stack([next(batches) for _ in range(3)])
        raw = input_pipeline.open_source(config, "train")
        raw_first = np.stack([raw[i] for i in range(len(raw))])
        evals = input_pipeline.load_eval_images(config, 3)
    assert batch.shape == (3, 4, size, size, channels) and batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0 and batch.std() > 0.1
    # Exactly uint8 / 127.5 - 1: multiplying back gives integers, and the values are the raw pixels.
    pixels = (batch + 1.0) * 127.5
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-3)
    raw_values = set(np.unique(raw_first).tolist())
    assert set(np.unique(np.rint(pixels)).astype(int).tolist()) <= raw_values
    assert evals.shape == (3, size, size, channels) and evals.min() >= -1.0 and evals.max() <= 1.0


def test_celeba_crop_and_resize_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    config = configs.celeba64.get_config()
    config.training.batch_size = 2
    config.data.num_workers = 0
    with tfds.testing.mock_data(num_examples=4):
        batch = next(input_pipeline.train_batches(config))
    assert batch.shape == (2, 64, 64, 3) and -1.0 <= batch.min() and batch.max() <= 1.0


def test_preprocess_crops_resizes_and_flips():
    config = default_config()
    config.data.image_size = 2
    config.data.crop = (1, 1, 4, 4)
    image = np.zeros((6, 6, 1), np.uint8)
    image[1:5, 1:3] = 255  # left half of the crop box is white
    out = input_pipeline.preprocess_image(image, config)[..., 0]
    assert out.shape == (2, 2)
    # Bicubic downsampling blurs the edge a little; the white half stays left, the black right.
    assert np.all(out[:, 0] > 0.6) and np.all(out[:, 1] < -0.6)
    np.testing.assert_array_equal(input_pipeline.preprocess_image(image, config, flip=True)[..., 0], out[:, ::-1])
    with pytest.raises(ValueError, match="does not fit"):
        input_pipeline.preprocess_image(np.zeros((3, 3, 1), np.uint8), config)


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    config = configs.mnist.get_config()
    config.data.data_dir = str(tmp_path)
    with pytest.raises(input_pipeline.DatasetNotPreparedError, match=r"tfds build mnist --file_format=array_record"):
        input_pipeline.open_source(config, "train")


def test_load_eval_images_is_seeded_and_checks_its_count():
    config = configs.digits.get_config()
    first = input_pipeline.load_eval_images(config, 5, seed=0)
    np.testing.assert_array_equal(first, input_pipeline.load_eval_images(config, 5, seed=0))
    assert not np.array_equal(first, input_pipeline.load_eval_images(config, 5, seed=1))
    assert first.shape == (5, 8, 8, 1)
    with pytest.raises(ValueError, match="has 1797"):
        input_pipeline.load_eval_images(config, 5000)
