"""Resumable sample files: a large ``--out`` is written as one shard per batch, then assembled.

Shard ``i`` holds images ``i * shard_size ..`` (each from its own keys, :func:`image_keys`), in
``<out>_shards/shard_<i>.npz``; ``meta.json`` beside them records everything that determines the
images (a sha256 of the params actually loaded, the seed, the sampler settings, the shard size, the
image shape, the schedule and :data:`SAMPLING_VERSION`), and a restarted run reuses the shards on
disk only when all of it matches: anything else is refused with one line, and a shard directory
without its ``meta.json`` is never adopted. Every file is written atomically
(``ddim_jax/io/images.py``), so a killed run never leaves a truncated shard.

A finished output gets a small record beside it (``<out>.json``: the same settings, the number of
images and a sha256 of each file written); rerunning the same command finds it and reports the
output as complete instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.io.atomic import save_json

SHARD_DIR_SUFFIX = "_shards"
SHARD_META_FILE = "meta.json"
DONE_SUFFIX = ".json"
# Bump when the code that turns (params, seed, settings) into images changes its output.
SAMPLING_VERSION = 1
# Recorded for the messages only: a moved or renamed workdir with the same params may resume.
_INFORMATIONAL_KEYS = ("source",)


# jax.random.key takes the seed modulo 2**32 (99999999999 would give the images of 1215752191).
SEED_LIMIT = 2**32


def validate_seed(seed: int) -> None:
    """Refuse a seed outside [0, 2**32): the PRNG would silently reduce it to another seed's images."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise SampleError(f"--seed must be an integer in [0, 2**32) (the PRNG's 32 bits), got {seed!r}")


def read_shard(path: str, count: int, image_shape: tuple[int, ...]) -> np.ndarray | None:
    """Shard ``path``'s uint8 images [count, *image_shape], or None when it is missing, truncated,
    corrupt or of another shape (then it is sampled again)."""
    try:
        with np.load(path, allow_pickle=False) as shard:
            images = np.asarray(shard["images"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if images.dtype != np.uint8 or images.shape != (count, *image_shape):
        return None
    return images


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


def _changed(meta: Mapping[str, Any], previous: Mapping[str, Any]) -> list[str]:
    keys = (set(meta) | set(previous)) - set(_INFORMATIONAL_KEYS)
    return sorted(key for key in keys if meta.get(key) != previous.get(key))


def _describe(key: str, old: Any, new: Any) -> str:
    if key == "params_sha256":
        return f"params {str(old)[:12]} -> {str(new)[:12]} (another model or checkpoint)"
    return f"{key} {old!r} -> {new!r}"


def _read_json(path: str) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise SampleError(f"cannot read {path} ({type(err).__name__}); delete it or choose another --out") from err


def prepare_shard_dir(shard_dir: str, meta: Mapping[str, Any]) -> None:
    """Create the shard directory, or check that an existing one was made with the same settings.

    Raises:
      SampleError: the directory holds shards of other settings (another model, seed, sampler,
        shard size, ...), or shards without a ``meta.json`` that would say what made them.
    """
    meta_path = os.path.join(shard_dir, SHARD_META_FILE)
    if os.path.exists(meta_path):
        previous = _read_json(meta_path)
        changed = _changed(meta, previous) if isinstance(previous, dict) else ["meta.json"]
        if changed:
            details = ", ".join(_describe(key, previous.get(key), meta.get(key)) for key in changed)
            raise SampleError(
                f"{shard_dir} holds shards of a run with other settings ({details}); "
                "delete it or choose another --out"
            )
        return
    if os.path.isdir(shard_dir) and any(name.startswith("shard_") for name in os.listdir(shard_dir)):
        raise SampleError(f"{shard_dir} holds shards but no {SHARD_META_FILE} saying what made them; "
                          "delete it or choose another --out")
    os.makedirs(shard_dir, exist_ok=True)
    save_json(meta_path, meta)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def done_record_path(out: str) -> str:
    return out + DONE_SUFFIX


def write_done_record(out: str, meta: Mapping[str, Any], written: list[str]) -> None:
    """Records beside a finished ``out`` what made it and a sha256 of every file written."""
    save_json(done_record_path(out), {**meta, "files": {os.path.basename(path): file_sha256(path)
                                                         for path in written}})


def finished_output(out: str, meta: Mapping[str, Any]) -> list[str] | None:
    """The files of a complete output made with exactly ``meta``, verified against their sha256;
    None when there is none (no record, other settings, or a file missing or changed)."""
    record_path = done_record_path(out)
    if not (os.path.isfile(record_path) and os.path.isfile(out)):
        return None
    try:
        with open(record_path) as handle:
            record = json.load(handle)
        files = record.pop("files")
        if _changed(meta, record) or os.path.basename(out) not in files:
            return None
        directory = os.path.dirname(out)
        paths = [os.path.join(directory, name) for name in files]
        if any(not os.path.isfile(path) or file_sha256(path) != digest for path, digest in zip(paths, files.values())):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return paths
