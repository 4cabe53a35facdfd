"""The four modes of ``sample.py``, each after a figure or table of the DDIM paper.

- ``samples`` (:func:`run_samples`): N images from x_T ~ N(0, I) with the generalized sampler
  (Eq. 12; eta = 0 is DDIM, eta = 1 is DDPM, ``sigma_hat`` the larger-variance row of Table 1),
  written in resumable shards (``ddim_jax/shards.py``) and trimmed to exactly N images.
- ``interpolate`` (:func:`run_interpolate`): slerp between pairs of x_T codes, decoded with DDIM
  (Fig. 6).
- ``reconstruct`` (:func:`run_reconstruct`): real images encoded to x_T (the eta = 0 update run
  upward in t) and decoded again, with the per-dimension MSE on [0, 1] for several S (Table 2).
- ``consistency`` (:func:`run_consistency`): the same x_T decoded with several S (Fig. 5).

Images are NHWC float32 in [-1, 1] inside, uint8 [N, H, W, C] on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ddim_jax.batching import BatchedSampler, Progress
from ddim_jax.images import atomic_write, make_grid, save_npz, save_png, to_uint8
from ddim_jax.input_pipeline import load_eval_images
from ddim_jax.loading import LoadedModel
from ddim_jax.sample_spec import SampleError, SamplerSpec
from ddim_jax.sampling import slerp
from ddim_jax.schedules import timestep_sequence
from ddim_jax.shards import (
    SAMPLING_VERSION,
    finished_output,
    prepare_shard_dir,
    shard_dir_for,
    shard_key,
    shard_path,
    write_done_record,
)

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
                out: str, progress: bool = True, mesh: Mesh | None = None) -> np.ndarray:
    """Exactly ``num`` uint8 samples [num, H, W, C], written to ``out``; resumable.

    Shard i holds one batch generated from ``shard_key(seed, i)``; shards already on disk (from an
    interrupted run with the same params and settings) are reused, anything else is refused. Same
    seed and batch size, same images. An output already complete with the same params and settings
    (``<out>.json`` beside it, every file's sha256 verified) is reported and read back, not redone.
    """
    batch_size = max(1, min(batch_size, num))
    meta = sample_meta(loaded, spec, seed, batch_size)
    done_meta = {**meta, "num": num}
    npz_out = all_images_file(out, num)
    if npz_out is not None and finished_output(out, done_meta):
        print(f"{out} is already complete ({num} images from the same params and settings); nothing to do")
        with np.load(npz_out) as data:
            return data["images"]
    if npz_out is not None and npz_out != out and os.path.exists(npz_out):
        raise SampleError(f"--out {out} with {num} > {GRID_MAX_IMAGES} images also writes all of them to "
                          f"{npz_out}, which exists; remove it or choose another --out")
    seq = timestep_sequence(num_steps=spec.steps, num_timesteps=loaded.num_timesteps, kind=spec.skip)
    num_shards = -(-num // batch_size)
    shard_dir = shard_dir_for(out)
    prepare_shard_dir(shard_dir, meta)
    missing = [index for index in range(num_shards) if not os.path.exists(shard_path(shard_dir, index))]
    if missing:
        sampler = BatchedSampler(loaded, batch_size, mesh)
        bar = Progress(num_shards, f"sampling S={spec.steps}", progress, initial=num_shards - len(missing))
        try:
            for index in missing:
                code_key, noise_key = shard_key(seed, index)
                x_T = np.asarray(jax.random.normal(code_key, (batch_size,) + loaded.image_shape, jnp.float32))
                images = to_uint8(sampler.decode_batch(x_T, seq, spec, noise_key))
                save_npz(shard_path(shard_dir, index), images=images)
                bar.update(batch_size)
        finally:
            bar.close()
    shards = []
    for index in range(num_shards):
        with np.load(shard_path(shard_dir, index)) as shard:
            shards.append(shard["images"])
    images = np.concatenate(shards)[:num]
    written = []
    if out.endswith(".npz"):
        written += write_images(out, images)
    else:
        written += write_images(out, images[:GRID_MAX_IMAGES])
        if npz_out is not None:
            written += write_images(npz_out, images)
    if npz_out is not None:
        write_done_record(out, done_meta, written)
    shutil.rmtree(shard_dir)
    report_written(written, images.shape)
    return images


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
                    mesh: Mesh | None = None) -> np.ndarray:
    """``num`` rows of ``points`` images each, decoded from slerped codes (paper Fig. 6)."""
    seq = timestep_sequence(num_steps=spec.steps, num_timesteps=loaded.num_timesteps, kind=spec.skip)
    code_key, noise_key = jax.random.split(jax.random.key(seed))
    codes = interpolation_codes(code_key, num, points, loaded.image_shape)
    flat = codes.reshape((num * points,) + loaded.image_shape)
    sampler = BatchedSampler(loaded, batch_size, mesh, num_images=flat.shape[0])
    bar = Progress(-(-flat.shape[0] // sampler.batch_size), f"interpolating S={spec.steps}", progress)
    try:
        images = to_uint8(sampler.decode(flat, seq, spec, noise_key, bar))
    finally:
        bar.close()
    written = write_images(out, images, ncols=points)
    report_written(written, images.shape)
    return images


def reconstruction_mse(x0: np.ndarray, reconstruction: np.ndarray) -> float:
    """Per-dimension MSE on [0, 1] (Table 2): mean(((x + 1) / 2 - (x_rec + 1) / 2) ** 2)."""
    original = (np.asarray(x0, np.float64) + 1.0) / 2.0
    rebuilt = (np.clip(np.asarray(reconstruction, np.float64), -1.0, 1.0) + 1.0) / 2.0
    return float(np.mean((original - rebuilt) ** 2))


def run_reconstruct(loaded: LoadedModel, spec: SamplerSpec, *, num: int, batch_size: int, seed: int,
                    out: str, step_counts: Sequence[int], progress: bool = True,
                    mesh: Mesh | None = None) -> dict[int, float]:
    """Encode ``num`` real images and decode them for each S; returns {S: MSE on [0, 1]} (Table 2).

    Decoding inverts the encoder exactly only when both run the same deterministic update, and
    ``encode`` never clips x0_hat, so the decoder here never clips either (``spec.clip_x0`` is
    ignored; ``sample.py`` refuses ``--clip`` for this mode). The grid has one row per image: the
    original, then its reconstruction at each S.
    """
    spec = dataclasses.replace(spec, clip_x0=False)
    if loaded.config is None:
        raise SampleError("--mode=reconstruct needs a run config that names the dataset; use --workdir")
    try:
        x0 = np.asarray(load_eval_images(loaded.config, num, seed=seed), np.float32)
    except ValueError as error:  # unprepared dataset, too few images: the message says which
        raise SampleError(f"cannot load {num} real images of {loaded.config.data.name!r}: {error}") from error
    if x0.shape[1:] != tuple(loaded.image_shape):
        raise SampleError(f"dataset images have shape {x0.shape[1:]}, the model expects {loaded.image_shape}")
    sampler = BatchedSampler(loaded, batch_size, mesh, num_images=x0.shape[0])
    batches = -(-x0.shape[0] // sampler.batch_size)
    bar = Progress(2 * batches * len(step_counts), "encode + decode", progress)
    columns = [x0]
    mse = {}
    try:
        for count in step_counts:
            seq = timestep_sequence(num_steps=count, num_timesteps=loaded.num_timesteps, kind=spec.skip)
            codes = sampler.encode(x0, seq, bar)
            decoded = sampler.decode(codes, seq, dataclasses.replace(spec, steps=count),
                                     jax.random.key(seed), bar)
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
                    mesh: Mesh | None = None) -> np.ndarray:
    """The same ``num`` codes x_T decoded with each S, one row per code (paper Fig. 5)."""
    code_key, noise_key = jax.random.split(jax.random.key(seed))
    codes = np.asarray(jax.random.normal(code_key, (num,) + tuple(loaded.image_shape), jnp.float32))
    sampler = BatchedSampler(loaded, batch_size, mesh, num_images=num)
    batches = -(-num // sampler.batch_size)
    bar = Progress(batches * len(step_counts), "decoding", progress)
    columns = []
    try:
        for count in step_counts:
            seq = timestep_sequence(num_steps=count, num_timesteps=loaded.num_timesteps, kind=spec.skip)
            columns.append(to_uint8(sampler.decode(codes, seq, dataclasses.replace(spec, steps=count),
                                                   noise_key, bar)))
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
