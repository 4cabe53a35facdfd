"""Training and evaluation images: TFDS ``data_source`` + grain, and scikit-learn's digits.

No TensorFlow is needed to read: TFDS datasets are opened with ``tfds.data_source`` in the
``array_record`` format and fed to a grain ``MapDataset``. Preparing (downloading) a TFDS dataset
the first time does need TensorFlow -- see :class:`DatasetNotPreparedError` for the command.

Order is a pure function of ``(seed, step)``: the stream of training examples is the dataset
shuffled with a fresh permutation every epoch (grain's ``shuffle`` + ``repeat``); the global batch of
step ``s`` is examples ``[s * B, (s + 1) * B)`` of that stream, and process ``p`` of ``P`` reads the
``p``-th slice of ``B / P`` of them. Random flips are drawn per example from ``(seed, index)``.
So a run resumed at step ``s`` sees exactly the batches an uninterrupted run would, with any number
of processes or devices.

All images come out as float32 [H, W, C] in [-1, 1] (``uint8 / 127.5 - 1``). A class-conditional
config (``config.model.num_classes > 0``) reads ``(image, label)`` pairs instead, and batches are
``(images, labels int32 [B])``; the order and the flips are the same as without labels.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Protocol

import grain
import ml_collections
import numpy as np
from absl import flags
from PIL import Image

from ddim_jax.errors import UserError
from ddim_jax.training.schema import ConfigError

__all__ = [
    "DatasetNotPreparedError",
    "open_source",
    "preprocess_image",
    "train_dataset",
    "train_batches",
    "load_eval_images",
]

_FLIP_SEED_OFFSET = 0x5EED


class DatasetNotPreparedError(UserError, ValueError):
    """A TFDS dataset is not downloaded/prepared in the array_record format."""


class ImageSource(Protocol):
    """Random access to uint8 images [H, W, C]."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class ArrayImageSource:
    """An in-memory uint8 [N, H, W, C] array as a grain random-access source; with ``labels``
    (int [N]) its items are ``(image, label)`` pairs."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
        if labels is not None and np.shape(labels) != (len(images),):
            raise ValueError(f"expected labels of shape ({len(images)},), got {np.shape(labels)}")
        self._images = images
        self._labels = None if labels is None else np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int):
        if self._labels is None:
            return self._images[index]
        return self._images[index], self._labels[index]


class TfdsImageSource:
    """The ``image`` feature of a TFDS data source, read one record at a time.

    Only ``__len__`` and ``__getitem__`` are defined, so grain reads item by item (TFDS's batched
    ``__getitems__`` does not work under ``tfds.testing.mock_data``).
    """

    def __init__(self, source, with_labels: bool = False):
        self._source = source
        self._with_labels = with_labels

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        record = self._source[int(index)]
        image = np.asarray(record["image"])
        if image.ndim == 2:
            image = image[..., None]
        if self._with_labels:
            return image, np.int32(record["label"])
        return image


@functools.lru_cache(maxsize=1)
def _digits_uint8() -> np.ndarray:
    """scikit-learn's 1,797 UCI digits as uint8 [1797, 8, 8, 1]; grey levels 0..16 -> 0..255."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no network

    images = load_digits().images  # float64 [1797, 8, 8], integer values 0..16
    return np.rint(images * (255.0 / 16.0)).astype(np.uint8)[..., None]


@functools.lru_cache(maxsize=1)
def _digits_labels() -> np.ndarray:
    """The classes 0..9 of :func:`_digits_uint8`'s images, int32 [1797]."""
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int32)


def _prepare_hint(name: str, data_dir: str | None) -> str:
    target = f" --data_dir={data_dir}" if data_dir else ""
    return (f"TFDS dataset {name!r} is not prepared in the array_record format"
            f"{' under ' + data_dir if data_dir else ''}. Prepare it once (needs TensorFlow and the "
            f"network): pip install -e \".[prepare]\" && tfds build {name} --file_format=array_record{target}")


