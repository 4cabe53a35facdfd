"""The S-step sampler (DDIM and higher-order solvers), the deterministic encoder (inversion) and slerp.

``sample`` and ``encode`` run the whole loop as one ``jax.lax.scan`` inside one ``jax.jit``:
no Python loop over steps, no host sync, and a compile time that does not grow with S. The
timesteps, ``alphas_cumprod``, ``eta``, the key and ``eps_fn_args`` are traced, so new values
(new params, a new x_T, a new key, another sequence of the same length) reuse the compiled
program; ``eps_fn``, the solver and the option flags are static. The update rules of the
solvers other than DDIM are in :mod:`ddim_jax.solvers`; this module holds the scans.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax import solvers
from ddim_jax.diffusion import (
    alpha_at,
    eps_and_x0_from_output,
    posterior_step_kernel,
    sigma_kernel,
    x_prev_from_x0_eps,
)
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


def _state_dtype(dtype):
    """The dtype the sampler state is carried in: at least float32 (float64 stays float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def _call_model(eps_fn, x, t, eps_fn_args, fn: str, input_dtype):
    """One network call: the float32 state cast to the input's dtype, the output back to the
    state's dtype."""
    t_batch = jnp.full((x.shape[0],), t, dtype=jnp.int32)
    output = eps_fn(x.astype(input_dtype), t_batch, *eps_fn_args)
    if output.shape != x.shape:
        raise ValueError(f"{fn}: eps_fn returned shape {output.shape} for input shape {x.shape}; they must match")
    return output.astype(x.dtype)


def _is_key_batch(key) -> bool:
    """Whether ``key`` is one PRNG key per example (``[B]`` typed keys, or raw ``uint32 [B, 2]``)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


def _normal(key, shape, dtype):
    """Standard normal noise of ``shape = [B, ...]`` from one key, or row b from ``key[b]``."""
    if _is_key_batch(key):
        return jax.vmap(lambda example_key: jax.random.normal(example_key, shape[1:], dtype))(key)
    return jax.random.normal(key, shape, dtype)


def _step_keys(key, num_steps: int):
    """The key of each step, ``[S, ...]``: ``split(key, S)``, or per example ``split(key[b], S)``."""
    if _is_key_batch(key):
        return jnp.swapaxes(jax.vmap(lambda example_key: jax.random.split(example_key, num_steps))(key), 0, 1)
    return jax.random.split(key, num_steps)


def _ddim_scan(model, x_T, seq, alphas_cumprod, eta, step_keys, *, noise_kind, return_trajectory):
    prev_timesteps = jnp.concatenate([seq[1:], jnp.full((1,), -1, jnp.int32)])

    def step(x_t, inputs):
        t, t_prev, key = inputs
        eps, x0_hat = model(x_t, t)
        if noise_kind == "none":
            x_prev = x_prev_from_x0_eps(x0_hat, eps, alpha_at(alphas_cumprod, t_prev), 0.0, 0.0)
        else:
            noise = _normal(key, x_t.shape, x_t.dtype)
            if noise_kind == "eta":
                sigma = sigma_kernel(t, t_prev, alphas_cumprod, eta)
                x_prev = x_prev_from_x0_eps(x0_hat, eps, alpha_at(alphas_cumprod, t_prev), sigma, noise)
            else:  # sigma_hat
                x_prev = posterior_step_kernel(x_t, x0_hat, t, t_prev, alphas_cumprod, noise)
        return x_prev.astype(x_t.dtype), ((x_t, x0_hat) if return_trajectory else None)

    return jax.lax.scan(step, x_T, (seq, prev_timesteps, step_keys))


def _dpmpp_scan(model, x_T, seq, alphas_cumprod, orders, *, return_trajectory):
    """DPM-Solver++ (2M / 3M): carry = (x, m_-1, m_-2, lambda_-1, lambda_-2)."""
    prev_timesteps = jnp.concatenate([seq[1:], jnp.full((1,), -1, jnp.int32)])
    _, _, lam_first = solvers.alpha_sigma_lambda(alphas_cumprod, seq[0])
    zeros = jnp.zeros_like(x_T)

    def step(carry, inputs):
        x, m1, m2, lam1, lam2 = carry
        t, t_prev, order = inputs
        _, x0_hat = model(x, t)
        _, sigma_s0, lam_s0 = solvers.alpha_sigma_lambda(alphas_cumprod, t)
        alpha_t, sigma_t, lam_t = solvers.alpha_sigma_lambda(alphas_cumprod, t_prev)
        cx, k0, k1, k2 = solvers.dpmpp_multistep_coefficients(
            alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam1, lam2, order)
        x_next = cx * x + k0 * x0_hat + k1 * m1 + k2 * m2
        return (x_next, x0_hat, m1, lam_s0, lam1), ((x, x0_hat) if return_trajectory else None)

    init = (x_T, zeros, zeros, lam_first, lam_first)
    carry, trajectory = jax.lax.scan(step, init, (seq, prev_timesteps, orders))
    return carry[0], trajectory


def _unipc_scan(model, x_T, seq, alphas_cumprod, orders, *, return_trajectory):
    """UniPC-bh2 (order 2): carry = (x, x_base_-1, m_-1, m_-2, lambda_-1, lambda_-2, order_-1)."""
    prev_timesteps = jnp.concatenate([seq[1:], jnp.full((1,), -1, jnp.int32)])
    _, _, lam_first = solvers.alpha_sigma_lambda(alphas_cumprod, seq[0])
    zeros = jnp.zeros_like(x_T)

    def step(carry, inputs):
        x, x_last, m1, m2, lam1, lam2, order_prev = carry
        t, t_prev, order, index = inputs
        _, x0_hat = model(x, t)
        alpha_s0, sigma_s0, lam_s0 = solvers.alpha_sigma_lambda(alphas_cumprod, t)
        # UniC: correct the point the previous predictor produced, with the evaluation just made.
        _, sigma_prev, _ = solvers.alpha_sigma_lambda(alphas_cumprod, seq[jnp.maximum(index - 1, 0)])
        cx, k_new, k0, k1 = solvers.unipc_corrector_coefficients(
            alpha_s0, sigma_s0, sigma_prev, lam_s0, lam1, lam2, order_prev)
        corrected = cx * x_last + k_new * x0_hat + k0 * m1 + k1 * m2
        x_c = jnp.where(index > 0, corrected, x)
        # UniP: predict the next point from the corrected one.
        alpha_t, sigma_t, lam_t = solvers.alpha_sigma_lambda(alphas_cumprod, t_prev)
        px, p0, p1 = solvers.unipc_predictor_coefficients(alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam1, order)
        x_next = px * x_c + p0 * x0_hat + p1 * m1
        return (x_next, x_c, x0_hat, m1, lam_s0, lam1, order), ((x, x0_hat) if return_trajectory else None)

    init = (x_T, x_T, zeros, zeros, lam_first, lam_first, jnp.int32(1))
    indices = jnp.arange(seq.shape[0], dtype=jnp.int32)
    carry, trajectory = jax.lax.scan(step, init, (seq, prev_timesteps, orders, indices))
    return carry[0], trajectory


def _plms_scan(model, x_T, seq, alphas_cumprod, *, return_trajectory):
    """PLMS: S + 1 iterations (see ``solvers.plms_schedule``); carry = (x, x_T, eps_-1, eps_-2, eps_-3)."""
    t_eval, t_from, t_to, weights, push, from_x_T = solvers.plms_schedule(seq)
    zeros = jnp.zeros_like(x_T)

    def step(carry, inputs):
        x, x_start, e1, e2, e3 = carry
        t, t_f, t_t, w, do_push, use_start = inputs
        eps, x0_hat = model(x, t)
        eps_prime = w[0] * eps + w[1] * e1 + w[2] * e2 + w[3] * e3
        base = jnp.where(use_start, x_start, x)
        cx, ceps = solvers.pndm_transfer_coefficients(alpha_at(alphas_cumprod, t_f), alpha_at(alphas_cumprod, t_t))
        x_next = cx * base + ceps * eps_prime
        e1, e2, e3 = (jnp.where(do_push, new, old) for new, old in ((eps, e1), (e1, e2), (e2, e3)))
        return (x_next, x_start, e1, e2, e3), ((x, x0_hat) if return_trajectory else None)

    init = (x_T, x_T, zeros, zeros, zeros)
    inputs = (t_eval, t_from, t_to, weights, jnp.asarray(push), jnp.asarray(from_x_T))
    carry, trajectory = jax.lax.scan(step, init, inputs)
    if return_trajectory and seq.shape[0] > 1:  # drop the start's extra evaluation (iteration 1)
        trajectory = jax.tree_util.tree_map(lambda a: jnp.concatenate([a[:1], a[2:]]), trajectory)
    return carry[0], trajectory


@functools.partial(
    jax.jit,
    static_argnames=("eps_fn", "solver", "prediction_type", "clip_x0", "rederive_eps", "noise_kind",
                     "return_trajectory"),
)
def _sample_scan(
    eps_fn, x_T, seq, alphas_cumprod, eta, step_keys, eps_fn_args,
    *, solver, prediction_type, clip_x0, rederive_eps, noise_kind, return_trajectory,
):
    input_dtype = x_T.dtype
    state_dtype = _state_dtype(input_dtype)
    alphas_cumprod = alphas_cumprod.astype(_state_dtype(alphas_cumprod.dtype))

    def model(x, t):
        output = _call_model(eps_fn, x, t, eps_fn_args, "sample", input_dtype)
        return eps_and_x0_from_output(output, x, t, alphas_cumprod, prediction_type, clip_x0, rederive_eps)

    x = x_T.astype(state_dtype)
    if solver == "ddim":
        x0, trajectory = _ddim_scan(model, x, seq, alphas_cumprod, eta, step_keys,
                                    noise_kind=noise_kind, return_trajectory=return_trajectory)
    elif solver in ("dpmpp_2m", "dpmpp_3m"):
        orders = solvers.multistep_orders(solver, seq)
        x0, trajectory = _dpmpp_scan(model, x, seq, alphas_cumprod, orders, return_trajectory=return_trajectory)
    elif solver == "unipc":
        orders = solvers.multistep_orders(solver, seq)
        x0, trajectory = _unipc_scan(model, x, seq, alphas_cumprod, orders, return_trajectory=return_trajectory)
    else:  # plms
        x0, trajectory = _plms_scan(model, x, seq, alphas_cumprod, return_trajectory=return_trajectory)
    if return_trajectory:
        trajectory = jax.tree_util.tree_map(lambda a: a.astype(input_dtype), trajectory)
    return x0.astype(input_dtype), trajectory


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
):
    """Runs the generative process over a timestep sub-sequence (paper section 4.2).

    With ``solver="ddim"`` (the default), paper Eq. 12: for ``i = 0..S-1`` with ``t = seq[i]``
    and ``t_prev = seq[i+1]`` (``-1`` after the last): ``x0_hat`` from Eq. 9, then
    ``x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z`` with
    ``sigma = sigma(eta)`` of Eq. 16. The final step returns x0_hat.

    The other solvers integrate the same probability-flow ODE (DDIM with eta = 0 is its
    first-order solver) at higher order with the same network and the same S network evaluations
    (their update rules, with paper references, are in :mod:`ddim_jax.solvers`):

    - ``"dpmpp_2m"``, ``"dpmpp_3m"``: multistep DPM-Solver++ (Lu et al. 2022, data prediction)
      of order 2 / 3, lower order while the history fills (steps 0 and, for 3M, 1). S NFE.
    - ``"plms"``: PNDM's pseudo linear multistep (Liu et al. 2022): Adams-Bashforth weights of
      up to 4 eps values on the DDIM transfer, started as diffusers'
      ``PNDMScheduler(skip_prk_steps=True)``: the first step is redone from x_T with the mean of
      eps at both of its ends, which costs one more network evaluation: **S + 1 NFE** (S = 1: 1).
    - ``"unipc"``: UniPC-bh2 of order 2 (Zhao et al. 2023): a UniP predictor (= DPM-Solver++(2M))
      and a UniC corrector that re-uses the next step's evaluation, so S NFE.

    The last step (to ``t_prev = -1``, alpha = 1) is first order for the data-prediction solvers
    (it returns the last x0 prediction, as diffusers' ``final_sigmas_type="zero"``); PLMS keeps
    its multistep eps there, as PNDM and diffusers do. All of them are deterministic; the state
    (x_t, x0 predictions, the multistep history) is carried in float32 (float64 inputs stay
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
      key: PRNG key; required when ``eta > 0`` or ``sigma_hat``. Step ``i`` draws its noise as
        ``jax.random.normal(jax.random.split(key, S)[i], x_T.shape, float32)`` (the state dtype).
        Or one key per example (``[B]`` typed keys or raw ``uint32 [B, 2]``): example ``b`` then
        draws ``jax.random.normal(jax.random.split(key[b], S)[i], x_T.shape[1:])`` at step ``i``,
        so its noise does not depend on the batch it is sampled in.
      eps_fn_args: extra traced arguments for ``eps_fn`` (e.g. ``(params,)``), so that new
        params do not trigger a recompilation.
      clip_x0: clip x0_hat to [-1, 1] each step. The data-prediction solvers (DDIM,
        ``dpmpp_*``, ``unipc``) clip the x0 predictions they step with (and keep in their
        history); PLMS steps with eps, so it uses the eps re-derived from the clipped x0_hat
        (and needs ``rederive_eps=True``); its last step's x0 is not clipped.
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
        PLMS the start's extra evaluation is left out.
      solver: ``"ddim"``, ``"dpmpp_2m"``, ``"dpmpp_3m"``, ``"plms"`` or ``"unipc"``.
    Returns:
      ``x0 [B, ...]`` in ``x_T.dtype``, or ``(x0, trajectory)`` with ``return_trajectory=True``.
    """
    fn = "sample"
    if solver not in solvers.SOLVERS:
        raise ValueError(f"{fn}: unknown solver {solver!r}; expected one of {solvers.SOLVERS}")
    num_timesteps = check_alphas_cumprod(alphas_cumprod, fn)
    check_batch(x_T, fn, "x_T")
    check_floating(x_T, fn, "x_T")
    check_sequence(seq, num_timesteps, fn)
    eps_fn_args = check_eps_fn(eps_fn, eps_fn_args, fn)
    check_prediction_type(prediction_type, fn)
    check_eta(eta, fn)
    concrete_eta = concrete(eta)
    if solver != "ddim":
        if sigma_hat:
            raise ValueError(f"{fn}: sigma_hat=True needs solver='ddim' (solver {solver!r} is deterministic)")
        if concrete_eta is None or float(concrete_eta) != 0.0:
            raise ValueError(f"{fn}: eta > 0 needs solver='ddim'; solver {solver!r} is deterministic (pass eta=0.0)")
        if solver == "plms" and clip_x0 and not rederive_eps:
            raise ValueError(
                f"{fn}: clip_x0=True with rederive_eps=False has no effect on solver='plms' (it steps with eps); "
                "pass rederive_eps=True"
            )
    if sigma_hat:
        if concrete_eta is None or float(concrete_eta) != 0.0:
            raise ValueError(f"{fn}: sigma_hat=True replaces eta's variance; pass eta=0.0 with it")
        noise_kind = "sigma_hat"
    elif concrete_eta is not None and float(concrete_eta) == 0.0:
        noise_kind = "none"
    else:
        noise_kind = "eta"
    if noise_kind != "none" and key is None:
        raise ValueError(f"{fn}: a PRNG key is required when eta > 0 or sigma_hat=True")

    if noise_kind != "none":
        key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
        if _is_key_batch(key) and key.shape[0] != np.shape(x_T)[0]:
            raise ValueError(f"{fn}: key holds {key.shape[0]} per-example keys for a batch of {np.shape(x_T)[0]}")
    seq = jnp.asarray(seq, jnp.int32)
    step_keys = None if noise_kind == "none" else _step_keys(key, seq.shape[0])
    x0, trajectory = _sample_scan(
        eps_fn, jnp.asarray(x_T), seq, jnp.asarray(alphas_cumprod), jnp.asarray(eta, jnp.float32), step_keys,
        eps_fn_args, solver=solver, prediction_type=prediction_type, clip_x0=bool(clip_x0),
        rederive_eps=bool(rederive_eps), noise_kind=noise_kind, return_trajectory=bool(return_trajectory),
    )
    if return_trajectory:
        x_ts, x0_hats = trajectory
        return x0, {"x_t": x_ts, "x0_hat": x0_hats}
    return x0


@functools.partial(jax.jit, static_argnames=("eps_fn", "prediction_type", "eps_at"))
def _encode_scan(eps_fn, x0, from_timesteps, to_timesteps, alphas_cumprod, eps_fn_args, *, prediction_type, eps_at):
    input_dtype = x0.dtype
    alphas_cumprod = alphas_cumprod.astype(_state_dtype(alphas_cumprod.dtype))

    def step(x_from, inputs):
        t_from, t_to = inputs
        t_eval = t_to if eps_at == "next" else jnp.maximum(t_from, 0)
        output = _call_model(eps_fn, x_from, t_eval, eps_fn_args, "encode", input_dtype)
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
      eps_fn, eps_fn_args, prediction_type: as for :func:`sample`.
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
    if eps_at not in ("next", "current"):
        raise ValueError(f"{fn}: eps_at must be 'next' or 'current', got {eps_at!r}")
    ascending = jnp.asarray(seq, jnp.int32)[::-1]
    from_timesteps = jnp.concatenate([jnp.full((1,), -1, jnp.int32), ascending[:-1]])
    return _encode_scan(
        eps_fn, jnp.asarray(x0), from_timesteps, ascending, jnp.asarray(alphas_cumprod), eps_fn_args,
        prediction_type=prediction_type, eps_at=eps_at,
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
