"""The four modes of ``sample.py``, each after a figure or table of the DDIM paper.

- ``samples`` (:func:`run_samples`): N images from x_T ~ N(0, I) with the generalized sampler
  (Eq. 12; eta = 0 is DDIM, eta = 1 is DDPM, ``sigma_hat`` the larger-variance row of Table 1),
  written in resumable shards (``ddim_jax/generation/shards.py``) and trimmed to exactly N images.
- ``interpolate`` (:func:`run_interpolate`): slerp between pairs of x_T codes, decoded with DDIM
  (Fig. 6).
- ``reconstruct`` (:func:`run_reconstruct`): real images encoded to x_T (the eta = 0 update run
  upward in t) and decoded again, with the per-dimension MSE on [0, 1] for several S (Table 2).
- ``consistency`` (:func:`run_consistency`): the same x_T decoded with several S (Fig. 5).

Images are NHWC float32 in [-1, 1] inside, uint8 [N, H, W, C] on disk.

Class-conditional models take ``label`` (``"all"``: image / row / code ``i`` of class ``i mod K``;
an int: every image of that class; ``reconstruct`` defaults to the real images' labels) and a
classifier-free ``guidance`` scale (``ddim_jax/guidance.py``); unconditional ones take neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ddim_jax.generation.batching import BatchedSampler, Progress
from ddim_jax.generation.loading import LoadedModel
from ddim_jax.generation.sampler_spec import SampleError, SamplerSpec
from ddim_jax.generation.shards import (
    SAMPLING_VERSION,
    codes_for,
    finished_output,
    image_keys,
    prepare_shard_dir,
    read_shard,
    shard_dir_for,
    shard_path,
    write_done_record,
)
from ddim_jax.guidance import labels_for
from ddim_jax.io.atomic import atomic_write, save_npz, save_png
from ddim_jax.io.images import make_grid, to_uint8
from ddim_jax.parallel.meshes import ceil_div
from ddim_jax.parallel.processes import is_lead_process
from ddim_jax.sampling import slerp
from ddim_jax.training.input_pipeline import load_eval_images

# A `.png` of the `samples` mode shows at most this many images; above it the full set also goes
# to an `.npz` beside the grid.
GRID_MAX_IMAGES = 100
# Grids magnify small images (8x8 digits) by an integer factor to at least this many pixels.
GRID_MIN_IMAGE_SIZE = 32
INTERPOLATION_POINTS = 10


def write_images(out: str, images: np.ndarray, ncols: int | None = None, **extra: np.ndarray) -> list[str]:
    """Write uint8 [N, H, W, C] ``images`` as a grid (``.png``) or an array file (``.npz``)."""
    if out.endswith(".npz"):
        save_npz(out, images=images, **extra)
    else:
        upscale = max(1, GRID_MIN_IMAGE_SIZE // images.shape[1])
        save_png(out, make_grid(images, ncols=ncols, upscale=upscale))
    return [out]


def class_rows(images: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """``(images, ncols)`` for a grid with one row per class present (in class order; short rows
    padded with black cells)."""
    present = [c for c in range(num_classes + 1) if np.any(labels == c)]
    ncols = max(int(np.sum(labels == c)) for c in present)
    rows = []
    for c in present:
        row = images[labels == c]
        rows.append(np.concatenate([row, np.zeros((ncols - len(row),) + images.shape[1:], images.dtype)]))
    return np.concatenate(rows), ncols


def _labels(loaded: LoadedModel, num: int, label: str | int | None, start: int = 0) -> np.ndarray | None:
    return None if label is None else labels_for(num, label, loaded.num_classes, start=start)


def sample_meta(loaded: LoadedModel, spec: SamplerSpec, seed: int, shard_size: int) -> dict:
    """Everything that determines the images of the ``samples`` mode (plus ``source``, for messages)."""
    return {
        "source": loaded.description,
        "params_sha256": loaded.fingerprint,
        "alphas_cumprod_sha256": hashlib.sha256(np.asarray(loaded.alphas_cumprod, np.float32).tobytes()).hexdigest(),
        "prediction_type": loaded.prediction_type,
        "rederive_eps": bool(loaded.rederive_eps),
        "image_shape": list(loaded.image_shape),
        "spec": dataclasses.asdict(spec),
        "seed": seed,
        "shard_size": shard_size,
        "sampling_version": SAMPLING_VERSION,
    }


def all_images_file(out: str, num: int) -> str | None:
    """The ``.npz`` that holds all ``num`` images of the ``samples`` mode (None: a grid only)."""
    if out.endswith(".npz"):
        return out
    return os.path.splitext(out)[0] + ".npz" if num > GRID_MAX_IMAGES else None


def run_samples(loaded: LoadedModel, spec: SamplerSpec, *, num: int, batch_size: int, seed: int,
                out: str, progress: bool = True, label: str | int | None = None,
                guidance: float = 1.0) -> np.ndarray | None:
    """Exactly ``num`` uint8 samples [num, H, W, C], written to ``out``; resumable.

    Image i comes from its own keys (:func:`ddim_jax.generation.shards.image_keys`: its x_T and, for eta > 0,
    its noise at every step), so the same seed gives the same images whatever the batch size, the
    number of devices or the number of processes. Shard i holds images ``i * batch_size ..``;
    shards already on disk (from an interrupted run with the same params and settings) are reused,
    anything else is refused. Under ``jax.distributed`` process p samples shards p, p + P, ... into
    the shared shard directory and process 0 assembles ``out``. An output already complete with
    the same params and settings (``<out>.json`` beside it, every file's sha256 verified) is
    reported and read back, not redone. With ``label`` (class-conditional models) image ``i`` gets
    ``labels_for(.., label, K)[i]``, and a ``label="all"`` grid has one class per row.

    Returns:
      The images on process 0 (``None`` on the others).
    """
    batch_size = max(1, min(batch_size, num))
    meta = sample_meta(loaded, spec, seed, batch_size)
    if label is not None:
        meta.update(label=str(label), guidance=float(guidance))
    done_meta = {**meta, "num": num}
    npz_out = all_images_file(out, num)
    process, process_count, lead = jax.process_index(), jax.process_count(), is_lead_process()
    if npz_out is not None and finished_output(out, done_meta):
        if not lead:
            return None
        print(f"{out} is already complete ({num} images from the same params and settings); nothing to do")
        with np.load(npz_out) as data:
            return data["images"]
    if npz_out is not None and npz_out != out and os.path.exists(npz_out):
        raise SampleError(f"--out {out} with {num} > {GRID_MAX_IMAGES} images also writes all of them to "
                          f"{npz_out}, which exists; remove it or choose another --out")
    seq = loaded.timesteps(spec.steps, spec.skip)
    num_shards = ceil_div(num, batch_size)
    shard_dir = shard_dir_for(out)
    if lead:
        prepare_shard_dir(shard_dir, meta)
    _sync_processes("shard directory ready")
    if not lead:
        prepare_shard_dir(shard_dir, meta)   # finds process 0's metadata and checks it
    mine = [index for index in range(process, num_shards, process_count)
            if not _usable_shard(shard_dir, index, min(batch_size, num - index * batch_size), loaded.image_shape)]
    if mine:
        sampler = BatchedSampler(loaded, batch_size)
        done_before = ceil_div(num_shards, process_count) - len(mine)
        bar = Progress(done_before + len(mine), f"sampling S={spec.steps}", progress, initial=done_before)
        try:
            for index in mine:
                start = index * batch_size
                count = min(batch_size, num - start)
                code_keys, noise_keys = image_keys(seed, start, count)
                labels = _labels(loaded, count, label, start=start)
                x0 = sampler.decode_batch(codes_for(code_keys, loaded.image_shape), seq, spec, noise_keys,
                                          labels, guidance)
                save_npz(shard_path(shard_dir, index), images=to_uint8(x0))
                bar.update(count)
        finally:
            bar.close()
    _sync_processes("shards written")
    if not lead:
        return None
    images = _assemble(loaded, shard_dir, num, batch_size, out)
    written = _write_outputs(loaded, out, npz_out, images, label)
    if npz_out is not None:
        write_done_record(out, done_meta, written)
    shutil.rmtree(shard_dir)
    report_written(written, images.shape)
    return images


def _assemble(loaded: LoadedModel, shard_dir: str, num: int, batch_size: int, out: str) -> np.ndarray:
    """The ``num`` images of the shards, in order (uint8 [num, H, W, C])."""
    shards = []
    for index in range(ceil_div(num, batch_size)):
        path = shard_path(shard_dir, index)
        shard = read_shard(path, min(batch_size, num - index * batch_size), loaded.image_shape)
        if shard is None:
            raise SampleError(f"{path} changed while {out} was assembled; rerun to sample it again")
        shards.append(shard)
    return np.concatenate(shards)


def _write_outputs(loaded: LoadedModel, out: str, npz_out: str | None, images: np.ndarray,
                   label: str | int | None) -> list[str]:
    """``out`` (an ``.npz``, or a grid ``.png`` plus ``npz_out`` for many images); returns the paths."""
    labels = _labels(loaded, len(images), label)
    extra = {} if labels is None else {"labels": labels}
    if out.endswith(".npz"):
        return write_images(out, images, **extra)
    shown, ncols = images[:GRID_MAX_IMAGES], None
    if label == "all":
        shown, ncols = class_rows(shown, labels[:GRID_MAX_IMAGES], loaded.num_classes)
    written = write_images(out, shown, ncols=ncols)
    if npz_out is not None:
        written += write_images(npz_out, images, **extra)
    return written


def _usable_shard(shard_dir: str, index: int, count: int, image_shape: tuple[int, ...]) -> bool:
    """Whether shard ``index`` is on disk and readable; a truncated or corrupt one is removed with
    one warning line (it is then sampled again)."""
    path = shard_path(shard_dir, index)
    if not os.path.exists(path):
        return False
    if read_shard(path, count, image_shape) is not None:
        return True
    print(f"warning: {path} is truncated or corrupt; sampling it again", file=sys.stderr)
    os.remove(path)
    return False


def _sync_processes(name: str) -> None:
    """A barrier across the processes of a ``jax.distributed`` run (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def interpolation_codes(key: jax.Array, num_pairs: int, points: int, image_shape: Sequence[int]) -> np.ndarray:
    """[num_pairs, points, H, W, C]: slerp from z0 to z1 (both ~ N(0, I)) at alpha = 0 .. 1."""
    key0, key1 = jax.random.split(key)
    shape = (num_pairs,) + tuple(image_shape)
    z0 = jax.random.normal(key0, shape, jnp.float32)
    z1 = jax.random.normal(key1, shape, jnp.float32)
    alphas = jnp.linspace(0.0, 1.0, points)
    return np.asarray(jax.vmap(slerp, (0, 0, None))(z0, z1, alphas))   # one angle per pair


def run_interpolate(loaded: LoadedModel, spec: SamplerSpec, *, num: int, batch_size: int, seed: int,
                    out: str, progress: bool = True, points: int = INTERPOLATION_POINTS,
                    label: str | int | None = None, guidance: float = 1.0) -> np.ndarray:
    """``num`` rows of ``points`` images each, decoded from slerped codes (paper Fig. 6); with
    ``label``, row ``i`` has label ``labels_for(num, label, K)[i]``."""
    seq = loaded.timesteps(spec.steps, spec.skip)
    code_key, noise_key = jax.random.split(jax.random.key(seed))
    codes = interpolation_codes(code_key, num, points, loaded.image_shape)
    flat = codes.reshape((num * points,) + loaded.image_shape)
    sampler = BatchedSampler(loaded, batch_size, num_images=flat.shape[0])
    bar = Progress(ceil_div(flat.shape[0], sampler.batch_size), f"interpolating S={spec.steps}", progress)
    try:
        row_labels = _labels(loaded, num, label)
        labels = None if row_labels is None else np.repeat(row_labels, points)
        images = to_uint8(sampler.decode(flat, seq, spec, noise_key, bar, labels, guidance))
    finally:
        bar.close()
    written = write_images(out, images, ncols=points)
    alphas = [f"alpha={alpha:.3g}" for alpha in np.linspace(0.0, 1.0, points)]
    alphas[0], alphas[-1] = alphas[0] + " (z0)", alphas[-1] + " (z1)"
    written += write_caption(out, f"interpolate: {num} rows, one per pair of codes (z0, z1), slerp between them; "
                             f"S={spec.steps} skip={spec.skip}", alphas)
    report_written(written, images.shape)
    return images


def reconstruction_mse(x0: np.ndarray, reconstruction: np.ndarray) -> float:
    """Per-dimension MSE on [0, 1] (Table 2): mean(((x + 1) / 2 - (x_rec + 1) / 2) ** 2)."""
    original = (np.asarray(x0, np.float64) + 1.0) / 2.0
    rebuilt = (np.clip(np.asarray(reconstruction, np.float64), -1.0, 1.0) + 1.0) / 2.0
    return float(np.mean((original - rebuilt) ** 2))


def run_reconstruct(loaded: LoadedModel, spec: SamplerSpec, *, num: int, batch_size: int, seed: int,
                    out: str, step_counts: Sequence[int], progress: bool = True,
                    label: str | int | None = None,
                    guidance: float = 1.0) -> dict[int, float]:
    """Encode ``num`` real images and decode them for each S; returns {S: MSE on [0, 1]} (Table 2).

    Decoding inverts the encoder exactly only when both run the same deterministic update, and
    ``encode`` never clips x0_hat, so the decoder here never clips either (``spec.clip_x0`` is
    ignored; ``sample.py`` refuses ``--clip`` for this mode). The grid has one row per image: the
    original, then its reconstruction at each S. A class-conditional model encodes and decodes each
    image with its real label, or with ``label`` when given (``"all"``: image ``i`` as class
    ``i mod K``), at the same ``guidance``.
    """
    spec = dataclasses.replace(spec, clip_x0=False)
    if loaded.config is None:
        raise SampleError("--mode=reconstruct needs a run config that names the dataset; use --workdir")
    try:
        if loaded.num_classes:
            x0, labels = load_eval_images(loaded.config, num, seed=seed, with_labels=True)
            labels = labels if label is None else _labels(loaded, num, label)
        else:
            x0, labels = load_eval_images(loaded.config, num, seed=seed), None
        x0 = np.asarray(x0, np.float32)
    except ValueError as error:  # unprepared dataset, too few images: the message says which
        raise SampleError(f"cannot load {num} real images of {loaded.config.data.name!r}: {error}") from error
    if x0.shape[1:] != tuple(loaded.image_shape):
        raise SampleError(f"dataset images have shape {x0.shape[1:]}, the model expects {loaded.image_shape}")
    sampler = BatchedSampler(loaded, batch_size, num_images=x0.shape[0])
    batches = ceil_div(x0.shape[0], sampler.batch_size)
    bar = Progress(2 * batches * len(step_counts), "encode + decode", progress)
    columns = [x0]
    mse = {}
    try:
        for count in step_counts:
            seq = loaded.timesteps(count, spec.skip)
            codes = sampler.encode(x0, seq, bar, labels, guidance)
            decoded = sampler.decode(codes, seq, dataclasses.replace(spec, steps=count),
                                     jax.random.key(seed), bar, labels, guidance)
            mse[count] = reconstruction_mse(x0, decoded)
            columns.append(decoded)
    finally:
        bar.close()
    print(f"Reconstruction MSE per dimension on [0, 1] ({x0.shape[0]} images, skip={spec.skip}):")
    print(f"{'S':>6}  {'MSE':>10}")
    for count, value in mse.items():
        print(f"{count:>6}  {value:>10.6f}")
    grid = np.stack([to_uint8(column) for column in columns], axis=1)   # [N, 1 + K, H, W, C]
    images = grid.reshape((-1,) + tuple(loaded.image_shape))
    extra = {}
    if out.endswith(".npz"):
        extra = {"step_counts": np.asarray(list(mse), np.int32),
                 "mse": np.asarray(list(mse.values()), np.float64)}
    written = write_images(out, images, ncols=1 + len(step_counts), **extra)
    labels = ["original (real image)"] + [f"reconstruction at S={count} (MSE {mse[count]:.6f})"
                                          for count in step_counts]
    written += write_caption(out, f"reconstruct: {x0.shape[0]} rows, one per real image; skip={spec.skip}", labels)
    report_written(written, images.shape)
    return mse


def write_caption(out: str, title: str, column_labels: Sequence[str]) -> list[str]:
    """Prints what each grid column is and writes the same caption beside the grid (``<out>.txt``)."""
    lines = [title] + [f"column {index + 1}: {label}" for index, label in enumerate(column_labels)]
    print("\n".join(lines))
    path = out + ".txt"
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()), ".txt")
    return [path]


