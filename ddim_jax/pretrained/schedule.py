"""The noise schedule shipped with a diffusers checkpoint (``scheduler_config.json``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ddim_jax.pretrained.files import PretrainedError, read_json
from ddim_jax.schedules import make_betas

# diffusers scheduler beta_schedule -> ddim_jax.schedules.make_betas kind (same formulas).
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
_PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 2e-2,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "clip_sample": True,
}
# Keys that change what a diffusers scheduler computes but that this sampler does not model: a
# non-default value is refused by name rather than silently ignored. (key -> default, why).
_REFUSED_UNLESS_DEFAULT: dict[str, tuple[Any, str]] = {
    "clip_sample_range": (1.0, "x0 is clipped to [-1, 1] here"),
    "thresholding": (False, "dynamic thresholding is not implemented"),
    "set_alpha_to_one": (True, "the last step here always goes to alpha = 1 (t_prev = -1)"),
    "steps_offset": (0, "timesteps are never shifted here; pick a spacing with --skip instead"),
}
# diffusers timestep_spacing -> ddim_jax.schedules.timestep_sequence kind (the sampling default).
_TIMESTEP_SPACINGS = {"leading": "leading", "trailing": "trailing", "linspace": "linspace"}


def load_diffusers_schedule(path: str | os.PathLike) -> dict[str, Any]:
    """The noise schedule shipped with a diffusers checkpoint.

    Reads ``scheduler/scheduler_config.json`` (pipelines) or ``scheduler_config.json``; missing
    keys take the diffusers ``DDPMScheduler`` defaults (linear betas 1e-4 .. 0.02, T = 1000,
    epsilon prediction). Without any scheduler config the DDPM schedule is assumed.

    Returns:
      dict with ``betas`` (np.float64 ``[T]``), ``num_timesteps`` (T), ``prediction_type``
      (``"eps"``, ``"x0"`` or ``"v"``), ``beta_schedule`` (the :func:`~ddim_jax.make_betas` kind,
      or ``None`` for explicit ``trained_betas``), ``beta_start``, ``beta_end``, ``clip_sample``
      and ``skip`` (the :func:`~ddim_jax.timestep_sequence` kind named by the scheduler's
      ``timestep_spacing``, or ``None`` when it names none).

    Raises:
      PretrainedError: for an unknown beta schedule, prediction type or timestep spacing,
        zero-terminal-SNR rescaling, or a non-default ``clip_sample_range``, ``thresholding``,
        ``set_alpha_to_one`` or ``steps_offset`` (each changes the result in a way not modelled here).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise PretrainedError(f"no such directory: {path}")
    raw: dict[str, Any] = {}
    for candidate in (os.path.join(path, "scheduler", "scheduler_config.json"),
                      os.path.join(path, "scheduler_config.json")):
        if os.path.isfile(candidate):
            raw = read_json(candidate)
            break
    config = {**_SCHEDULER_DEFAULTS, **{k: v for k, v in raw.items() if k in _SCHEDULER_DEFAULTS}}
    for key, (default, why) in _REFUSED_UNLESS_DEFAULT.items():
        if key in raw and raw[key] != default:
            raise PretrainedError(f"unsupported scheduler option {key}={raw[key]!r} (only {default!r}: {why})")
    spacing = raw.get("timestep_spacing")
    if spacing is not None and spacing not in _TIMESTEP_SPACINGS:
        raise PretrainedError(f"unsupported scheduler timestep_spacing={spacing!r} "
                              f"(supported: {', '.join(_TIMESTEP_SPACINGS)})")
    if config["rescale_betas_zero_snr"]:
        raise PretrainedError("unsupported scheduler option rescale_betas_zero_snr=True")
    if config["prediction_type"] not in _PREDICTION_TYPES:
        raise PretrainedError(f"unsupported scheduler prediction_type={config['prediction_type']!r} "
                              f"(supported: {', '.join(_PREDICTION_TYPES)})")
    num_timesteps = int(config["num_train_timesteps"])
    beta_start, beta_end = float(config["beta_start"]), float(config["beta_end"])
    if config["trained_betas"] is not None:
        betas = np.asarray(config["trained_betas"], np.float64)
        if betas.ndim != 1 or betas.size != num_timesteps:
            raise PretrainedError(f"trained_betas has shape {betas.shape}, expected ({num_timesteps},)")
        kind = None
    else:
        if config["beta_schedule"] not in _BETA_SCHEDULES:
            raise PretrainedError(f"unsupported scheduler beta_schedule={config['beta_schedule']!r} "
                                  f"(supported: {', '.join(_BETA_SCHEDULES)})")
        kind = _BETA_SCHEDULES[config["beta_schedule"]]
        try:
            betas = make_betas(kind, num_timesteps, beta_start, beta_end)
        except ValueError as err:
            raise PretrainedError(f"bad scheduler config: {err}") from err
    if not np.all((betas > 0) & (betas <= 1)):
        raise PretrainedError("scheduler betas must lie in (0, 1]")
    return dict(
        betas=betas,
        num_timesteps=num_timesteps,
        prediction_type=_PREDICTION_TYPES[config["prediction_type"]],
        beta_schedule=kind,
        beta_start=beta_start,
        beta_end=beta_end,
        clip_sample=bool(config["clip_sample"]),
        skip=None if spacing is None else _TIMESTEP_SPACINGS[spacing],
    )
