"""Resumable sample files: a large ``--out`` is written as one shard per batch, then assembled.

Shard ``i`` holds images ``i * shard_size ..`` (each generated from its own keys, :func:`image_keys`), in
``<out>_shards/shard_<i>.npz``; ``meta.json`` beside them records the settings that determine the
images, and a restarted run with the same settings reuses the shards already on disk. Every file
is written atomically (``ddim_jax/images.py``), so a killed run never leaves a truncated shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax.images import save_json
from ddim_jax.sample_spec import SampleError

SHARD_DIR_SUFFIX = "_shards"
SHARD_META_FILE = "meta.json"


def image_keys(seed: int, start: int, count: int) -> tuple[jax.Array, jax.Array]:
    """(x_T keys [count], noise keys [count]) of images ``start .. start + count - 1``.

    Image i's keys are ``split(fold_in(key(seed), i))``: a pure function of the seed and the image's
    index, so an image is the same whatever the batch size, the device count or the process that
    samples it.
    """
    indices = jnp.arange(start, start + count, dtype=jnp.uint32)
    keys = jax.vmap(lambda index: jax.random.split(jax.random.fold_in(jax.random.key(seed), index)))(indices)
    return keys[:, 0], keys[:, 1]


def codes_for(code_keys: jax.Array, image_shape: tuple[int, ...]) -> np.ndarray:
    """x_T ~ N(0, I), float32 ``[count, *image_shape]``: row i drawn from ``code_keys[i]`` alone."""
    return np.asarray(jax.vmap(lambda key: jax.random.normal(key, image_shape, jnp.float32))(code_keys))


def shard_dir_for(out: str) -> str:
    return os.path.splitext(out)[0] + SHARD_DIR_SUFFIX


def shard_path(shard_dir: str, index: int) -> str:
    return os.path.join(shard_dir, f"shard_{index:06d}.npz")


def prepare_shard_dir(shard_dir: str, meta: Mapping[str, Any]) -> None:
    """Create the shard directory, or check that an existing one was made with the same settings."""
    meta_path = os.path.join(shard_dir, SHARD_META_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as handle:
            previous = json.load(handle)
        changed = sorted(key for key in set(meta) | set(previous) if meta.get(key) != previous.get(key))
        if changed:
            details = ", ".join(f"{key} {previous.get(key)!r} -> {meta.get(key)!r}" for key in changed)
            raise SampleError(
                f"{shard_dir} holds shards of a run with other settings ({details}); "
                "delete it or choose another --out"
            )
        return
    os.makedirs(shard_dir, exist_ok=True)
    save_json(meta_path, meta)
