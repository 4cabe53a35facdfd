"""Validation and (de)serialisation of run configs (``ml_collections.ConfigDict``).

A run config has six sections -- ``data``, ``model``, ``diffusion``, ``training``, ``optim``,
``sampling`` -- and exactly the keys listed in :data:`SCHEMA`. :func:`validate_config` checks
everything up front (missing or unknown keys, types, values) and raises :class:`ConfigError`, a
``ValueError`` whose message names the offending key, before any data is read or anything is traced.
An unknown key is never ignored: the DDIM authors' configs lost a key once and a ``try/except``
silently turned gradient clipping off.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from typing import Any, Callable, Mapping

import ml_collections

from ddim_jax.schedules import BETA_SCHEDULES, SPACINGS

__all__ = [
    "ConfigError",
    "SCHEMA",
    "OPTIONAL_SCHEMA",
    "DATASET_CHANNELS",
    "validate_config",
    "config_to_json",
    "config_from_json",
    "downsampling_factor",
    "default_config",
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


class ConfigError(ValueError):
    """A run config is missing a key, has an unknown key, or a key has a wrong type or value."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float))) and not isinstance(value, bool)


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(_is_int(v) for v in value)


# key -> (type description, type check). Value checks follow in _check_values.
_INT = ("an int", _is_int)
_NUM = ("a number", _is_number)
_BOOL = ("a bool", lambda v: isinstance(v, bool))
_STR = ("a string", lambda v: isinstance(v, str))
_OPT_STR = ("a string or None", lambda v: v is None or isinstance(v, str))
_INTS = ("a tuple of ints", _is_int_tuple)
_OPT_CROP = ("None or a tuple (top, left, height, width)",
             lambda v: v is None or (_is_int_tuple(v) and len(v) == 4))

SCHEMA: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "data": {
        "name": _STR,
        "image_size": _INT,
        "channels": _INT,
        "random_flip": _BOOL,
        "data_dir": _OPT_STR,
        "train_split": _STR,
        "eval_split": _STR,
        "crop": _OPT_CROP,
        "num_workers": _INT,
    },
    "model": {
        "ch": _INT,
        "ch_mult": _INTS,
        "num_res_blocks": _INT,
        "attn_resolutions": _INTS,
        "dropout": _NUM,
        "resamp_with_conv": _BOOL,
        "num_groups": _INT,
        "norm_eps": _NUM,
    },
    "diffusion": {
        "beta_schedule": _STR,
        "beta_start": _NUM,
        "beta_end": _NUM,
        "num_timesteps": _INT,
        "prediction_type": _STR,
    },
    "training": {
        "batch_size": _INT,
        "num_train_steps": _INT,
        "log_every_steps": _INT,
        "checkpoint_every_steps": _INT,
        "sample_every_steps": _INT,
        "num_grid_samples": _INT,
        "keep_checkpoints": _INT,
        "ema_decay": _NUM,
        "seed": _INT,
    },
    "optim": {
        "learning_rate": _NUM,
        "warmup_steps": _INT,
        "grad_clip_norm": _NUM,
        "beta1": _NUM,
        "beta2": _NUM,
        "eps": _NUM,
    },
    "sampling": {
        "num_steps": _INT,
        "eta": _NUM,
        "skip": _STR,
        "clip_x0": _BOOL,
        "batch_size": _INT,
        "num_samples": _INT,
    },
}


# Keys a section may omit (the UNet falls back to DDPM's choices). Converted pretrained checkpoints
# (``ddim_jax.pretrained``) set them to match the published weights' layout.
OPTIONAL_SCHEMA: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "model": {
        "flip_sin_to_cos": _BOOL,
        "freq_shift": _NUM,
        "downsample_padding": ("0 or 1", lambda v: _is_int(v) and v in (0, 1)),
        "attn_head_dim": ("an int or None", lambda v: v is None or (_is_int(v) and v > 0)),
    },
    # With clip_x0: re-derive eps from the clipped x0 (default, True) or keep the model's eps
    # (False; what diffusers' DDIMScheduler does, so converted checkpoints set it).
    "sampling": {
        "rederive_eps": _BOOL,
    },
}


def downsampling_factor(config: ml_collections.ConfigDict) -> int:
    """How much the UNet shrinks the image: 2 ** (len(ch_mult) - 1)."""
    return 2 ** (len(config.model.ch_mult) - 1)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{key}: {message}")


