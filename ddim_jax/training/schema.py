"""Run configs: the defaults (which are also the schema), validation and JSON (de)serialisation.

A run config is an ``ml_collections.ConfigDict`` with six sections -- ``data``, ``model``,
``diffusion``, ``training``, ``optim``, ``sampling``. :func:`default_config` sets every key to the
DDPM/DDIM CIFAR-10 recipe, and that ConfigDict *is* the schema: the files in ``configs/`` start
from it and override what differs, ``train.py`` locks it (an unknown ``--config.x.y`` is refused),
and ConfigDict's type safety rejects a value of the wrong type.

``config.model`` holds exactly the keyword arguments of :class:`ddim_jax.models.UNet` (all but
``out_ch``, which is ``config.data.channels``), so the UNet checks its own hyperparameters.

:func:`validate_config` checks a config that did not go through that path (a dict, a stored
checkpoint config) key by key against the defaults, then the value ranges that the types cannot
express, and raises :class:`ConfigError` -- a ``ValueError`` naming the key -- before any data is
read or anything is traced. An unknown key is never ignored (the DDIM authors' configs once lost a
key and a ``try/except`` silently turned gradient clipping off).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from ddim_jax.errors import UserError
from ddim_jax.models.unet import UNetConfigError, create_model
from ddim_jax.schedules import BETA_SCHEDULES, SCHEDULE_SPACINGS, SPACINGS
from ddim_jax.solvers import solver_problem

__all__ = [
    "ConfigError",
    "DATASET_CHANNELS",
    "DATASET_NUM_CLASSES",
    "default_config",
    "validate_config",
    "config_to_json",
    "config_from_json",
    "downsampling_factor",
]

# Datasets the input pipeline can read, with their channel count. "digits" is scikit-learn's copy of
# the UCI 8x8 handwritten digits (no network needed); the others are TFDS names.
DATASET_CHANNELS: dict[str, int] = {
    "digits": 1,
    "mnist": 1,
    "fashion_mnist": 1,
    "cifar10": 3,
    "celeb_a": 3,
}
# Classes of the datasets that have a ``label`` feature (class-conditional runs: model.num_classes).
DATASET_NUM_CLASSES: dict[str, int] = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10}


class ConfigError(UserError, ValueError):
    """A run config is missing a key, has an unknown key, or a key has a wrong type or value."""


def default_config() -> ml_collections.ConfigDict:
    """Every key of a run config, set to the DDPM/DDIM CIFAR-10 recipe (Ho et al. 2020; DDIM §5).

    The files in ``configs/`` start from this and override what differs, so each file shows only
    what is special about its dataset.
    """
    config = ml_collections.ConfigDict()

    config.data = data = ml_collections.ConfigDict()
    data.name = "cifar10"
    data.image_size = 32
    data.channels = 3
    data.random_flip = True
    data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the TFDS default
    data.train_split = "train"
    data.eval_split = "test"
    data.crop = ml_collections.config_dict.placeholder(tuple)  # (top, left, height, width) or None
    data.num_workers = 0  # grain worker processes; 0 reads in threads of the training process

    # Exactly the UNet's keyword arguments (ddim_jax/models/unet.py), except out_ch.
    config.model = model = ml_collections.ConfigDict()
    model.ch = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.dropout = 0.1
    model.resamp_with_conv = True
    model.num_groups = 32
    model.norm_eps = 1e-6
    # Timestep-embedding and resampling variants: DDPM's by default; converted diffusers
    # checkpoints (ddim_jax/pretrained.py) set them to match the published weights.
    model.flip_sin_to_cos = False
    model.freq_shift = 1.0
    model.downsample_padding = 0
    model.attn_head_dim = ml_collections.config_dict.placeholder(int)  # None: one attention head
    model.num_classes = 0  # 0: unconditional; K > 0: class-conditional on the dataset's K labels
    # Computation dtype, "float32" or "bfloat16" (train.py / sample.py --precision fp32|bf16 set it);
    # params, optimizer state, EMA and the loss stay float32 either way.
    model.dtype = "float32"

    config.diffusion = diffusion = ml_collections.ConfigDict()
    diffusion.beta_schedule = "linear"
    diffusion.beta_start = 1e-4
    diffusion.beta_end = 2e-2
    diffusion.num_timesteps = 1000
    diffusion.prediction_type = "eps"

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128  # global batch, split over all devices of all processes
    training.num_train_steps = 800_000
    training.log_every_steps = 100
    training.checkpoint_every_steps = 5_000
    training.sample_every_steps = 10_000
    training.num_grid_samples = 64
    training.keep_checkpoints = 3
    training.ema_decay = 0.9999
    training.seed = 0
    # Class-conditional runs only: the fraction of labels replaced by the null class (classifier-free
    # guidance trains the unconditional model on those).
    training.label_dropout = 0.1

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 2e-4
    optim.warmup_steps = 5_000
    optim.grad_clip_norm = 1.0
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8

    # Defaults of sample.py for this run (its flags override them) and of the training grids.
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.num_steps = 20
    sampling.eta = 0.0
    sampling.skip = "uniform"
    sampling.solver = "ddim"  # or another solver of ddim_jax.solvers.REGISTRY
    sampling.clip_x0 = True
    # With clip_x0: re-derive eps from the clipped x0 (True) or keep the model's eps (False; what
    # diffusers' DDIMScheduler does, so converted checkpoints set it).
    sampling.rederive_eps = True
    sampling.batch_size = 256
    sampling.num_samples = 64
    return config


def downsampling_factor(config: ml_collections.ConfigDict) -> int:
    """How much the UNet shrinks the image: 2 ** (len(ch_mult) - 1)."""
    return 2 ** (len(config.model.ch_mult) - 1)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return "a tuple"
    return type(value).__name__


def _conform(schema: ml_collections.ConfigDict, values: Any, prefix: str) -> None:
    """Assigns ``values`` onto the locked ``schema`` leaf by leaf: ConfigDict rejects unknown keys
    and values of the wrong type; every key of the schema must be present."""
    if not isinstance(values, (ml_collections.ConfigDict, Mapping)):
        raise ConfigError(f"config.{prefix}: must be a section (ConfigDict), got {type(values).__name__}")
    for key in values.keys():
        if key not in schema:
            kind = "section" if not prefix else "key"
            raise ConfigError(f"config.{prefix}{key}: unknown {kind} (known: {sorted(schema.keys())})")
    for key in schema.keys():
        default = schema[key]
        if key not in values:
            kind = "section" if isinstance(default, ml_collections.ConfigDict) else "key"
            raise ConfigError(f"config.{prefix}{key}: missing {kind}")
        value = values[key]
        if isinstance(default, ml_collections.ConfigDict):
            _conform(default, value, f"{prefix}{key}.")
            continue
        # ConfigDict casts int -> float and list -> tuple, and lets a bool pass for an int.
        if isinstance(value, bool) and not isinstance(default, bool) and default is not None:
            raise ConfigError(f"config.{prefix}{key}: must be {_type_name(default)}, got {value!r}")
        try:
            schema[key] = value
        except TypeError:
            expected = _type_name(default) if default is not None else "of its placeholder type or None"
            raise ConfigError(f"config.{prefix}{key}: must be {expected}, got {value!r}") from None


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{key}: {message}")


def _check_values(config: ml_collections.ConfigDict) -> None:
    """Ranges and cross-key constraints that types cannot express."""
    data, diffusion = config.data, config.diffusion
    training, optim, sampling = config.training, config.optim, config.sampling

    _require(data.name in DATASET_CHANNELS, "data.name",
             f"unknown dataset {data.name!r}; known: {sorted(DATASET_CHANNELS)}")
    expected_channels = DATASET_CHANNELS[data.name]
    _require(data.channels == expected_channels, "data.channels",
             f"dataset {data.name!r} has {expected_channels} channel(s), config says {data.channels}")
    _require(data.image_size > 0, "data.image_size", f"must be positive, got {data.image_size}")
    _require(data.num_workers >= 0, "data.num_workers", f"must be >= 0, got {data.num_workers}")
    if data.crop is not None:
        crop = tuple(data.crop)
        _require(len(crop) == 4 and all(v >= 0 for v in crop) and crop[2] > 0 and crop[3] > 0, "data.crop",
                 f"needs (top, left, height, width) with top, left >= 0 and height, width > 0, got {crop}")

    try:  # the UNet checks its own hyperparameters (ddim_jax/models/unet.py)
        create_model(config)
    except UNetConfigError as error:
        raise ConfigError(f"config.model.{error.field}: {error.detail}") from None
    factor = downsampling_factor(config)
    _require(data.image_size % factor == 0, "data.image_size",
             f"{data.image_size} is not divisible by the UNet's downsampling factor {factor} "
             f"(2 ** (len(model.ch_mult) - 1) with ch_mult={tuple(config.model.ch_mult)})")
    resolutions = {data.image_size // 2 ** level for level in range(len(config.model.ch_mult))}
    for resolution in config.model.attn_resolutions:
        _require(resolution in resolutions, "model.attn_resolutions",
                 f"{resolution} is not one of the UNet's resolutions {sorted(resolutions)}")

    _require(diffusion.beta_schedule in BETA_SCHEDULES, "diffusion.beta_schedule",
             f"unknown schedule {diffusion.beta_schedule!r}; known: {sorted(BETA_SCHEDULES)}")
    _require(0.0 < diffusion.beta_start <= diffusion.beta_end < 1.0, "diffusion.beta_start",
             f"need 0 < beta_start <= beta_end < 1, got {diffusion.beta_start}, {diffusion.beta_end}")
    _require(diffusion.num_timesteps >= 2, "diffusion.num_timesteps",
             f"must be >= 2, got {diffusion.num_timesteps}")
    _require(diffusion.prediction_type == "eps", "diffusion.prediction_type",
             f"training supports only 'eps' (the paper's L_simple), got {diffusion.prediction_type!r}")

    _require(training.batch_size > 0, "training.batch_size", f"must be positive, got {training.batch_size}")
    _require(training.num_train_steps >= 0, "training.num_train_steps",
             f"must be >= 0, got {training.num_train_steps}")
    for key in ("log_every_steps", "checkpoint_every_steps", "sample_every_steps", "keep_checkpoints"):
        _require(training[key] > 0, f"training.{key}", f"must be positive, got {training[key]}")
    _require(training.num_grid_samples >= 0, "training.num_grid_samples",
             f"must be >= 0, got {training.num_grid_samples}")
    _require(0.0 <= training.ema_decay < 1.0, "training.ema_decay",
             f"must be in [0, 1), got {training.ema_decay}")
    _require(0.0 <= training.label_dropout < 1.0, "training.label_dropout",
             f"must be in [0, 1), got {training.label_dropout}")
    if config.model.num_classes:
        classes = DATASET_NUM_CLASSES.get(data.name)
        _require(classes is not None, "model.num_classes", f"dataset {data.name!r} has no class labels; use 0")
        _require(config.model.num_classes == classes, "model.num_classes",
                 f"dataset {data.name!r} has {classes} classes, config says {config.model.num_classes}")
    _require(0 <= training.seed < 2**31, "training.seed", f"must be in [0, 2**31), got {training.seed}")

    _require(math.isfinite(optim.learning_rate) and optim.learning_rate > 0, "optim.learning_rate",
             f"must be a positive finite number, got {optim.learning_rate}")
    _require(optim.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {optim.warmup_steps}")
    _require(optim.grad_clip_norm > 0, "optim.grad_clip_norm",
             f"must be positive (clipping cannot be switched off by accident), got {optim.grad_clip_norm}")
    _require(0.0 <= optim.beta1 < 1.0, "optim.beta1", f"must be in [0, 1), got {optim.beta1}")
    _require(0.0 <= optim.beta2 < 1.0, "optim.beta2", f"must be in [0, 1), got {optim.beta2}")
    _require(optim.eps > 0, "optim.eps", f"must be positive, got {optim.eps}")

    _require(1 <= sampling.num_steps <= diffusion.num_timesteps, "sampling.num_steps",
             f"must be in [1, num_timesteps={diffusion.num_timesteps}], got {sampling.num_steps}")
    _require(0 <= sampling.eta <= 1, "sampling.eta", f"must be in [0, 1] (0 = DDIM, 1 = DDPM), got {sampling.eta}")
    _require(sampling.skip in SPACINGS + SCHEDULE_SPACINGS, "sampling.skip",
             f"unknown spacing {sampling.skip!r}; known: {sorted(SPACINGS + SCHEDULE_SPACINGS)}")
    problem = solver_problem(sampling.solver, eta=sampling.eta)
    _require(problem is None, "sampling.eta" if "eta" in (problem or "") else "sampling.solver", str(problem))
    _require(sampling.batch_size > 0, "sampling.batch_size", f"must be positive, got {sampling.batch_size}")
    _require(sampling.num_samples > 0, "sampling.num_samples", f"must be positive, got {sampling.num_samples}")


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks a run config against :func:`default_config` (keys and types) and the value ranges.

    Args:
      config: the full run config (a ConfigDict or a nested mapping).

    Returns:
      ``config`` itself (unchanged), so calls can be chained.

    Raises:
      ConfigError: (a ``ValueError``) naming the first missing, unknown, mistyped or bad key.
    """
    schema = default_config()
    schema.lock()
    _conform(schema, config, "")
    _check_values(schema)
    return config


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """Serialises a run config to JSON (tuples become lists; see :func:`config_from_json`)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def config_from_json(text: str | Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of :func:`config_to_json`; accepts the JSON text or the already-parsed dict.

    The stored values are laid over :func:`default_config`, so lists become tuples again and a key
    added to the defaults after the config was written takes its default. Unknown keys and wrong
    types raise :class:`ConfigError`.
    """
    raw = json.loads(text) if isinstance(text, str) else dict(text)
    if not isinstance(raw, dict):
        raise ConfigError("stored config is not a JSON object")
    config = default_config()
    config.lock()
    _overlay(config, raw, "")
    return config


def _overlay(config: ml_collections.ConfigDict, values: Mapping[str, Any], prefix: str) -> None:
    for key, value in values.items():
        if key not in config:
            raise ConfigError(f"config.{prefix}{key}: unknown key in the stored config")
        if isinstance(config[key], ml_collections.ConfigDict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config.{prefix}{key}: must be a section, got {type(value).__name__}")
            _overlay(config[key], value, f"{prefix}{key}.")
            continue
        try:
            config[key] = value
        except TypeError:
            raise ConfigError(f"config.{prefix}{key}: stored value {value!r} has the wrong type") from None
