"""Sampling from a trained run or a published checkpoint: the logic behind ``sample.py``.

Four modes, each after a figure or table of the DDIM paper (Song, Meng & Ermon, ICLR 2021):

- ``samples``: N images from x_T ~ N(0, I) with the generalized sampler (Eq. 12; eta = 0 is DDIM,
  eta = 1 is DDPM, ``sigma_hat`` the larger-variance row of Table 1). Written in shards of one batch
  each, so a restarted run continues where it stopped, and trimmed to exactly N images.
- ``interpolate``: spherical interpolation between pairs of x_T codes, decoded with DDIM (Fig. 6).
- ``reconstruct``: real images encoded to x_T by running the eta = 0 update upward in t, decoded
  again, with the per-dimension MSE on [0, 1] for several step counts (Table 2).
- ``consistency``: the same x_T decoded with several step counts (Fig. 5).

All model calls go through one module-level apply function with the params passed as a traced
argument (``eps_fn_args=(params,)``), so each (batch shape, S) compiles once; a short last batch is
padded to the batch size and trimmed. Batches are sharded over all local devices with a
``jax.sharding.Mesh`` (params replicated).

Images are NHWC float32 in [-1, 1] inside, uint8 [N, H, W, C] on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddim_jax.models import eps_fn_for
from ddim_jax.schedules import SPACINGS

MODES = ("samples", "interpolate", "reconstruct", "consistency")
SKIP_KINDS = SPACINGS
OUTPUT_SUFFIXES = (".png", ".npz")

# A `.png` of the `samples` mode shows at most this many images; above it the full set also goes
# to an `.npz` beside the grid.
GRID_MAX_IMAGES = 100
DEFAULT_NUM = {"samples": 64, "interpolate": 4, "reconstruct": 8, "consistency": 8}
DEFAULT_STEP_COUNTS = {"reconstruct": (10, 20, 50, 100), "consistency": (10, 20, 50, 100, 1000)}
DEFAULT_BATCH_SIZE = 64
# Grids magnify small images (8x8 digits) by an integer factor to at least this many pixels.
GRID_MIN_IMAGE_SIZE = 32
INTERPOLATION_POINTS = 10
SHARD_DIR_SUFFIX = "_shards"
SHARD_META_FILE = "meta.json"


class SampleError(ValueError):
    """A user error (bad flag, missing run, unreadable checkpoint): its message is one line."""


# ----------------------------------------------------------------------------------------------
# Options and validation
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """How to run the reverse process.

    Attributes:
      steps: S, the length of the timestep sub-sequence (1 <= S <= T).
      eta: the eta of Eq. 16 (0 = DDIM, deterministic; 1 = DDPM's ancestral step).
      sigma_hat: use the larger variance sigma_hat = sqrt(1 - a_t / a_prev) (Table 1's last row);
        replaces eta.
      skip: the timestep spacing ("uniform", "quad", "leading", "trailing", "linspace").
      clip_x0: clip the predicted x0 (Eq. 9) to [-1, 1] at every step.
    """

    steps: int = 20
    eta: float = 0.0
    sigma_hat: bool = False
    skip: str = "uniform"
    clip_x0: bool = True


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """Everything ``sample.py`` takes, as values (``None`` = the run's config or the mode default)."""

    workdir: str | None = "runs/digits"
    pretrained: str | None = None
    mode: str = "samples"
    steps: int = 20
    eta: float = 0.0
    sigma_hat: bool = False
    skip: str | None = None
    num: int | None = None
    batch_size: int | None = None
    seed: int = 0
    out: str | None = None
    use_ema: bool = True
    clip_x0: bool | None = None
    step_counts: Sequence[int] | None = None
    progress: bool = True


def validate_spec(spec: SamplerSpec, num_timesteps: int) -> None:
    """Raise :class:`SampleError` naming the first problem with ``spec`` for a T-step model."""
    if not isinstance(spec.steps, (int, np.integer)) or isinstance(spec.steps, bool):
        raise SampleError(f"--steps must be an integer, got {spec.steps!r}")
    if spec.steps < 1:
        raise SampleError(f"--steps must be at least 1, got {spec.steps}")
    if spec.steps > num_timesteps:
        raise SampleError(
            f"--steps={spec.steps} is above the model's number of training timesteps T={num_timesteps}"
        )
    if spec.skip not in SKIP_KINDS:
        raise SampleError(f"unknown --skip={spec.skip!r}; choose one of {', '.join(SKIP_KINDS)}")
    if not 0.0 <= spec.eta <= 1.0:
        raise SampleError(f"--eta must be in [0, 1] (0 = DDIM, 1 = DDPM), got {spec.eta}")
    if spec.sigma_hat and spec.eta != 0:
        raise SampleError(
            f"--sigma_hat replaces eta with the larger variance; drop --eta={spec.eta} or --sigma_hat"
        )


def _validate_options(options: SampleOptions) -> None:
    """Checks that need no model (run before anything is loaded)."""
    if options.mode not in MODES:
        raise SampleError(f"unknown --mode={options.mode!r}; choose one of {', '.join(MODES)}")
    if options.num is not None and options.num < 1:
        raise SampleError(f"--num must be at least 1, got {options.num}")
    if options.batch_size is not None and options.batch_size < 1:
        raise SampleError(f"--batch_size must be at least 1, got {options.batch_size}")
    if options.out is not None and not options.out.endswith(OUTPUT_SUFFIXES):
        raise SampleError(f"--out must end in .png (a grid) or .npz (uint8 images), got {options.out!r}")
    if options.mode != "samples" and (options.eta != 0 or options.sigma_hat):
        raise SampleError(
            f"--mode={options.mode} decodes with DDIM (eta=0); drop --eta / --sigma_hat"
        )
    if options.step_counts is not None:
        if not options.step_counts:
            raise SampleError("--step_counts is empty")
        for count in options.step_counts:
            if count < 1:
                raise SampleError(f"--step_counts must all be at least 1, got {count}")
    if not 0.0 <= options.eta <= 1.0:
        raise SampleError(f"--eta must be in [0, 1] (0 = DDIM, 1 = DDPM), got {options.eta}")
    if options.steps < 1:
        raise SampleError(f"--steps must be at least 1, got {options.steps}")
    if options.skip is not None and options.skip not in SKIP_KINDS:
        raise SampleError(f"unknown --skip={options.skip!r}; choose one of {', '.join(SKIP_KINDS)}")


def resolve_step_counts(
    requested: Sequence[int] | None, mode: str, num_timesteps: int
) -> tuple[int, ...]:
    """Step counts for ``reconstruct`` / ``consistency``.

    The defaults (10, 20, 50, 100[, 1000]) are clipped to T and de-duplicated; counts the user
    asked for must each be in 1..T.
    """
    if requested is None:
        return tuple(sorted({min(count, num_timesteps) for count in DEFAULT_STEP_COUNTS[mode]}))
    for count in requested:
        if not 1 <= count <= num_timesteps:
            raise SampleError(
                f"--step_counts value {count} is outside 1..T={num_timesteps} for this model"
            )
    return tuple(dict.fromkeys(int(count) for count in requested))


# ----------------------------------------------------------------------------------------------
# Command-line spelling
# ----------------------------------------------------------------------------------------------

_NEGATED_BOOL = re.compile(r"^no[_-]")


def normalize_argv(argv: Sequence[str], boolean_flags: Iterable[str] = ()) -> list[str]:
    """Accept dashed flag spellings for absl, which only knows underscores.

    ``--batch-size=8`` -> ``--batch_size=8``, ``--sigma-hat`` -> ``--sigma_hat`` and, for the
    boolean flags named in ``boolean_flags``, ``--no-ema`` / ``--no_ema`` -> ``--noema``. Values,
    positional arguments and everything after a bare ``--`` are left alone.
    """
    booleans = set(boolean_flags)
    normalized = list(argv[:1])
    passthrough = False
    for arg in argv[1:]:
        if passthrough or not arg.startswith("--") or arg == "--":
            passthrough = passthrough or arg == "--"
            normalized.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if _NEGATED_BOOL.match(name) and name[3:] in booleans:
            name = "no" + name[3:]
        normalized.append(f"--{name}{eq}{value}")
    return normalized


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A noise-prediction network ready to sample.

    Attributes:
      model: the Flax UNet (``model.apply({"params": params}, x, t)``).
      params: its parameters (a pytree).
      alphas_cumprod: float32 [T], the paper's alpha_t.
      image_shape: (H, W, C).
      prediction_type: what the network predicts ("eps", ...).
      description: where it came from, for messages and the shard metadata.
      config: the run's ConfigDict (None for a pretrained checkpoint without one).
      defaults: sampling defaults from the run's config (``num_steps``, ``skip``, ...).
      rederive_eps: with clipping, re-derive eps from the clipped x0 (our runs) or keep the
        model's eps (pretrained diffusers checkpoints: what their DDIMScheduler does).
    """

    model: Any
    params: Any
    alphas_cumprod: jax.Array
    image_shape: tuple[int, int, int]
    prediction_type: str = "eps"
    description: str = ""
    config: Any = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    rederive_eps: bool = True

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])


def _sampling_defaults(config) -> dict[str, Any]:
    sampling = config.get("sampling", None) if hasattr(config, "get") else None
    if sampling is None:
        return {}
    keys = ("num_steps", "eta", "skip", "clip_x0", "rederive_eps", "batch_size", "num_samples")
    return {key: sampling[key] for key in keys if key in sampling}


def load_run(workdir: str, use_ema: bool = True) -> LoadedModel:
    """The latest good checkpoint of a training run (EMA params by default) and its config."""
    from ddim_jax import alphas_cumprod_from_betas, make_betas
    from ddim_jax.checkpointing import CheckpointError, load_for_sampling
    from ddim_jax.models import create_model

    if not workdir:
        raise SampleError("--workdir is empty")
    if not os.path.isdir(workdir):
        raise SampleError(f"workdir {workdir!r} does not exist (train one with train.py first)")
    try:
        config, params, step = load_for_sampling(os.path.abspath(workdir), use_ema=use_ema)
    except CheckpointError as error:
        raise SampleError(f"cannot load a checkpoint from {workdir!r}: {error}") from error
    diffusion = config.diffusion
    betas = make_betas(
        diffusion.beta_schedule,
        num_timesteps=diffusion.num_timesteps,
        beta_start=diffusion.beta_start,
        beta_end=diffusion.beta_end,
    )
    size, channels = int(config.data.image_size), int(config.data.channels)
    return LoadedModel(
        model=create_model(config),
        params=params,
        alphas_cumprod=alphas_cumprod_from_betas(betas),
        image_shape=(size, size, channels),
        prediction_type=str(diffusion.get("prediction_type", "eps")),
        description=f"{os.path.abspath(workdir)} step {step} ({'EMA' if use_ema else 'raw'} params)",
        config=config,
        defaults=_sampling_defaults(config),
        rederive_eps=bool(_sampling_defaults(config).get("rederive_eps", True)),
    )


def load_pretrained(name_or_path: str, with_run_config: bool = False) -> LoadedModel:
    """A diffusers-format ``UNet2DModel`` checkpoint (local directory or hub id) and its scheduler.

    The checkpoint's scheduler config sets the betas, T, the prediction type and the default for
    clipping x0. ``with_run_config`` also builds a run config (for ``reconstruct``: its dataset).
    """
    from ddim_jax import alphas_cumprod_from_betas, pretrained
    from ddim_jax.config_utils import ConfigError

    try:
        local_dir = pretrained.resolve_pretrained(name_or_path)
        model, variables = pretrained.load_diffusers_unet(local_dir)
        schedule = pretrained.load_diffusers_schedule(local_dir)
        size, channels = pretrained.image_shape(local_dir)
        config = pretrained.pretrained_run_config(local_dir) if with_run_config else None
    except (pretrained.PretrainedError, ConfigError) as error:
        raise SampleError(f"cannot load pretrained model {name_or_path!r}: {error}") from error
    return LoadedModel(
        model=model,
        params=variables["params"],
        alphas_cumprod=alphas_cumprod_from_betas(schedule["betas"]),
        image_shape=(int(size), int(size), int(channels)),
        prediction_type=str(schedule["prediction_type"]),
        description=f"pretrained {name_or_path}",
        config=config,
        defaults={"clip_x0": bool(schedule["clip_sample"])},
        rederive_eps=False,
    )


# ----------------------------------------------------------------------------------------------
# Batched sampling over a device mesh
# ----------------------------------------------------------------------------------------------


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ("data") mesh over the local devices: batches split, params replicated."""
    devices = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.array(devices), ("data",))


class BatchedSampler:
    """Runs ``sample`` / ``encode`` over any number of images in fixed-size batches.

    The batch size is rounded up to a multiple of the number of devices; a short batch is padded
    with zeros and trimmed, so one compilation serves every batch of a given S. ``num_images``
    (the total to process, when known) caps the batch so a few images are not padded to a large
    batch.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int, mesh: Mesh | None = None,
                 num_images: int | None = None):
        self.loaded = loaded
        self.mesh = make_mesh() if mesh is None else mesh
        num_devices = self.mesh.devices.size
        if num_images is not None:
            batch_size = max(1, min(batch_size, num_images))
        self.batch_size = -(-batch_size // num_devices) * num_devices
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self._params = jax.device_put(loaded.params, replicated)
        self._alphas_cumprod = jax.device_put(loaded.alphas_cumprod, replicated)
        self._eps_fn = eps_fn_for(loaded.model)

    def _pad(self, x: np.ndarray) -> jax.Array:
        if x.shape[0] > self.batch_size:
            raise ValueError(f"batch of {x.shape[0]} is larger than the batch size {self.batch_size}")
        padding = self.batch_size - x.shape[0]
        if padding:
            x = np.concatenate([x, np.zeros((padding,) + x.shape[1:], x.dtype)])
        return jax.device_put(jnp.asarray(x, jnp.float32), self._batch_sharding)

    def decode_batch(self, x_T: np.ndarray, seq: np.ndarray, spec: SamplerSpec, key: jax.Array) -> np.ndarray:
        """x_T [n <= batch, H, W, C] -> x0 [n, H, W, C] float32 (numpy), Eq. 12 over ``seq``."""
        from ddim_jax import sample

        count = x_T.shape[0]
        x0 = sample(
            self._eps_fn,
            self._pad(np.asarray(x_T)),
            seq,
            self._alphas_cumprod,
            eta=float(spec.eta),
            key=key,
            eps_fn_args=(self._params,),
            clip_x0=bool(spec.clip_x0),
            rederive_eps=self.loaded.rederive_eps,
            prediction_type=self.loaded.prediction_type,
            sigma_hat=bool(spec.sigma_hat),
        )
        return np.asarray(jax.device_get(x0))[:count]

    def encode_batch(self, x0: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """x0 [n <= batch, H, W, C] -> x_T codes [n, H, W, C] (deterministic DDIM inversion)."""
        from ddim_jax import encode

        count = x0.shape[0]
        codes = encode(
            self._eps_fn,
            self._pad(np.asarray(x0)),
            seq,
            self._alphas_cumprod,
            eps_fn_args=(self._params,),
            prediction_type=self.loaded.prediction_type,
        )
        return np.asarray(jax.device_get(codes))[:count]

    def decode(self, x_T: np.ndarray, seq: np.ndarray, spec: SamplerSpec, key: jax.Array,
               progress: "_Progress | None" = None) -> np.ndarray:
        """Any number of codes, batch by batch (batch i uses ``fold_in(key, i)`` for its noise)."""
        outputs = []
        for index, start in enumerate(range(0, x_T.shape[0], self.batch_size)):
            chunk = x_T[start:start + self.batch_size]
            outputs.append(self.decode_batch(chunk, seq, spec, jax.random.fold_in(key, index)))
            if progress is not None:
                progress.update(chunk.shape[0])
        return np.concatenate(outputs)

    def encode(self, x0: np.ndarray, seq: np.ndarray, progress: "_Progress | None" = None) -> np.ndarray:
        outputs = []
        for start in range(0, x0.shape[0], self.batch_size):
            chunk = x0[start:start + self.batch_size]
            outputs.append(self.encode_batch(chunk, seq))
            if progress is not None:
                progress.update(chunk.shape[0])
        return np.concatenate(outputs)


class _Progress:
    """A tqdm bar over batches that shows images per second."""

    def __init__(self, total_batches: int, description: str, enabled: bool, initial: int = 0):
        self._bar = tqdm.tqdm(total=total_batches, initial=initial, desc=description, unit="batch",
                              disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self._start = time.perf_counter()
        self.images = 0

    def update(self, images: int) -> None:
        self.images += images
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self._bar.set_postfix_str(f"{self.images / elapsed:.1f} img/s", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def _write_images(out: str, images: np.ndarray, ncols: int | None = None, **extra: np.ndarray) -> list[str]:
    """Write uint8 [N, H, W, C] ``images`` as a grid (``.png``) or an array file (``.npz``)."""
    from ddim_jax.images import make_grid, save_npz, save_png

    if out.endswith(".npz"):
        save_npz(out, images=images, **extra)
    else:
        upscale = max(1, GRID_MIN_IMAGE_SIZE // images.shape[1])
        save_png(out, make_grid(images, ncols=ncols, upscale=upscale))
    return [out]


def _write_json_atomic(path: str, payload: Mapping[str, Any]) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
    os.replace(temporary, path)


def default_out(options: SampleOptions, spec: SamplerSpec) -> str:
    """``<workdir>/samples/<mode>_S<steps>_eta<eta>_seed<seed>.png`` (or ``samples/<name>/...``)."""
    if options.pretrained:
        directory = os.path.join("samples", re.sub(r"[^A-Za-z0-9._-]+", "_", options.pretrained.strip("/")))
    else:
        directory = os.path.join(options.workdir, "samples")
    if options.mode in DEFAULT_STEP_COUNTS:   # these modes use a list of step counts, and eta = 0
        return os.path.join(directory, f"{options.mode}_{spec.skip}_seed{options.seed}.png")
    variance = "sigmahat" if spec.sigma_hat else f"eta{spec.eta:g}"
    return os.path.join(directory, f"{options.mode}_{spec.skip}_S{spec.steps}_{variance}_seed{options.seed}.png")


# ----------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------


def shard_key(seed: int, shard_index: int) -> tuple[jax.Array, jax.Array]:
    """(x_T key, noise key) of shard ``shard_index``: a pure function of the seed and the index."""
    code_key, noise_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), shard_index))
    return code_key, noise_key


def shard_dir_for(out: str) -> str:
    return os.path.splitext(out)[0] + SHARD_DIR_SUFFIX


def _shard_path(shard_dir: str, index: int) -> str:
    return os.path.join(shard_dir, f"shard_{index:06d}.npz")


def _prepare_shard_dir(shard_dir: str, meta: Mapping[str, Any]) -> None:
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
    _write_json_atomic(meta_path, meta)


def run_samples(loaded: LoadedModel, spec: SamplerSpec, *, num: int, batch_size: int, seed: int,
                out: str, progress: bool = True, mesh: Mesh | None = None) -> np.ndarray:
    """Exactly ``num`` uint8 samples [num, H, W, C], written to ``out``; resumable.

    Shard i holds one batch generated from ``shard_key(seed, i)``; shards already on disk (from an
    interrupted run with the same settings) are reused. Same seed and batch size, same images.
    """
    from ddim_jax import timestep_sequence
    from ddim_jax.images import to_uint8

    seq = timestep_sequence(num_steps=spec.steps, num_timesteps=loaded.num_timesteps, kind=spec.skip)
    num_shards = -(-num // batch_size)
    shard_dir = shard_dir_for(out)
    meta = {
        "source": loaded.description,
        "image_shape": list(loaded.image_shape),
        "spec": dataclasses.asdict(spec),
        "seed": seed,
        "shard_size": batch_size,
    }
    _prepare_shard_dir(shard_dir, meta)
    missing = [index for index in range(num_shards) if not os.path.exists(_shard_path(shard_dir, index))]
    if missing:
        from ddim_jax.images import save_npz

        sampler = BatchedSampler(loaded, batch_size, mesh)
        bar = _Progress(num_shards, f"sampling S={spec.steps}", progress, initial=num_shards - len(missing))
        try:
            for index in missing:
                code_key, noise_key = shard_key(seed, index)
                x_T = np.asarray(jax.random.normal(code_key, (batch_size,) + loaded.image_shape, jnp.float32))
                images = to_uint8(sampler.decode_batch(x_T, seq, spec, noise_key))
                save_npz(_shard_path(shard_dir, index), images=images)
                bar.update(batch_size)
        finally:
            bar.close()
    shards = []
    for index in range(num_shards):
        with np.load(_shard_path(shard_dir, index)) as shard:
            shards.append(shard["images"])
    images = np.concatenate(shards)[:num]
    written = []
    if out.endswith(".npz"):
        written += _write_images(out, images)
    else:
        written += _write_images(out, images[:GRID_MAX_IMAGES])
        if num > GRID_MAX_IMAGES:
            written += _write_images(os.path.splitext(out)[0] + ".npz", images)
    shutil.rmtree(shard_dir)
    _report_written(written, images.shape)
    return images


def interpolation_codes(key: jax.Array, num_pairs: int, points: int, image_shape: Sequence[int]) -> np.ndarray:
    """[num_pairs, points, H, W, C]: slerp from z0 to z1 (both ~ N(0, I)) at alpha = 0 .. 1."""
    from ddim_jax import slerp

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
    from ddim_jax import timestep_sequence
    from ddim_jax.images import to_uint8

    seq = timestep_sequence(num_steps=spec.steps, num_timesteps=loaded.num_timesteps, kind=spec.skip)
    code_key, noise_key = jax.random.split(jax.random.key(seed))
    codes = interpolation_codes(code_key, num, points, loaded.image_shape)
    flat = codes.reshape((num * points,) + loaded.image_shape)
    sampler = BatchedSampler(loaded, batch_size, mesh, num_images=flat.shape[0])
    bar = _Progress(-(-flat.shape[0] // sampler.batch_size), f"interpolating S={spec.steps}", progress)
    try:
        images = to_uint8(sampler.decode(flat, seq, spec, noise_key, bar))
    finally:
        bar.close()
    written = _write_images(out, images, ncols=points)
    _report_written(written, images.shape)
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

    The grid has one row per image: the original, then its reconstruction at each S.
    """
    from ddim_jax import timestep_sequence
    from ddim_jax.images import to_uint8

    if loaded.config is None:
        raise SampleError("--mode=reconstruct needs a run config that names the dataset; use --workdir")
    from ddim_jax.input_pipeline import load_eval_images

    try:
        x0 = np.asarray(load_eval_images(loaded.config, num, seed=seed), np.float32)
    except ValueError as error:  # unprepared dataset, too few images: the message says which
        raise SampleError(f"cannot load {num} real images of {loaded.config.data.name!r}: {error}") from error
    if x0.shape[1:] != tuple(loaded.image_shape):
        raise SampleError(f"dataset images have shape {x0.shape[1:]}, the model expects {loaded.image_shape}")
    sampler = BatchedSampler(loaded, batch_size, mesh, num_images=x0.shape[0])
    batches = -(-x0.shape[0] // sampler.batch_size)
    bar = _Progress(2 * batches * len(step_counts), "encode + decode", progress)
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
    written = _write_images(out, images, ncols=1 + len(step_counts), **extra)
    _report_written(written, images.shape)
    return mse


def run_consistency(loaded: LoadedModel, spec: SamplerSpec, *, num: int, batch_size: int, seed: int,
                    out: str, step_counts: Sequence[int], progress: bool = True,
                    mesh: Mesh | None = None) -> np.ndarray:
    """The same ``num`` codes x_T decoded with each S, one row per code (paper Fig. 5)."""
    from ddim_jax import timestep_sequence
    from ddim_jax.images import to_uint8

    code_key, noise_key = jax.random.split(jax.random.key(seed))
    codes = np.asarray(jax.random.normal(code_key, (num,) + tuple(loaded.image_shape), jnp.float32))
    sampler = BatchedSampler(loaded, batch_size, mesh, num_images=num)
    batches = -(-num // sampler.batch_size)
    bar = _Progress(batches * len(step_counts), "decoding", progress)
    columns = []
    try:
        for count in step_counts:
            seq = timestep_sequence(num_steps=count, num_timesteps=loaded.num_timesteps, kind=spec.skip)
            columns.append(to_uint8(sampler.decode(codes, seq, dataclasses.replace(spec, steps=count),
                                                   noise_key, bar)))
    finally:
        bar.close()
    images = np.stack(columns, axis=1).reshape((-1,) + tuple(loaded.image_shape))
    written = _write_images(out, images, ncols=len(step_counts))
    _report_written(written, images.shape)
    return images


def _report_written(paths: Sequence[str], shape: Sequence[int]) -> None:
    for path in paths:
        print(f"wrote {path} ({shape[0]} images of {tuple(shape[1:])})")


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def run(options: SampleOptions) -> Any:
    """Validate ``options``, load the model, run the mode; returns the mode's result.

    Raises:
      SampleError: for every user error (one-line message), before any sampling starts.
    """
    _validate_options(options)
    if jax.process_count() > 1:
        raise SampleError("sample.py runs in one process (it uses all of that host's devices); "
                          f"got {jax.process_count()} processes")
    if options.pretrained:
        loaded = load_pretrained(options.pretrained, with_run_config=options.mode == "reconstruct")
    else:
        loaded = load_run(options.workdir, use_ema=options.use_ema)
    defaults = loaded.defaults
    skip = options.skip if options.skip is not None else str(defaults.get("skip", "uniform"))
    clip_x0 = options.clip_x0 if options.clip_x0 is not None else bool(defaults.get("clip_x0", True))
    spec = SamplerSpec(steps=options.steps, eta=float(options.eta), sigma_hat=bool(options.sigma_hat),
                       skip=skip, clip_x0=clip_x0)
    validate_spec(spec, loaded.num_timesteps)
    num = options.num if options.num is not None else DEFAULT_NUM[options.mode]
    batch_size = options.batch_size or int(defaults.get("batch_size", DEFAULT_BATCH_SIZE))
    out = options.out or default_out(options, spec)
    print(f"{options.mode}: {loaded.description}; S={spec.steps} skip={spec.skip} "
          f"{'sigma_hat' if spec.sigma_hat else f'eta={spec.eta:g}'} clip_x0={spec.clip_x0} "
          f"seed={options.seed} on {jax.local_device_count()} device(s)")
    common = dict(num=num, batch_size=batch_size, seed=options.seed, out=out, progress=options.progress)
    if options.mode == "samples":
        return run_samples(loaded, spec, **common)
    if options.mode == "interpolate":
        return run_interpolate(loaded, spec, **common)
    step_counts = resolve_step_counts(options.step_counts, options.mode, loaded.num_timesteps)
    if options.mode == "reconstruct":
        return run_reconstruct(loaded, spec, step_counts=step_counts, **common)
    return run_consistency(loaded, spec, step_counts=step_counts, **common)
