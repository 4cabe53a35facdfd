"""The DDIM equations as pure, jittable functions, vmapped over the batch.

Notation (paper = Song, Meng & Ermon 2021; docs/conventions.md): ``alphas_cumprod[t]`` is the
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

from ddim_jax.validation import (
    PREDICTION_TYPES,
    check_alphas_cumprod,
    check_batch,
    check_eta,
    check_prediction_type,
    check_reverse_step_args,
    check_same_shape,
    check_timestep,
)

Array = Any


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


def sigma_kernel(t, t_prev, alphas_cumprod, eta):
    alpha, alpha_prev = alpha_at(alphas_cumprod, t), alpha_at(alphas_cumprod, t_prev)
    return eta * jnp.sqrt((1.0 - alpha_prev) / (1.0 - alpha)) * jnp.sqrt(1.0 - alpha / alpha_prev)


def direction_kernel(alpha, alpha_prev, eta):
    """``sqrt(1 - a_prev - sigma(eta)^2)``, the coefficient of eps in Eq. 12, written as
    ``sqrt((1 - a_prev) ((1 - eta^2) + eta^2 a_t (1 - a_prev) / (a_prev (1 - a_t))))``: the same
    value (substitute Eq. 16), a sum of non-negative terms, so nothing cancels. The direct form
    cancels when sigma^2 is close to ``1 - a_prev``: at eta = 1 from t = 999 of the cosine schedule
    (a_t = 2.4e-9) it gives 3.45e-4 in float32 against the exact 2.78e-4. eta = 0 gives
    ``sqrt(1 - a_prev)``; ``a_prev = 1`` (t_prev = -1) gives 0."""
    eta_squared = eta * eta
    one_minus_prev = 1.0 - alpha_prev
    inner = (1.0 - eta_squared) + eta_squared * alpha * one_minus_prev / (alpha_prev * (1.0 - alpha))
    return jnp.sqrt(one_minus_prev * inner)


def x_prev_from_x0_eps(x0_hat, eps, alpha_prev, direction, sigma, noise):
    """Eq. 12 given x0_hat and eps: ``sqrt(a_prev) x0_hat + direction eps + sigma noise`` with
    ``direction`` = :func:`direction_kernel` (``sqrt(1 - a_prev)`` when sigma = 0)."""
    return jnp.sqrt(alpha_prev) * x0_hat + direction * eps + sigma * noise


def _generalized_step_one(x_t, eps, t, t_prev, alphas_cumprod, eta, noise):
    x0_hat = _predict_x0_one(x_t, eps, t, alphas_cumprod)
    alpha, alpha_prev = alpha_at(alphas_cumprod, t), alpha_at(alphas_cumprod, t_prev)
    sigma = sigma_kernel(t, t_prev, alphas_cumprod, eta)
    return x_prev_from_x0_eps(x0_hat, eps, alpha_prev, direction_kernel(alpha, alpha_prev, eta), sigma, noise)


def posterior_step_kernel(x_t, x0_hat, t, t_prev, alphas_cumprod, noise):
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
    return _batched(posterior_step_kernel, flags)(x_t, x0_hat, t, t_prev, alphas_cumprod, noise)


@jax.jit
def _sigma(t, t_prev, alphas_cumprod, eta):
    return sigma_kernel(t, t_prev, alphas_cumprod, eta)


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
    num_timesteps = check_alphas_cumprod(alphas_cumprod, fn)
    batch = check_batch(x0, fn, "x0")
    check_same_shape(x0, noise, fn, "x0", "noise")
    check_timestep(t, batch, num_timesteps, fn, "t", allow_minus_one=False)
    return _forward_marginal(x0, t, noise, alphas_cumprod)


def predict_x0(x_t: Array, eps: Array, t: Array, alphas_cumprod: Array) -> Array:
    """The denoised observation (paper Eq. 9): ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``.

    Shapes: ``x_t``, ``eps`` ``[B, ...]``; ``t`` scalar or ``[B]``.
    """
    fn = "predict_x0"
    num_timesteps = check_alphas_cumprod(alphas_cumprod, fn)
    batch = check_batch(x_t, fn, "x_t")
    check_same_shape(x_t, eps, fn, "x_t", "eps")
    check_timestep(t, batch, num_timesteps, fn, "t", allow_minus_one=False)
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
    check_reverse_step_args("generalized_step", x_t, eps, t, t_prev, alphas_cumprod, noise)
    check_eta(eta, "generalized_step")
    return _generalized_step(x_t, eps, t, t_prev, alphas_cumprod, jnp.asarray(eta, jnp.float32), noise)


def ddim_step(x_t: Array, eps: Array, t: Array, t_prev: Array, alphas_cumprod: Array) -> Array:
    """The deterministic DDIM step: paper Eq. 12 with sigma = 0 (Eq. 13's update).

    ``x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps``. Shapes as :func:`generalized_step`.
    """
    check_reverse_step_args("ddim_step", x_t, eps, t, t_prev, alphas_cumprod)
    zeros = jnp.zeros(np.shape(x_t), jnp.result_type(x_t))
    return _generalized_step(x_t, eps, t, t_prev, alphas_cumprod, jnp.zeros((), jnp.float32), zeros)


def sigma_hat_step(x_t: Array, eps: Array, t: Array, t_prev: Array, alphas_cumprod: Array, noise: Array) -> Array:
    """The paper's Table 1 "sigma-hat" row: the larger variance ``sigma_hat^2 = 1 - a_t / a_prev``.

    Put into Eq. 12 this variance can make the square root negative, so (like the authors) the
    step is DDPM's posterior mean of q(x_prev | x_t, x0_hat) with ``beta = 1 - a_t / a_prev``,
    plus ``sigma_hat * noise``; the last step (``t_prev = -1``) adds no noise and returns x0_hat.
    Shapes as :func:`generalized_step`.
    """
    check_reverse_step_args("sigma_hat_step", x_t, eps, t, t_prev, alphas_cumprod, noise)
    x0_hat = _predict_x0(x_t, eps, t, alphas_cumprod)
    return _sigma_hat_step(x_t, x0_hat, t, t_prev, alphas_cumprod, noise)


def eps_from_prediction(
    model_output: Array, x_t: Array, t: Array, alphas_cumprod: Array, prediction_type: str
) -> Array:
    """The noise eps implied by a model output of type ``"eps"``, ``"x0"`` or ``"v"``. ``[B, ...]``."""
    check_prediction_type(prediction_type, "eps_from_prediction")
    eps, _ = eps_and_x0_from_output(model_output, x_t, t, alphas_cumprod, prediction_type)
    return eps