def run_consistency(loaded: LoadedModel, spec: SamplerSpec, *, num: int, batch_size: int, seed: int,
                    out: str, step_counts: Sequence[int], progress: bool = True,
                    label: str | int | None = None, guidance: float = 1.0) -> np.ndarray:
    """The same ``num`` codes x_T decoded with each S, one row per code (paper Fig. 5); with
    ``label``, code ``i`` has label ``labels_for(num, label, K)[i]``."""
    code_key, noise_key = jax.random.split(jax.random.key(seed))
    codes = np.asarray(jax.random.normal(code_key, (num,) + tuple(loaded.image_shape), jnp.float32))
    sampler = BatchedSampler(loaded, batch_size, num_images=num)
    batches = ceil_div(num, sampler.batch_size)
    bar = Progress(batches * len(step_counts), "decoding", progress)
    columns = []
    labels = _labels(loaded, num, label)
    try:
        for count in step_counts:
            seq = loaded.timesteps(count, spec.skip)
            columns.append(to_uint8(sampler.decode(codes, seq, dataclasses.replace(spec, steps=count),
                                                   noise_key, bar, labels, guidance)))
    finally:
        bar.close()
    images = np.stack(columns, axis=1).reshape((-1,) + tuple(loaded.image_shape))
    written = write_images(out, images, ncols=len(step_counts))
    written += write_caption(out, f"consistency: {num} rows, one per x_T (the same code in every column); "
                             f"skip={spec.skip}", [f"decoded with S={count}" for count in step_counts])
    report_written(written, images.shape)
    return images


def report_written(paths: Sequence[str], shape: Sequence[int]) -> None:
    for path in paths:
        if path.endswith(".txt"):
            print(f"wrote {path} (the grid's caption)")
        else:
            print(f"wrote {path} ({shape[0]} images of {tuple(shape[1:])})")
