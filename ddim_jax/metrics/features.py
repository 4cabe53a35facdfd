"""Inception features of uint8 images: pytorch-fid's (or clean-fid's) input handling, batched and sharded.

Input handling, ``resize="pytorch-fid"`` (the default; ``pytorch_fid.inception.InceptionV3`` with
``resize_input=True, normalize_input=True``)::

    uint8 [N, H, W, C] (C = 1 repeated to 3) -> float32 x / 255 in [0, 1]
      -> bilinear resize to 299 x 299 (half-pixel centres = torch align_corners=False, no antialiasing)
      -> 2 x - 1

``resize="clean-fid"`` (Parmar et al., "On Aliased Resizing and Surprising Subtleties in GAN
Evaluation", CVPR 2022): each channel of the uint8 image is resized to 299 x 299 with PIL's bicubic
filter in float mode (``Image.fromarray(channel.astype(float32), mode="F").resize(..., BICUBIC)``,
which antialiases when downsampling), clipped to [0, 255], then scaled the same way. That runs on the
host. The two modes differ by about 1-2 FID on CIFAR-10; numbers are only comparable within a mode.

Extraction is one jitted function per input shape, applied to fixed-size batches (the last one
padded), with the batch split over ``jax.local_devices()`` on a 1-D ``Mesh``; only the current batch
is on the devices and only the outputs ([N, 2048] float32, plus [N, 1008] logits) are kept on the host.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from ddim_jax.metrics.inception import FEATURE_DIM, INCEPTION_SIZE, NUM_LOGITS, Inception
from ddim_jax.parallel.meshes import ceil_div

__all__ = ["RESIZE_MODES", "InceptionOutputs", "inception_outputs", "inception_features", "preprocess_for_inception"]

RESIZE_MODES = ("pytorch-fid", "clean-fid")


class ImageSequence(Protocol):
    """Random access to uint8 images [H, W, C] (e.g. a TFDS source); a uint8 [N, H, W, C] array also fits."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class InceptionOutputs(NamedTuple):
    """Host arrays: ``features`` [N, 2048] pool features, ``logits`` [N, 1008] (``fc`` with its bias)."""

    features: np.ndarray
    logits: np.ndarray


def _check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")


def _check_batch(batch: np.ndarray, name: str = "images_uint8", shape: tuple | None = None) -> np.ndarray:
    """Validates a uint8 [B, H, W, C] batch (C in {1, 3}) and returns it with C = 3; ``shape``: the
    caller's whole array, named in the message when ``batch`` is a slice of it."""
    if batch.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 [N, H, W, C] with values 0..255, got dtype {batch.dtype} "
                         "(use ddim_jax.io.images.to_uint8 for images in [-1, 1])")
    if batch.ndim != 4 or batch.shape[-1] not in (1, 3) or min(batch.shape[1:3]) < 1:
        raise ValueError(f"{name} must have shape [N, H, W, C] with C = 1 or 3, "
                         f"got {batch.shape if shape is None else tuple(shape)}")
    return np.repeat(batch, 3, axis=-1) if batch.shape[-1] == 1 else batch


def _clean_fid_resize(batch: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, 299, 299, 3] in [0, 255]: clean-fid's PIL bicubic, per channel."""
    out = np.empty((batch.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), np.float32)
    for i, image in enumerate(batch):
        for c in range(3):
            channel = Image.fromarray(image[..., c].astype(np.float32), mode="F")
            resized = channel.resize((INCEPTION_SIZE, INCEPTION_SIZE), resample=Image.Resampling.BICUBIC)
            out[i, ..., c] = np.asarray(resized)
    return np.clip(out, 0.0, 255.0)


def preprocess_for_inception(images: jax.Array) -> jax.Array:
    """[B, H, W, 3] values in [0, 255] (uint8 or float) -> float32 [B, 299, 299, 3] in [-1, 1], pytorch-fid style.

    ``jax.image.resize(..., "bilinear", antialias=False)`` samples at half-pixel centres and
    renormalises the edge weights, which is torch's ``F.interpolate(bilinear, align_corners=False)``.
    """
    x = images.astype(jnp.float32) / 255.0
    if x.shape[1:3] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = jax.image.resize(x, (x.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, x.shape[3]), "bilinear",
                             antialias=False)
    return 2.0 * x - 1.0


