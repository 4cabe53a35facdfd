"""Converting OpenAI guided-diffusion checkpoints (ADM UNets and noisy classifiers) once, and
loading the result without unpickling anything.

A converted directory holds::

    model.safetensors   the state dict: guided-diffusion's names and PyTorch layouts, dtypes kept
    adm_config.json     {"format": "ddim-jax-adm", "format_version": 1, "architecture": "ADMUNet" or
                         "ADMClassifier", "flags": {every model / classifier flag},
                         "diffusion": {noise_schedule, diffusion_steps, learn_sigma, rescale_timesteps,
                         timestep_respacing, predict_xstart}, "sampling": {classifier_scale, if given},
                         "source": the .pt file's name}

:func:`convert_adm` reads the ``.pt`` file with
``torch.load(path, map_location="cpu", weights_only=True)`` (no arbitrary objects); it checks every
tensor against the model the flags describe before writing. :func:`load_adm` reads only the JSON
and the safetensors file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
from safetensors.numpy import save_file

from ddim_jax.models.adm import ADMClassifier, ADMUNet
from ddim_jax.models.adm_config import (
    CLASSIFIER_DEFAULTS,
    DIFFUSION_DEFAULTS,
    MODEL_DEFAULTS,
    NOISE_SCHEDULES,
    ADMConfigError,
    adm_classifier_kwargs,
    adm_unet_kwargs,
    as_bool,
    as_float,
    as_int,
    complete_flags,
    parse_flag_string,
    typed_flags,
)
from ddim_jax.pretrained.adm_mapping import check_state_dict, convert_adm_state_dict
from ddim_jax.pretrained.files import PretrainedError, read_json, read_safetensors
from ddim_jax.pretrained.torch_files import load_torch_file, prepare_out_dir, torch_state_to_numpy
from ddim_jax.schedules import make_betas

FORMAT = "ddim-jax-adm"
FORMAT_VERSION = 1
CONFIG_NAME = "adm_config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHITECTURES = {"ADMUNet": ADMUNet, "ADMClassifier": ADMClassifier}
# Sampling flags that classifier_sample.py reads next to the model flags; kept as defaults.
_SAMPLING_FLAGS = {"classifier_scale": 1.0}


def _split_flags(flags: Mapping[str, Any], architecture: str) -> tuple[dict, dict, dict]:
    """(model or classifier flags as given, diffusion flags completed with their defaults, sampling
    flags as given); a flag of none of them is an error."""
    model_defaults = MODEL_DEFAULTS if architecture == "ADMUNet" else CLASSIFIER_DEFAULTS
    known = {**model_defaults, **DIFFUSION_DEFAULTS, **_SAMPLING_FLAGS}
    complete_flags(flags, known, "model" if architecture == "ADMUNet" else "classifier")
    model = {k: v for k, v in flags.items() if k in model_defaults}
    diffusion = complete_flags({k: v for k, v in flags.items() if k in DIFFUSION_DEFAULTS}, DIFFUSION_DEFAULTS,
                               "diffusion")
    sampling = {k: as_float(k, v, 0.0, float("inf")) for k, v in flags.items() if k in _SAMPLING_FLAGS}
    return model, diffusion, sampling


def _diffusion_settings(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusion flags as typed values (checked)."""
    schedule = diffusion["noise_schedule"]
    if schedule not in NOISE_SCHEDULES:
        raise ADMConfigError("noise_schedule", f"must be one of {', '.join(NOISE_SCHEDULES)}, got {schedule!r}")
    settings = dict(
        noise_schedule=schedule,
        diffusion_steps=as_int("diffusion_steps", diffusion["diffusion_steps"], 1),
        learn_sigma=as_bool("learn_sigma", diffusion["learn_sigma"]),
        rescale_timesteps=as_bool("rescale_timesteps", diffusion["rescale_timesteps"]),
        timestep_respacing=str(diffusion["timestep_respacing"]),
        predict_xstart=as_bool("predict_xstart", diffusion["predict_xstart"]),
    )
    if settings["predict_xstart"]:
        raise ADMConfigError("predict_xstart", "True (an x0-predicting model) is not supported; the released "
                                               "models predict eps")
    for training_only in ("use_kl", "rescale_learned_sigmas"):  # loss weighting: no effect on sampling
        as_bool(training_only, diffusion[training_only])
    return settings


def build_adm(architecture: str, flags: Mapping[str, Any], dtype: str | None = None) -> nn.Module:
    """The Flax module of ``architecture`` for guided-diffusion ``flags`` (``ADMConfigError`` if bad)."""
    if architecture not in ARCHITECTURES:
        raise PretrainedError(f"unknown ADM architecture {architecture!r} (expected one of "
                              f"{', '.join(ARCHITECTURES)})")
    make_kwargs = adm_unet_kwargs if architecture == "ADMUNet" else adm_classifier_kwargs
    return ARCHITECTURES[architecture](**make_kwargs(flags, dtype))