def open_source(config: ml_collections.ConfigDict, split: str, with_labels: bool | None = None) -> ImageSource:
    """Opens ``split`` of ``config.data.name`` for random access (never downloads anything).

    Items are ``(image, label)`` pairs when ``with_labels`` (default: the config is
    class-conditional, ``config.model.num_classes > 0``), else images.

    Raises:
      DatasetNotPreparedError: a TFDS dataset has not been prepared (the message says how).
    """
    name = config.data.name
    if with_labels is None:
        with_labels = config.model.num_classes > 0
    if name == "digits":
        if split != "train":
            raise ConfigError(f"the digits dataset has only the 'train' split, got {split!r} "
                              "(config.data.train_split / eval_split)")
        return ArrayImageSource(_digits_uint8(), _digits_labels() if with_labels else None)
    import tensorflow_datasets as tfds  # imported lazily: slow, and not needed for the digits

    data_dir = config.data.data_dir
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False, try_gcs=False,
                                  builder_kwargs={"file_format": "array_record"})
    except (KeyError, FileNotFoundError, AssertionError) as err:
        # TFDS raises KeyError ("splits is empty") for an unprepared dataset and AssertionError or
        # FileNotFoundError for a missing/mismatched data dir.
        raise DatasetNotPreparedError(f"{_prepare_hint(name, data_dir)} ({type(err).__name__}: {err})") from err
    except ValueError as err:  # TFDS: an unknown split name ("Unknown split 'x'. Should be one of ...")
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"dataset {name!r} has no split {split!r} ({first})") from err
    return TfdsImageSource(source, with_labels=with_labels)


def check_crop_fits(source: ImageSource, config: ml_collections.ConfigDict) -> None:
    """``config.data.crop`` must fit the dataset's images: checked on the first image, before any
    batch is read (grain would raise it from inside its iterator, as a traceback)."""
    if config.data.crop is None or len(source) == 0:
        return
    shape = np.shape(source[0])
    top, left, height, width = tuple(config.data.crop)
    if top + height > shape[0] or left + width > shape[1]:
        raise ConfigError(f"config.data.crop {tuple(config.data.crop)} (top, left, height, width) does not fit "
                          f"the {shape[0]}x{shape[1]} images of {config.data.name!r}")


def preprocess_image(image: np.ndarray, config: ml_collections.ConfigDict, flip: bool = False) -> np.ndarray:
    """uint8 [h, w, C] -> float32 [S, S, C] in [-1, 1]: crop, resize to S = image_size, flip, scale."""
    crop = None if config.data.crop is None else tuple(config.data.crop)
    return _preprocess(np.asarray(image), config.data.image_size, crop, flip)


def _preprocess(image: np.ndarray, size: int, crop: tuple[int, int, int, int] | None, flip: bool) -> np.ndarray:
    if crop is not None:
        top, left, height, width = crop
        if top + height > image.shape[0] or left + width > image.shape[1]:
            raise ValueError(f"config.data.crop {crop} does not fit a {image.shape} image")
        image = image[top:top + height, left:left + width]
    if image.shape[:2] != (size, size):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        resized = np.asarray(pil.resize((size, size), resample=Image.Resampling.BICUBIC))
        image = resized.reshape(size, size, image.shape[-1])
    if flip:
        image = image[:, ::-1]
    return image.astype(np.float32) / 127.5 - 1.0


class _Preprocess(grain.transforms.Map):
    """Picklable (for grain workers) crop/resize/scale without flips."""

    def __init__(self, config: ml_collections.ConfigDict):
        self._size = config.data.image_size
        self._crop = None if config.data.crop is None else tuple(config.data.crop)

    def map(self, element):
        if isinstance(element, tuple):  # (image, label)
            return _preprocess(element[0], self._size, self._crop, flip=False), np.int32(element[1])
        return _preprocess(element, self._size, self._crop, flip=False)