@functools.lru_cache(maxsize=8)
def _compiled_forward(module: Any, devices: tuple[Any, ...]):
    """One jitted ``(variables, batch) -> (features, logits)`` per (module, device set); batch sharded."""
    mesh = Mesh(np.array(devices), ("batch",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def forward(variables, batch):
        return module.apply(variables, preprocess_for_inception(batch))

    jitted = jax.jit(forward, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)
    return jitted, batch_sharding, replicated


def _iter_batches(images: np.ndarray | ImageSequence, batch_size: int):
    num = len(images)
    for start in range(0, num, batch_size):
        stop = min(start + batch_size, num)
        if isinstance(images, np.ndarray):
            yield images[start:stop]
        else:
            yield np.stack([np.asarray(images[i]) for i in range(start, stop)])


def inception_outputs(images_uint8: np.ndarray | ImageSequence, inception: Inception, *, resize: str = "pytorch-fid",
                      batch_size: int = 200, progress: bool = True,
                      devices: Sequence[Any] | None = None) -> InceptionOutputs:
    """Pool features and logits of the FID Inception for uint8 images.

    Args:
      images_uint8: uint8 [N, H, W, C] with C in {1, 3} (C = 1 is repeated to 3), as a NumPy array
        (a memmap works) or any sequence of uint8 [H, W, C] images of one size (``len`` + indexing).
      inception: from :func:`ddim_jax.metrics.load_inception`.
      resize: ``"pytorch-fid"`` (bilinear, the default) or ``"clean-fid"`` (PIL bicubic); see module doc.
      batch_size: images per step, rounded up to a multiple of the number of devices; the last batch
        is padded, so the function compiles once per input image size.
      progress: show a tqdm bar.
      devices: defaults to ``jax.local_devices()``.

    Returns:
      :class:`InceptionOutputs` of float32 host arrays, ``features`` [N, 2048] and ``logits`` [N, 1008].
    """
    _check_resize(resize)
    if isinstance(images_uint8, (np.ndarray, jax.Array)) or not hasattr(images_uint8, "__getitem__"):
        images_uint8 = np.asarray(images_uint8)
        _check_batch(images_uint8[:1] if images_uint8.ndim == 4 else images_uint8, shape=images_uint8.shape)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    num = len(images_uint8)
    if num == 0:
        raise ValueError("images_uint8 is empty: need at least one image")
    devices = tuple(devices) if devices is not None else tuple(jax.local_devices())
    batch = ceil_div(batch_size, len(devices)) * len(devices)
    batch = min(batch, ceil_div(num, len(devices)) * len(devices))  # no padding beyond what N needs
    forward, batch_sharding, replicated = _compiled_forward(inception.module, devices)
    variables = jax.device_put(inception.variables, replicated)
    features = np.empty((num, FEATURE_DIM), np.float32)
    logits = np.empty((num, NUM_LOGITS), np.float32)
    shape = None
    start = 0
    with tqdm.tqdm(total=num, desc="inception", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for chunk in _iter_batches(images_uint8, batch):
            chunk = _check_batch(np.asarray(chunk))
            if shape is not None and chunk.shape[1:] != shape:
                raise ValueError(f"images_uint8 mixes image sizes: {shape} and {chunk.shape[1:]}")
            shape = chunk.shape[1:]
            # float32 [0, 255] on the host: both modes share one compiled function per image size
            chunk = _clean_fid_resize(chunk) if resize == "clean-fid" else chunk.astype(np.float32)
            count = len(chunk)
            if count < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - count,) + chunk.shape[1:], chunk.dtype)])
            feats, logs = forward(variables, jax.device_put(chunk, batch_sharding))
            features[start:start + count] = np.asarray(feats)[:count]
            logits[start:start + count] = np.asarray(logs)[:count]
            start += count
            bar.update(count)
    return InceptionOutputs(features, logits)


def inception_features(images_uint8: np.ndarray | ImageSequence, inception: Inception, *,
                       resize: str = "pytorch-fid", batch_size: int = 200, progress: bool = True,
                       devices: Sequence[Any] | None = None) -> np.ndarray:
    """The 2048-d FID features, float32 [N, 2048]; see :func:`inception_outputs` for the arguments."""
    return inception_outputs(images_uint8, inception, resize=resize, batch_size=batch_size, progress=progress,
                             devices=devices).features