def adm_schedule(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The noise schedule of guided-diffusion's ``get_named_beta_schedule`` for the diffusion
    settings of a converted directory, in the keys of
    :func:`~ddim_jax.pretrained.schedule.load_diffusers_schedule` plus the ADM settings.

    ``linear`` is DDPM's linspace(1e-4, 0.02) scaled by ``1000 / T``; ``cosine`` is Nichol & Dhariwal's
    (s = 0.008, betas capped at 0.999), both as in guided-diffusion's ``gaussian_diffusion.py``.
    """
    steps, kind = int(settings["diffusion_steps"]), settings["noise_schedule"]
    beta_start, beta_end = 1e-4 * 1000.0 / steps, 0.02 * 1000.0 / steps
    try:  # (cosine ignores beta_start / beta_end; pass valid ones whatever T is)
        betas = make_betas(kind, steps, *((beta_start, beta_end) if kind == "linear" else (1e-4, 0.02)))
    except ValueError as err:
        raise PretrainedError(f"bad diffusion settings: {err}") from err
    return dict(
        betas=betas, num_timesteps=steps, prediction_type="eps", beta_schedule=kind,
        beta_start=beta_start, beta_end=beta_end, clip_sample=True, skip=None,
        learn_sigma=bool(settings["learn_sigma"]), rescale_timesteps=bool(settings["rescale_timesteps"]),
        timestep_respacing=str(settings["timestep_respacing"]),
    )


def convert_adm(pt_path: str | os.PathLike, out_dir: str | os.PathLike, flags: str | Mapping[str, Any],
                architecture: str = "ADMUNet") -> dict[str, Any]:
    """Converts a guided-diffusion ``.pt`` state dict into a directory :func:`load_adm` reads.

    Args:
      pt_path: the released file (e.g. ``256x256_diffusion.pt``, ``64x64_classifier.pt``).
      out_dir: a new or empty directory.
      flags: guided-diffusion's flags for the file: its README's ``MODEL_FLAGS`` string (or a
        dict); for a classifier its classifier flags (``--classifier_depth 4`` for the 64x64 one).
      architecture: ``"ADMUNet"`` or ``"ADMClassifier"``.

    Returns:
      The JSON config written.

    Raises:
      PretrainedError: one line naming bad flags, or every missing / unexpected / wrongly shaped /
        non-float tensor.
    """
    pt_path, out_dir = os.fspath(pt_path), os.fspath(out_dir)
    if architecture not in ARCHITECTURES:
        raise PretrainedError(f"unknown ADM architecture {architecture!r}")
    try:
        parsed = parse_flag_string(flags) if isinstance(flags, str) else dict(flags)
        model_flags, diffusion, sampling = _split_flags(parsed, architecture)
        settings = _diffusion_settings(diffusion)
        model = build_adm(architecture, model_flags)
    except ADMConfigError as err:
        raise PretrainedError(f"--flags: {err}") from None
    model_flags = typed_flags(model_flags, MODEL_DEFAULTS if architecture == "ADMUNet" else CLASSIFIER_DEFAULTS)
    state = torch_state_to_numpy(load_torch_file(pt_path), pt_path)
    image_size = int(model_flags["image_size"])
    check_state_dict(state, model, image_size, os.path.basename(pt_path))
    config = dict(format=FORMAT, format_version=FORMAT_VERSION, architecture=architecture,
                  flags=model_flags, diffusion=settings, sampling=sampling,
                  image_size=image_size, source=os.path.basename(pt_path))
    prepare_out_dir(out_dir)
    save_file(state, os.path.join(out_dir, WEIGHTS_NAME))
    with open(os.path.join(out_dir, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return config


def read_adm_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``adm_config.json`` of a converted directory."""
    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isdir(path):
        raise PretrainedError(f"no such directory: {path}")
    if not os.path.isfile(config_path):
        raise PretrainedError(f"{path} is not a converted ADM directory: no {CONFIG_NAME} (convert the .pt with "
                              "`python -m ddim_jax.pretrained convert-adm`)")
    config = read_json(config_path)
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise PretrainedError(f"{config_path}: format {config.get('format')!r} version "
                              f"{config.get('format_version')!r}, expected {FORMAT!r} version {FORMAT_VERSION}")
    for key, kind in (("architecture", str), ("flags", dict), ("diffusion", dict), ("image_size", int)):
        if not isinstance(config.get(key), kind):
            raise PretrainedError(f"{config_path}: {key} missing or not a {kind.__name__}")
    return config


def load_adm(path: str | os.PathLike, dtype: str | None = None) -> tuple[nn.Module, dict, dict[str, Any]]:
    """Loads a directory written by :func:`convert_adm` (JSON + safetensors only).

    Args:
      path: the converted directory.
      dtype: ``"float32"`` / ``"bfloat16"`` compute; default from the flags' ``use_fp16``.

    Returns:
      ``(model, params, schedule)``: an :class:`~ddim_jax.models.adm.ADMUNet` (called as
      ``model.apply({"params": params}, x [B, H, W, 3], t [B], labels)``) or
      :class:`~ddim_jax.models.adm.ADMClassifier` (``-> logits [B, classes]``), its float32 params,
      and :func:`adm_schedule` of the diffusion settings.

    Raises:
      PretrainedError: for a missing or malformed config, bad flags, or any weight mismatch.
    """
    path = os.fspath(path)
    config = read_adm_config(path)
    try:
        model = build_adm(config["architecture"], config["flags"], dtype)
        settings = _diffusion_settings({**DIFFUSION_DEFAULTS, **config["diffusion"]})
    except ADMConfigError as err:
        raise PretrainedError(f"{os.path.join(path, CONFIG_NAME)}: {err}") from None
    weights = os.path.join(path, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise PretrainedError(f"missing {weights}")
    params = convert_adm_state_dict(read_safetensors([weights]), model, config["image_size"], WEIGHTS_NAME)
    return model, params, adm_schedule(settings)