class _PreprocessWithFlip(grain.transforms.RandomMap):
    """As :class:`_Preprocess`, plus a horizontal flip with probability 1/2 from grain's per-example rng."""

    def __init__(self, config: ml_collections.ConfigDict):
        self._size = config.data.image_size
        self._crop = None if config.data.crop is None else tuple(config.data.crop)

    def random_map(self, element, rng: np.random.Generator):
        flip = bool(rng.integers(2))
        if isinstance(element, tuple):  # (image, label)
            return _preprocess(element[0], self._size, self._crop, flip=flip), np.int32(element[1])
        return _preprocess(element, self._size, self._crop, flip=flip)


def _check_batch_split(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"config.training.batch_size={global_batch} is not divisible by the "
                         f"{process_count} processes")
    return global_batch // process_count


def train_dataset(config: ml_collections.ConfigDict, *, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
    """The local training batches of this process from ``start_step`` on, as a grain MapDataset.

    Element ``k`` is this process's float32 [B / P, H, W, C] slice of the global batch of step
    ``start_step + k`` (with its int32 [B / P] labels, as a pair, for a class-conditional config).
    """
    local_batch = _check_batch_split(config.training.batch_size, process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    seed = config.training.seed
    source = open_source(config, config.data.train_split)
    check_crop_fits(source, config)
    dataset = grain.MapDataset.source(source)
    if len(dataset) == 0:
        raise ValueError(f"dataset {config.data.name!r} split {config.data.train_split!r} is empty")
    dataset = dataset.shuffle(seed=seed).repeat()  # a new permutation each epoch
    if config.data.random_flip:
        dataset = dataset.random_map(_PreprocessWithFlip(config), seed=(seed + _FLIP_SEED_OFFSET) % 2**32)
    else:
        dataset = dataset.map(_Preprocess(config))
    dataset = dataset.batch(local_batch, drop_remainder=True)
    # Local batch index of (step s, process p) is s * P + p: the global batch is contiguous.
    return dataset[start_step * process_count + process_index::process_count]


def train_batches(config: ml_collections.ConfigDict, *, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[np.ndarray]:
    """Iterates this process's training batches (float32 [B / P, H, W, C]) from ``start_step`` on.

    Reads in background threads, or in ``config.data.num_workers`` grain worker processes. grain's
    workers read absl flags, so with workers the program must have parsed them (``train.py`` runs
    under ``absl.app``; a notebook or script calls ``absl.flags.FLAGS.mark_as_parsed()`` itself) and
    guard its entry point with ``if __name__ == "__main__"``.
    """
    dataset = train_dataset(config, start_step=start_step, process_index=process_index,
                            process_count=process_count)
    iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8))
    if config.data.num_workers > 0:
        if not flags.FLAGS.is_parsed():
            raise ValueError("config.data.num_workers > 0 needs parsed absl flags (grain's workers read them): run "
                             "under absl.app, or call absl.flags.FLAGS.mark_as_parsed() first")
        iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
    return iter(iter_dataset)


def load_eval_images(config: ml_collections.ConfigDict, num: int, seed: int = 0, with_labels: bool = False):
    """``num`` images of ``config.data.eval_split`` in a seeded random order, without flips.

    Returns:
      float32 [num, H, W, C] in [-1, 1] (H = W = ``config.data.image_size``); with
      ``with_labels``, ``(images, labels int32 [num])`` (the same images, in the same order).
    """
    if num <= 0:
        raise ValueError(f"load_eval_images: num must be positive, got {num}")
    source = open_source(config, config.data.eval_split, with_labels=with_labels)
    check_crop_fits(source, config)
    if num > len(source):
        raise ValueError(f"load_eval_images: asked for {num} images, but split "
                         f"{config.data.eval_split!r} of {config.data.name!r} has {len(source)}")
    dataset = grain.MapDataset.source(source).shuffle(seed=seed)
    indices: Sequence[int] = range(num)
    if with_labels:
        items = [dataset[i] for i in indices]
        return (np.stack([preprocess_image(image, config) for image, _ in items]),
                np.asarray([label for _, label in items], np.int32))
    return np.stack([preprocess_image(dataset[i], config) for i in indices])
