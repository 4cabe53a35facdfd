"""The DDIM equations as pure, jittable functions, vmapped over the batch.

Notation (paper = Song, Meng & Ermon 2021; DESIGN.md section 2): ``alphas_cumprod[t]`` is the
paper's alpha_t; ``t`` is a 0-based timestep index and ``t_prev = -1`` means alpha = 1 (the
last update returns the predicted x0).

Shapes: ``x`` is ``[B, ...]`` (any trailing shape, NHWC images in this project); ``t`` and
``t_prev`` are int scalars (shared by the batch) or int ``[B]`` (one per example). Per-example
kernels are written for one example and ``jax.vmap``-ed over the batch; all public functions
are jitted. Argument checks run on the Python side before tracing; checks on the *values* of
``t`` / ``t_prev`` / ``eta`` run only when those are concrete (i.e. called outside ``jit``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
PREDICTION_TYPES = ("eps", "x0", "v")


# --------------------------------------------------------------------------------------------
# Validation (Python side, before tracing)
# --------------------------------------------------------------------------------------------
def _concrete(value) -> np.ndarray | None:
    """The value as a NumPy array, or None when it is traced inside a transformation."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def _check_alphas_cumprod(alphas_cumprod, fn: str) -> int:
    shape = np.shape(alphas_cumprod)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"{fn}: alphas_cumprod must be a non-empty 1-D array [T], got shape {shape}")
    return shape[0]


def _check_batch(x, fn: str, name: str = "x") -> int:
    shape = np.shape(x)
    if len(shape) < 1:
        raise ValueError(f"{fn}: {name} must have a leading batch dimension [B, ...], got shape {shape}")
    return shape[0]


def _check_same_shape(a, b, fn: str, name_a: str, name_b: str) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{fn}: {name_a} and {name_b} must have the same shape, got {np.shape(a)} and {np.shape(b)}")