def _check_values(config: ml_collections.ConfigDict) -> None:
    data, model, diffusion = config.data, config.model, config.diffusion
    training, optim, sampling = config.training, config.optim, config.sampling

    _require(data.name in DATASET_CHANNELS, "data.name",
             f"unknown dataset {data.name!r}; known: {sorted(DATASET_CHANNELS)}")
    expected_channels = DATASET_CHANNELS[data.name]
    _require(data.channels == expected_channels, "data.channels",
             f"dataset {data.name!r} has {expected_channels} channel(s), config says {data.channels}")
    _require(data.image_size > 0, "data.image_size", f"must be positive, got {data.image_size}")
    _require(data.num_workers >= 0, "data.num_workers", f"must be >= 0, got {data.num_workers}")
    if data.crop is not None:
        _require(all(v >= 0 for v in data.crop) and data.crop[2] > 0 and data.crop[3] > 0,
                 "data.crop", f"needs top, left >= 0 and height, width > 0, got {tuple(data.crop)}")

    _require(len(model.ch_mult) >= 1 and all(m > 0 for m in model.ch_mult), "model.ch_mult",
             f"needs one or more positive multipliers, got {tuple(model.ch_mult)}")
    factor = downsampling_factor(config)
    _require(data.image_size % factor == 0, "data.image_size",
             f"{data.image_size} is not divisible by the UNet's downsampling factor {factor} "
             f"(2 ** (len(model.ch_mult) - 1) with ch_mult={tuple(model.ch_mult)})")
    _require(model.ch > 0, "model.ch", f"must be positive, got {model.ch}")
    _require(model.num_res_blocks >= 1, "model.num_res_blocks", f"must be >= 1, got {model.num_res_blocks}")
    _require(model.num_groups >= 1, "model.num_groups", f"must be >= 1, got {model.num_groups}")
    for mult in model.ch_mult:
        _require(model.ch * mult % model.num_groups == 0, "model.num_groups",
                 f"{model.num_groups} groups do not divide {model.ch * mult} channels (ch * {mult})")
    resolutions = {data.image_size // 2 ** level for level in range(len(model.ch_mult))}
    for resolution in model.attn_resolutions:
        _require(resolution in resolutions, "model.attn_resolutions",
                 f"{resolution} is not one of the UNet's resolutions {sorted(resolutions)}")
    _require(0.0 <= model.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {model.dropout}")
    _require(model.norm_eps > 0, "model.norm_eps", f"must be positive, got {model.norm_eps}")

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
        value = training[key]
        _require(value > 0, f"training.{key}", f"must be positive, got {value}")
    _require(training.num_grid_samples >= 0, "training.num_grid_samples",
             f"must be >= 0, got {training.num_grid_samples}")
    _require(0.0 <= training.ema_decay < 1.0, "training.ema_decay",
             f"must be in [0, 1), got {training.ema_decay}")
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
    _require(sampling.skip in SPACINGS, "sampling.skip",
             f"unknown spacing {sampling.skip!r}; known: {sorted(SPACINGS)}")
    _require(sampling.batch_size > 0, "sampling.batch_size", f"must be positive, got {sampling.batch_size}")
    _require(sampling.num_samples > 0, "sampling.num_samples", f"must be positive, got {sampling.num_samples}")


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks a run config against :data:`SCHEMA` and sane value ranges.

    Args:
      config: the full run config.

    Returns:
      ``config`` itself (unchanged), so calls can be chained.

    Raises:
      ConfigError: (a ``ValueError``) naming the first missing, unknown, mistyped or bad key.
    """
    if not isinstance(config, (ml_collections.ConfigDict, Mapping)):
        raise ConfigError(f"config must be an ml_collections.ConfigDict, got {type(config).__name__}")
    present = set(config.keys())
    for section in SCHEMA:
        if section not in present:
            raise ConfigError(f"config.{section}: missing section")
    unknown = sorted(present - set(SCHEMA))
    if unknown:
        raise ConfigError(f"config.{unknown[0]}: unknown section (known: {sorted(SCHEMA)})")
    for section, keys in SCHEMA.items():
        values = config[section]
        if not isinstance(values, (ml_collections.ConfigDict, Mapping)):
            raise ConfigError(f"config.{section}: must be a section (ConfigDict), got {type(values).__name__}")
        for key, (description, type_ok) in keys.items():
            if key not in values:
                raise ConfigError(f"config.{section}.{key}: missing key")
            if not type_ok(values[key]):
                raise ConfigError(f"config.{section}.{key}: must be {description}, got {values[key]!r}")
        optional = OPTIONAL_SCHEMA.get(section, {})
        for key, (description, type_ok) in optional.items():
            if key in values and not type_ok(values[key]):
                raise ConfigError(f"config.{section}.{key}: must be {description}, got {values[key]!r}")
        unknown_keys = sorted(set(values.keys()) - set(keys) - set(optional))
        if unknown_keys:
            raise ConfigError(f"config.{section}.{unknown_keys[0]}: unknown key "
                              f"(known: {sorted(set(keys) | set(optional))})")
    _check_values(config)
    return config


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """Serialises a run config to JSON (tuples become lists; see :func:`config_from_json`)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _restore_tuples(section: str, values: dict[str, Any]) -> dict[str, Any]:
    restored = dict(values)
    for key, (description, _) in SCHEMA.get(section, {}).items():
        if "tuple" in description and isinstance(restored.get(key), list):
            restored[key] = tuple(restored[key])
    return restored


def config_from_json(text: str | Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of :func:`config_to_json`; accepts the JSON text or the already-parsed dict."""
    raw = json.loads(text) if isinstance(text, str) else dict(text)
    if not isinstance(raw, dict):
        raise ConfigError("stored config is not a JSON object")
    sections = {name: _restore_tuples(name, dict(values)) if isinstance(values, Mapping) else values
                for name, values in raw.items()}
    return ml_collections.ConfigDict(sections)


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

    config.model = model = ml_collections.ConfigDict()
    model.ch = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.dropout = 0.1
    model.resamp_with_conv = True
    model.num_groups = 32
    model.norm_eps = 1e-6

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

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 2e-4
    optim.warmup_steps = 5_000
    optim.grad_clip_norm = 1.0
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.num_steps = 20
    sampling.eta = 0.0
    sampling.skip = "uniform"
    sampling.clip_x0 = True
    sampling.batch_size = 256
    sampling.num_samples = 64
    return config


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Runs a config file's ``get_config()`` (what ``--config path`` does), without validating it.

    Args:
      path: a Python file defining ``get_config() -> ml_collections.ConfigDict``
        (e.g. ``configs/digits.py``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_name = "ddim_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config()")
    return module.get_config()

