"""The S-step sampler (DDIM and higher-order solvers), the deterministic encoder (inversion) and slerp.

``sample`` and ``encode`` run the whole loop as one ``jax.lax.scan`` inside one ``jax.jit``:
no Python loop over steps, no host sync, and a compile time that does not grow with S. The
timesteps, ``alphas_cumprod``, ``eta``, the key and ``eps_fn_args`` are traced, so new values
(new params, a new x_T, a new key, another sequence of the same length) reuse the compiled
program; ``eps_fn``, the solver and the option flags are static. Every solver, DDIM included,
is a class of :mod:`ddim_jax.solvers` run by the one scan here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax import solvers
from ddim_jax.diffusion import alpha_at, eps_and_x0_from_output
from ddim_jax.solvers.base import is_key_batch, iteration_keys
from ddim_jax.validation import (
    check_alphas_cumprod,
    check_batch,
    check_eps_fn,
    check_eta,
    check_floating,
    check_prediction_type,
    check_sequence,
    concrete,
)

Array = Any
EpsFn = Callable[..., Array]
# What the network returns besides its prediction: nothing ("fixed"), or guided-diffusion's
# learned variance (``learn_sigma``): ``[prediction | v]`` on the channel axis, v in [-1, 1].
OUTPUT_TYPES = ("fixed", "learned_range")


def _state_dtype(dtype):
    """The dtype the sampler state is carried in: at least float32 (float64 stays float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def _call_model(eps_fn, x, t, eps_fn_args, fn: str, input_dtype, output_type: str = "fixed"):
    """One network call: the float32 state cast to the input's dtype, the output back to the
    state's dtype; ``(prediction, v)`` with ``v`` None unless ``output_type="learned_range"``."""
    t_batch = jnp.full((x.shape[0],), t, dtype=jnp.int32)
    output = eps_fn(x.astype(input_dtype), t_batch, *eps_fn_args)
    learned = output_type == "learned_range"
    expected = x.shape[:-1] + (2 * x.shape[-1],) if learned else x.shape
    if output.shape != expected:
        raise ValueError(f"{fn}: eps_fn returned shape {output.shape} for input shape {x.shape}; expected {expected}"
                         + (" (the prediction and the variance interpolation v)" if learned else ""))
    output = output.astype(x.dtype)
    if learned:
        return output[..., : x.shape[-1]], output[..., x.shape[-1]:]
    return output, None


def _model_for(solver, eps_fn, eps_fn_args, input_dtype, alphas_cumprod, cond_fn, cond_fn_args, *,
               prediction_type, clip_x0, rederive_eps, output_type):
    """``model(x, t)``: the one place a network output is interpreted. ``(eps, x0_hat)`` for the
    solvers (with classifier guidance as guided-diffusion's ``condition_score``: eps shifted by
    ``-sqrt(1 - a_t) cond_fn``, x0_hat re-derived from it and not clipped again), or
    ``(eps, x0_hat, v, cond_grad)`` for a solver that ``uses_variance`` (it shifts its mean)."""

    def model(x, t):
        output, v = _call_model(eps_fn, x, t, eps_fn_args, "sample", input_dtype, output_type)
        eps, x0_hat = eps_and_x0_from_output(output, x, t, alphas_cumprod, prediction_type, clip_x0, rederive_eps)
        grad = None if cond_fn is None else cond_fn(x, jnp.full((x.shape[0],), t, jnp.int32), *cond_fn_args)
        if solver.uses_variance:
            return eps, x0_hat, v, None if grad is None else grad.astype(x.dtype)
        if grad is not None:
            a = alpha_at(alphas_cumprod, t)
            eps = eps - jnp.sqrt(1.0 - a) * grad.astype(x.dtype)
            x0_hat = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
        return eps, x0_hat

    return model


@functools.partial(
    jax.jit,
    static_argnames=("eps_fn", "cond_fn", "solver", "prediction_type", "clip_x0", "rederive_eps", "output_type",
                     "return_trajectory"),
)
def _sample_scan(
    eps_fn, x_T, seq, alphas_cumprod, eta, keys, eps_fn_args, cond_fn_args,
    *, cond_fn, solver, prediction_type, clip_x0, rederive_eps, output_type, return_trajectory,
):
    """``lax.scan(solver.step, solver.init(x_T), solver.plan(...))`` for every solver."""
    input_dtype = x_T.dtype
    alphas_cumprod = alphas_cumprod.astype(_state_dtype(alphas_cumprod.dtype))
    model = _model_for(solver, eps_fn, eps_fn_args, input_dtype, alphas_cumprod, cond_fn, cond_fn_args,
                       prediction_type=prediction_type, clip_x0=clip_x0, rederive_eps=rederive_eps,
                       output_type=output_type)

    def body(carry, inputs):
        carry, trajectory = solver.step(carry, inputs, model)
        return carry, (trajectory if return_trajectory else None)

    plan = solver.plan(seq, alphas_cumprod, eta)
    if keys is not None:
        plan = dict(plan, key=keys)
    carry, trajectory = jax.lax.scan(body, solver.init(x_T.astype(_state_dtype(input_dtype))), plan)
    if return_trajectory:
        rows = solver.trajectory_rows(seq.shape[0])
        trajectory = jax.tree_util.tree_map(lambda a: a[rows].astype(input_dtype), trajectory)
    return carry.x.astype(input_dtype), trajectory


def sample(
    eps_fn: EpsFn,
    x_T: Array,
    seq: Array,
    alphas_cumprod: Array,
    eta: float = 0.0,
    key: Array | None = None,
    *,
    eps_fn_args: tuple = (),
    clip_x0: bool = False,
    rederive_eps: bool = True,
    prediction_type: str = "eps",
    sigma_hat: bool = False,
    return_trajectory: bool = False,
    solver: str = "ddim",
    output_type: str = "fixed",
    cond_fn: Callable[..., Array] | None = None,
    cond_fn_args: tuple = (),
):
    """Runs the generative process over a timestep sub-sequence (paper section 4.2).

    With ``solver="ddim"`` (the default), paper Eq. 12: for ``i = 0..S-1`` with ``t = seq[i]``
    and ``t_prev = seq[i+1]`` (``-1`` after the last): ``x0_hat`` from Eq. 9, then
    ``x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z`` with
    ``sigma = sigma(eta)`` of Eq. 16. The final step returns x0_hat.

    The other solvers (``ddim_jax.solvers.REGISTRY``: one class each, with paper references)
    integrate the same probability-flow ODE with the same network: multistep DPM-Solver++
    (``"dpmpp_2m"``, ``"dpmpp_3m"``; S calls), PNDM's PLMS (``"plms"``; S + 1 calls), UniPC
    (``"unipc"`` bh2 order 2, ``"unipc_3"``, ``"unipc_bh1"``, ``"unipc_bh1_3"``; S calls), EDM's
    Heun (``"heun"``; 2S - 1 calls), or its SDE (``"dpmpp_2m_sde"``: stochastic, needs a key).
    The multistep solvers run at lower order while their history fills and on their last steps
    (``ddim_jax.solvers.base.multistep_orders``). Only DDIM takes ``eta`` and ``sigma_hat``. The
    state (x_t, x0 predictions, the multistep history) is carried in float32 (float64 inputs stay
    float64) whatever dtype the network computes in: only the network's input is cast to
    ``x_T.dtype``, and the result is returned in ``x_T.dtype``.

    Args:
      eps_fn: the model, ``eps_fn(x [B, ...], t int32 [B], *eps_fn_args) -> [B, ...]``.
      x_T: the starting latent ``[B, ...]`` (standard normal for sampling, or a code from
        :func:`encode`).
      seq: int ``[S]``, strictly descending timesteps in ``[0, T-1]`` (see
        ``timestep_sequence``).
      alphas_cumprod: ``[T]``.
      eta: in ``[0, 1]``; 0 = DDIM (deterministic), 1 = DDPM ancestral sampling. Only
        ``solver="ddim"`` accepts eta > 0.
      key: PRNG key; required when ``eta > 0``, ``sigma_hat`` or a stochastic solver. Step ``i``
        draws its noise as ``jax.random.normal(jax.random.split(key, S)[i], x_T.shape, float32)``
        (the state dtype). Or one key per example (``[B]`` typed keys or raw ``uint32 [B, 2]``):
        example ``b`` then draws ``jax.random.normal(jax.random.split(key[b], S)[i],
        x_T.shape[1:])`` at step ``i``, so its noise does not depend on the batch it is sampled in.
      eps_fn_args: extra traced arguments for ``eps_fn`` (e.g. ``(params,)``), so that new
        params do not trigger a recompilation.
      clip_x0: clip x0_hat to [-1, 1] each step. The data-prediction solvers (all but PLMS)
        clip the x0 predictions they step with (and keep in their history); PLMS steps with eps,
        so it uses the eps re-derived from the clipped x0_hat (and needs ``rederive_eps=True``);
        its last step's x0 is not clipped.
      rederive_eps: with ``clip_x0``, re-derive eps from the clipped x0_hat (default; keeps the
        step on the line through x_t and x0_hat) or keep the model's eps (``False``: what
        diffusers' DDIMScheduler does by default). Only DDIM and PLMS use eps.
      prediction_type: what ``eps_fn`` predicts: ``"eps"``, ``"x0"`` or ``"v"``.
      sigma_hat: use the paper's Table 1 sigma-hat row (DDPM posterior mean plus
        ``sqrt(1 - a_t / a_prev)`` noise) instead of Eq. 12; needs ``eta = 0``, a key and
        ``solver="ddim"``.
      return_trajectory: also return ``{"x_t": [S, B, ...], "x0_hat": [S, B, ...]}``: the
        network's input at every step and its x0 prediction (off by default: memory then does
        not grow with S). For UniPC ``x_t`` is the predictor's point (before correction); for
        PLMS the start's extra evaluation and for Heun the corrections are left out.
      solver: a name of ``ddim_jax.solvers.REGISTRY`` (``SOLVERS``). ``"ddpm"`` is ancestral
        sampling with the model's learned variance (guided-diffusion's ``p_sample``; needs
        ``output_type="learned_range"`` and a key; eta 0).
      output_type: ``"fixed"`` (the network returns its prediction, ``[B, ..., C]``) or
        ``"learned_range"`` (``[B, ..., 2C]``: the prediction, then guided-diffusion's variance
        interpolation ``v`` in [-1, 1]). Every solver steps with the prediction alone; only
        ``"ddpm"`` reads v. DDIM with eta > 0 keeps Eq. 16's sigma, as guided-diffusion's
        ``ddim_sample`` does.
      cond_fn: classifier guidance, ``cond_fn(x [B, ...], t int32 [B], *cond_fn_args) -> [B, ...]``
        = ``scale * grad_x log p(y | x_t, t)`` (see ``ddim_jax.guidance.classifier_cond_fn``); static
        like ``eps_fn``. Solvers step with ``eps - sqrt(1 - a_t) cond_fn`` and the x0 re-derived
        from it (guided-diffusion's ``condition_score``); ``"ddpm"`` adds ``sigma_t^2 cond_fn`` to
        its mean (``condition_mean``).
      cond_fn_args: traced arguments of ``cond_fn`` (e.g. ``(classifier_params, labels, scale)``).
    Returns:
      ``x0 [B, ...]`` in ``x_T.dtype``, or ``(x0, trajectory)`` with ``return_trajectory=True``.
    """
    fn = "sample"
    num_timesteps = check_alphas_cumprod(alphas_cumprod, fn)
    check_batch(x_T, fn, "x_T")
    check_floating(x_T, fn, "x_T")
    check_sequence(seq, num_timesteps, fn)
    eps_fn_args = check_eps_fn(eps_fn, eps_fn_args, fn)
    check_prediction_type(prediction_type, fn)
    check_eta(eta, fn)
    concrete_eta = concrete(eta)
    # eta must be concrete to pick the noise rule; a traced eta counts as "eta > 0".
    eta_value = 1.0 if concrete_eta is None else float(concrete_eta)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"{fn}: output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    name = solver if isinstance(solver, str) else repr(solver)
    problem = solvers.solver_problem(name, eta=eta_value, sigma_hat=sigma_hat, clip_x0=clip_x0,
                                     rederive_eps=rederive_eps, learned_variance=output_type == "learned_range")
    if problem is not None:
        raise ValueError(f"{fn}: {problem}")
    chosen = solvers.REGISTRY[solver]
    if sigma_hat and eta_value != 0.0:
        raise ValueError(f"{fn}: sigma_hat=True replaces eta's variance; pass eta=0.0 with it")
    if chosen.accepts_eta:
        noise = "sigma_hat" if sigma_hat else ("none" if eta_value == 0.0 else "eta")
        chosen = dataclasses.replace(chosen, noise=noise)
    noisy = solvers.needs_key(solver, eta=eta_value, sigma_hat=sigma_hat)
    if noisy and key is None:
        raise ValueError(f"{fn}: a PRNG key is required when eta > 0, with sigma_hat=True or with solver {solver!r}")
    seq = jnp.asarray(seq, jnp.int32)
    keys = None
    if noisy:
        key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
        if is_key_batch(key) and key.shape[0] != np.shape(x_T)[0]:
            raise ValueError(f"{fn}: key holds {key.shape[0]} per-example keys for a batch of {np.shape(x_T)[0]}")
        keys = iteration_keys(key, chosen.calls(seq.shape[0]))
    x0, trajectory = _sample_scan(
        eps_fn, jnp.asarray(x_T), seq, jnp.asarray(alphas_cumprod), jnp.asarray(eta, jnp.float32), keys,
        eps_fn_args, tuple(cond_fn_args), cond_fn=cond_fn, solver=chosen, prediction_type=prediction_type,
        clip_x0=bool(clip_x0), rederive_eps=bool(rederive_eps), output_type=output_type,
        return_trajectory=bool(return_trajectory),
    )
    if return_trajectory:
        x_ts, x0_hats = trajectory
        return x0, {"x_t": x_ts, "x0_hat": x0_hats}
    return x0


@functools.partial(jax.jit, static_argnames=("eps_fn", "prediction_type", "eps_at", "output_type"))
def _encode_scan(eps_fn, x0, from_timesteps, to_timesteps, alphas_cumprod, eps_fn_args, *, prediction_type, eps_at,
                 output_type):
    input_dtype = x0.dtype
    alphas_cumprod = alphas_cumprod.astype(_state_dtype(alphas_cumprod.dtype))

    def step(x_from, inputs):
        t_from, t_to = inputs
        t_eval = t_to if eps_at == "next" else jnp.maximum(t_from, 0)
        output, _ = _call_model(eps_fn, x_from, t_eval, eps_fn_args, "encode", input_dtype, output_type)
        eps, _ = eps_and_x0_from_output(output, x_from, t_eval, alphas_cumprod, prediction_type)
        alpha_from, alpha_to = alpha_at(alphas_cumprod, t_from), alpha_at(alphas_cumprod, t_to)
        x0_hat = (x_from - jnp.sqrt(1.0 - alpha_from) * eps) / jnp.sqrt(alpha_from)
        x_to = jnp.sqrt(alpha_to) * x0_hat + jnp.sqrt(1.0 - alpha_to) * eps
        return x_to.astype(x_from.dtype), None

    x_T, _ = jax.lax.scan(step, x0.astype(_state_dtype(input_dtype)), (from_timesteps, to_timesteps))
    return x_T.astype(input_dtype)


def encode(
    eps_fn: EpsFn,
    x0: Array,
    seq: Array,
    alphas_cumprod: Array,
    *,
    eps_fn_args: tuple = (),
    prediction_type: str = "eps",
    eps_at: str = "next",
    output_type: str = "fixed",
) -> Array:
    """Deterministic encoding x0 -> x_T (paper section 5.4): the eta = 0 update run upward in t.

    Over ``-1 -> seq[S-1] -> ... -> seq[0]`` (``seq`` descending, as for :func:`sample`), each
    step computes ``x0_hat = (x - sqrt(1 - a_from) eps) / sqrt(a_from)`` and
    ``x_to = sqrt(a_to) x0_hat + sqrt(1 - a_to) eps``: it inverts the DDIM step
    ``t_to -> t_from`` of Eq. 12 (sigma = 0) with eps evaluated at the known point ``x_from``.
    ``sample(eps_fn, encode(eps_fn, x0, seq, ac), seq, ac)`` then reconstructs x0, with an
    error that falls as S grows (paper Table 2).

    The encoder stays the DDIM inversion whatever solver decodes: DDIM's step is a one-step map
    that can be run backwards with eps evaluated at the known point, which inverts it to first
    order in the step (paper section 5.4). A multistep solver's step depends on the predictions
    of earlier steps (which, run upward, are not yet known) and is not its own exact inverse,
    so running it backwards does not invert its decoding any better; decode codes from
    ``encode`` with ``solver="ddim"`` and the same ``seq`` for the best reconstruction. Like
    :func:`sample`, the state is carried in float32 and returned in ``x0.dtype``.

    Args:
      eps_fn, eps_fn_args, prediction_type, output_type: as for :func:`sample` (a learned variance
        is not used).
      x0: data ``[B, ...]``.
      seq: int ``[S]``, strictly descending, the same sequence the code will be decoded with.
      alphas_cumprod: ``[T]``.
      eps_at: the timestep eps is evaluated at in each step: ``"next"`` (``t_to``: the timestep
        whose decoding step is being inverted; the default) or ``"current"`` (``t_from``, the
        explicit Euler step of the probability-flow ODE; 0 on the first step from x0).
    Returns: ``x_T [B, ...]``.
    """
    fn = "encode"
    num_timesteps = check_alphas_cumprod(alphas_cumprod, fn)
    check_batch(x0, fn, "x0")
    check_floating(x0, fn, "x0")
    check_sequence(seq, num_timesteps, fn)
    eps_fn_args = check_eps_fn(eps_fn, eps_fn_args, fn)
    check_prediction_type(prediction_type, fn)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"{fn}: output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if eps_at not in ("next", "current"):
        raise ValueError(f"{fn}: eps_at must be 'next' or 'current', got {eps_at!r}")
    ascending = jnp.asarray(seq, jnp.int32)[::-1]
    from_timesteps = jnp.concatenate([jnp.full((1,), -1, jnp.int32), ascending[:-1]])
    return _encode_scan(
        eps_fn, jnp.asarray(x0), from_timesteps, ascending, jnp.asarray(alphas_cumprod), eps_fn_args,
        prediction_type=prediction_type, eps_at=eps_at, output_type=output_type,
    )


@jax.jit
def _slerp(z0, z1, alpha):
    flat0, flat1 = z0.reshape(-1), z1.reshape(-1)
    cos_theta = jnp.dot(flat0, flat1) / (jnp.linalg.norm(flat0) * jnp.linalg.norm(flat1))
    theta = jnp.arccos(jnp.clip(cos_theta, -1.0, 1.0))
    sin_theta = jnp.sin(theta)
    nearly_parallel = sin_theta < 1e-6
    safe_sin = jnp.where(nearly_parallel, 1.0, sin_theta)
    alpha = alpha.reshape(alpha.shape + (1,) * z0.ndim)
    weight0 = jnp.where(nearly_parallel, 1.0 - alpha, jnp.sin((1.0 - alpha) * theta) / safe_sin)
    weight1 = jnp.where(nearly_parallel, alpha, jnp.sin(alpha * theta) / safe_sin)
    return weight0 * z0 + weight1 * z1


def slerp(z0: Array, z1: Array, alpha: float | Array) -> Array:
    """Spherical linear interpolation between two codes (paper section 5.3, Figure 6).

    ``slerp = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1`` with
    ``theta`` the angle between ``z0`` and ``z1`` taken as flat vectors (falls back to linear
    interpolation when they are parallel). For per-example angles over a batch of codes, use
    ``jax.vmap(slerp, (0, 0, None))``.

    Args:
      z0, z1: codes of the same shape (e.g. ``x_T [H, W, C]``).
      alpha: scalar in [0, 1], or ``[K]`` to get ``K`` interpolants at once.
    Returns: ``z0.shape`` for a scalar alpha, ``[K, *z0.shape]`` for ``[K]``.
    """
    if np.shape(z0) != np.shape(z1):
        raise ValueError(f"slerp: z0 and z1 must have the same shape, got {np.shape(z0)} and {np.shape(z1)}")
    if np.ndim(alpha) > 1:
        raise ValueError(f"slerp: alpha must be a scalar or 1-D, got shape {np.shape(alpha)}")
    check_floating(z0, "slerp", "z0")
    check_floating(z1, "slerp", "z1")
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    return _slerp(z0, z1, jnp.asarray(alpha, z0.dtype))