def _check_timestep(t, batch: int, num_timesteps: int, fn: str, name: str, allow_minus_one: bool) -> None:
    shape = np.shape(t)
    if shape not in ((), (batch,)):
        raise ValueError(f"{fn}: {name} must be a scalar or have shape [B] = ({batch},), got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(t), jnp.integer):
        raise ValueError(f"{fn}: {name} must be an integer timestep index, got dtype {jnp.result_type(t)}")
    value = _concrete(t)
    if value is None:
        return
    low = -1 if allow_minus_one else 0
    if value.size and (value.min() < low or value.max() > num_timesteps - 1):
        raise ValueError(
            f"{fn}: {name} must lie in [{low}, T-1 = {num_timesteps - 1}], got values in [{value.min()}, {value.max()}]"
        )


def _check_t_prev_below_t(t, t_prev, fn: str) -> None:
    t_value, t_prev_value = _concrete(t), _concrete(t_prev)
    if t_value is None or t_prev_value is None:
        return
    if np.any(t_prev_value >= t_value):
        raise ValueError(f"{fn}: t_prev must be smaller than t (the reverse process goes down in t); got t={t_value}, t_prev={t_prev_value}")


def _check_reverse_step_args(fn: str, x_t, eps, t, t_prev, alphas_cumprod, noise=None) -> None:
    """The checks shared by every reverse step: shapes, timestep ranges and t_prev < t."""
    num_timesteps = _check_alphas_cumprod(alphas_cumprod, fn)
    batch = _check_batch(x_t, fn, "x_t")
    _check_same_shape(x_t, eps, fn, "x_t", "eps")
    if noise is not None:
        _check_same_shape(x_t, noise, fn, "x_t", "noise")
    _check_timestep(t, batch, num_timesteps, fn, "t", allow_minus_one=False)
    _check_timestep(t_prev, batch, num_timesteps, fn, "t_prev", allow_minus_one=True)
    _check_t_prev_below_t(t, t_prev, fn)


def check_eta(eta, fn: str) -> None:
    """eta must lie in [0, 1]: above 1 the square root of Eq. 12 goes negative."""
    value = _concrete(eta)
    if value is None:
        return
    if value.shape != ():
        raise ValueError(f"{fn}: eta must be a scalar, got shape {value.shape}")
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{fn}: eta must be in [0, 1] (0 = DDIM, 1 = DDPM), got {float(value)}")


def check_prediction_type(prediction_type: str, fn: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"{fn}: unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


# --------------------------------------------------------------------------------------------
# Per-example kernels (x is ONE example; t scalar)
# --------------------------------------------------------------------------------------------
def alpha_at(alphas_cumprod: Array, t: Array) -> Array:
    """alpha_t with the convention alpha_{-1} = 1 (jittable; ``t`` any int array)."""
    return jnp.where(t >= 0, alphas_cumprod[jnp.maximum(t, 0)], jnp.ones((), alphas_cumprod.dtype))


def _forward_marginal_one(x0, t, noise, alphas_cumprod):
    alpha = alpha_at(alphas_cumprod, t)
    return jnp.sqrt(alpha) * x0 + jnp.sqrt(1.0 - alpha) * noise


def _predict_x0_one(x_t, eps, t, alphas_cumprod):
    alpha = alpha_at(alphas_cumprod, t)
    return (x_t - jnp.sqrt(1.0 - alpha) * eps) / jnp.sqrt(alpha)


def _sigma_one(t, t_prev, alphas_cumprod, eta):
    alpha, alpha_prev = alpha_at(alphas_cumprod, t), alpha_at(alphas_cumprod, t_prev)
    return eta * jnp.sqrt((1.0 - alpha_prev) / (1.0 - alpha)) * jnp.sqrt(1.0 - alpha / alpha_prev)


def _x_prev_from_x0_eps(x0_hat, eps, alpha_prev, sigma, noise):
    """Eq. 12 given x0_hat and eps: the mean plus sigma-scaled fresh noise."""
    # 1 - a_prev - sigma^2 >= 0 for eta in [0, 1]; the clamp only removes float rounding below 0.
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(alpha_prev) * x0_hat + direction + sigma * noise


def _generalized_step_one(x_t, eps, t, t_prev, alphas_cumprod, eta, noise):
    x0_hat = _predict_x0_one(x_t, eps, t, alphas_cumprod)
    sigma = _sigma_one(t, t_prev, alphas_cumprod, eta)
    return _x_prev_from_x0_eps(x0_hat, eps, alpha_at(alphas_cumprod, t_prev), sigma, noise)


def _posterior_step_one(x_t, x0_hat, t, t_prev, alphas_cumprod, noise):
    """The paper's sigma-hat row: DDPM's posterior mean of q(x_prev | x_t, x0_hat) with
    beta = 1 - a_t / a_prev, plus sigma_hat = sqrt(beta) noise (none on the last step)."""
    alpha, alpha_prev = alpha_at(alphas_cumprod, t), alpha_at(alphas_cumprod, t_prev)
    beta = 1.0 - alpha / alpha_prev
    mean = (jnp.sqrt(alpha_prev) * beta * x0_hat + jnp.sqrt(1.0 - beta) * (1.0 - alpha_prev) * x_t) / (1.0 - alpha)
    sigma_hat = jnp.where(t_prev >= 0, jnp.sqrt(beta), 0.0)
    return mean + sigma_hat * noise


def _batched(kernel, batched_flags):
    """vmap ``kernel`` over the batch; ``batched_flags[i]`` says whether argument i has a batch axis."""
    return jax.vmap(kernel, in_axes=tuple(0 if flag else None for flag in batched_flags))


def _per_example(t) -> bool:
    return np.ndim(t) == 1


# --------------------------------------------------------------------------------------------
# Jitted batched implementations (no validation: used inside the samplers too)
# --------------------------------------------------------------------------------------------
@jax.jit
def _forward_marginal(x0, t, noise, alphas_cumprod):
    return _batched(_forward_marginal_one, (True, _per_example(t), True, False))(x0, t, noise, alphas_cumprod)


@jax.jit
def _predict_x0(x_t, eps, t, alphas_cumprod):
    return _batched(_predict_x0_one, (True, True, _per_example(t), False))(x_t, eps, t, alphas_cumprod)


@jax.jit
def _generalized_step(x_t, eps, t, t_prev, alphas_cumprod, eta, noise):
    flags = (True, True, _per_example(t), _per_example(t_prev), False, False, True)
    return _batched(_generalized_step_one, flags)(x_t, eps, t, t_prev, alphas_cumprod, eta, noise)


@jax.jit
def _sigma_hat_step(x_t, x0_hat, t, t_prev, alphas_cumprod, noise):
    flags = (True, True, _per_example(t), _per_example(t_prev), False, True)
    return _batched(_posterior_step_one, flags)(x_t, x0_hat, t, t_prev, alphas_cumprod, noise)


@jax.jit
def _sigma(t, t_prev, alphas_cumprod, eta):
    return _sigma_one(t, t_prev, alphas_cumprod, eta)


def eps_and_x0_from_output(
    model_output, x_t, t, alphas_cumprod, prediction_type: str, clip_x0: bool = False, rederive_eps: bool = True
):
    """Converts a model output to (eps, x0_hat), optionally clipping x0_hat to [-1, 1].

    ``prediction_type``: ``"eps"`` (the noise, DDPM/DDIM), ``"x0"`` (the clean sample) or
    ``"v"`` (``v = sqrt(a) eps - sqrt(1-a) x0``, Salimans & Ho 2022). When x0_hat is clipped and
    ``rederive_eps`` is true, eps is re-derived from the clipped x0_hat and x_t (Eq. 4 solved for
    eps), so the step stays on the line through x_t and x0_hat (GLIDE; diffusers'
    ``use_clipped_model_output=True``); with ``rederive_eps=False`` the model's eps is kept
    (diffusers' default). Jittable; ``t`` scalar or ``[B]``.
    """
    alpha = alpha_at(alphas_cumprod, t)
    alpha = jnp.reshape(alpha, np.shape(alpha) + (1,) * (np.ndim(x_t) - np.ndim(alpha)))
    sqrt_alpha, sqrt_one_minus_alpha = jnp.sqrt(alpha), jnp.sqrt(1.0 - alpha)
    if prediction_type == "eps":
        eps = model_output
        x0_hat = (x_t - sqrt_one_minus_alpha * eps) / sqrt_alpha
    elif prediction_type == "x0":
        x0_hat = model_output
        eps = (x_t - sqrt_alpha * x0_hat) / sqrt_one_minus_alpha
    elif prediction_type == "v":
        eps = sqrt_alpha * model_output + sqrt_one_minus_alpha * x_t
        x0_hat = sqrt_alpha * x_t - sqrt_one_minus_alpha * model_output
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    if clip_x0:
        x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
        if rederive_eps:
            eps = (x_t - sqrt_alpha * x0_hat) / sqrt_one_minus_alpha
    return eps, x0_hat


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def forward_marginal(x0: Array, t: Array, noise: Array, alphas_cumprod: Array) -> Array:
    """Samples q(x_t | x0) (paper Eq. 4): ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``.

    Args:
      x0: clean data ``[B, ...]``.
      t: int timestep, scalar or ``[B]``, in ``[0, T-1]``.
      noise: standard normal noise, same shape as ``x0``.
      alphas_cumprod: ``[T]``.
    Returns: ``x_t``, shape of ``x0``.
    """
    fn = "forward_marginal"
    num_timesteps = _check_alphas_cumprod(alphas_cumprod, fn)
    batch = _check_batch(x0, fn, "x0")
    _check_same_shape(x0, noise, fn, "x0", "noise")
    _check_timestep(t, batch, num_timesteps, fn, "t", allow_minus_one=False)
    return _forward_marginal(x0, t, noise, alphas_cumprod)


def predict_x0(x_t: Array, eps: Array, t: Array, alphas_cumprod: Array) -> Array:
    """The denoised observation (paper Eq. 9): ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``.

    Shapes: ``x_t``, ``eps`` ``[B, ...]``; ``t`` scalar or ``[B]``.
    """
    fn = "predict_x0"
    num_timesteps = _check_alphas_cumprod(alphas_cumprod, fn)
    batch = _check_batch(x_t, fn, "x_t")
    _check_same_shape(x_t, eps, fn, "x_t", "eps")
    _check_timestep(t, batch, num_timesteps, fn, "t", allow_minus_one=False)
    return _predict_x0(x_t, eps, t, alphas_cumprod)


def ddim_sigma(t: Array, t_prev: Array, alphas_cumprod: Array, eta: float | Array) -> Array:
    """sigma_t(eta) of paper Eq. 16:
    ``eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)``; 0 when ``t_prev = -1``."""
    check_eta(eta, "ddim_sigma")
    return _sigma(t, t_prev, alphas_cumprod, eta)


def generalized_step(
    x_t: Array, eps: Array, t: Array, t_prev: Array, alphas_cumprod: Array, eta: float | Array, noise: Array
) -> Array:
    """One step of the generalized generative process (paper Eq. 12) with sigma(eta) of Eq. 16.

    ``x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma noise`` where
    ``x0_hat`` is Eq. 9. ``eta = 0`` is DDIM (deterministic); ``eta = 1`` is DDPM's ancestral
    step with the posterior variance. ``t_prev = -1`` (alpha = 1) returns x0_hat.

    Args:
      x_t, eps, noise: ``[B, ...]`` (noise is standard normal; unused when sigma = 0).
      t, t_prev: int, scalar or ``[B]``; ``-1 <= t_prev < t <= T-1``.
      alphas_cumprod: ``[T]``.
      eta: scalar in ``[0, 1]``.
    Returns: ``x_prev``, ``[B, ...]``.
    """
    _check_reverse_step_args("generalized_step", x_t, eps, t, t_prev, alphas_cumprod, noise)
    check_eta(eta, "generalized_step")
    return _generalized_step(x_t, eps, t, t_prev, alphas_cumprod, jnp.asarray(eta, jnp.float32), noise)


def ddim_step(x_t: Array, eps: Array, t: Array, t_prev: Array, alphas_cumprod: Array) -> Array:
    """The deterministic DDIM step: paper Eq. 12 with sigma = 0 (Eq. 13's update).

    ``x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps``. Shapes as :func:`generalized_step`.
    """
    _check_reverse_step_args("ddim_step", x_t, eps, t, t_prev, alphas_cumprod)
    zeros = jnp.zeros(np.shape(x_t), jnp.result_type(x_t))
    return _generalized_step(x_t, eps, t, t_prev, alphas_cumprod, jnp.zeros((), jnp.float32), zeros)


def sigma_hat_step(x_t: Array, eps: Array, t: Array, t_prev: Array, alphas_cumprod: Array, noise: Array) -> Array:
    """The paper's Table 1 "sigma-hat" row: the larger variance ``sigma_hat^2 = 1 - a_t / a_prev``.

    Put into Eq. 12 this variance can make the square root negative, so (like the authors) the
    step is DDPM's posterior mean of q(x_prev | x_t, x0_hat) with ``beta = 1 - a_t / a_prev``,
    plus ``sigma_hat * noise``; the last step (``t_prev = -1``) adds no noise and returns x0_hat.
    Shapes as :func:`generalized_step`.
    """
    _check_reverse_step_args("sigma_hat_step", x_t, eps, t, t_prev, alphas_cumprod, noise)
    x0_hat = _predict_x0(x_t, eps, t, alphas_cumprod)
    return _sigma_hat_step(x_t, x0_hat, t, t_prev, alphas_cumprod, noise)


def eps_from_prediction(model_output: Array, x_t: Array, t: Array, alphas_cumprod: Array, prediction_type: str) -> Array:
    """The noise eps implied by a model output of type ``"eps"``, ``"x0"`` or ``"v"``. ``[B, ...]``."""
    check_prediction_type(prediction_type, "eps_from_prediction")
    eps, _ = eps_and_x0_from_output(model_output, x_t, t, alphas_cumprod, prediction_type)
    return eps
