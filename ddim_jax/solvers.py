"""Update rules of the higher-order ODE solvers that ``sample(..., solver=...)`` runs.

Every rule here is a pure per-step function of scalars (jittable, float32 inside the sampler)
returning the coefficients of a linear combination: the new state is
``cx * x + sum_j k_j * m_j`` where ``x`` is the current state and ``m_j`` are the current and
earlier network predictions (x0 predictions for the data-prediction solvers, eps for PLMS).
The sampler's scan (``ddim_jax.sampling``) keeps x, the history and the previous lambdas in its
carry, calls the network once per step and applies the coefficients.

Notation (Lu et al. 2022; timesteps as in docs/conventions.md): ``a_t = alphas_cumprod[t]``,
``alpha_t = sqrt(a_t)``, ``sigma_t = sqrt(1 - a_t)``, ``lambda_t = log(alpha_t / sigma_t)``
(half the log-SNR), ``h = lambda_t - lambda_s`` for a step from s to t (> 0: the sampler goes
up in lambda). The step after the last has ``t_prev = -1``: ``alpha = 1``, ``sigma = 0``,
``lambda = +inf``; every solver takes it with its first-order rule, which returns the current x0
prediction (as diffusers does with ``final_sigmas_type="zero"``), except PLMS, whose rule has
no ``h`` and keeps its linear multistep combination there, as PNDM and diffusers do.

References:
  DPM-Solver++: Lu, Zhou, Bao, Chen, Li, Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models", arXiv 2211.01095 (2022), Algorithm 2 (2M) and appendix.
  PNDM / PLMS: Liu, Ren, Lin, Zhao, "Pseudo Numerical Methods for Diffusion Models on
    Manifolds", ICLR 2022 (arXiv 2202.09778), Eq. 9 (transfer) and Eq. 12 (linear multistep).
  UniPC: Zhao, Bai, Rao, Zhou, Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast
    Sampling of Diffusion Models", NeurIPS 2023 (arXiv 2302.04867), Algorithms 2-3 (B(h) = e^h - 1,
    "bh2").
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from ddim_jax.diffusion import alpha_at

Array = Any

SOLVERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "plms", "unipc")
# The highest order each multistep solver runs at (lower on the first steps and the last).
SOLVER_ORDERS = {"ddim": 1, "dpmpp_2m": 2, "dpmpp_3m": 3, "plms": 4, "unipc": 2}


def alpha_sigma_lambda(alphas_cumprod: Array, t: Array):
    """``(alpha_t, sigma_t, lambda_t)`` for an int timestep ``t``; ``t = -1`` gives ``(1, 0, +inf)``."""
    a = alpha_at(alphas_cumprod, t)
    return jnp.sqrt(a), jnp.sqrt(1.0 - a), 0.5 * (jnp.log(a) - jnp.log1p(-a))


# |z| below which phi_k is summed as its Taylor series: the closed forms cancel (phi_3 loses
# about 6 eps / z^2 of relative precision: 4e-5 in float32 at |z| = 0.1), the series (to z^8)
# is exact to float32 for |z| <= 1 (its first dropped term is below 3e-8).
_SERIES_BELOW = 1.0
_SERIES_TERMS = 9


def _phi_series(z, k: int):
    """``phi_k(z) = sum_n z^n / (n + k)!`` (Horner, ``_SERIES_TERMS`` terms)."""
    total = jnp.zeros_like(z) + 1.0 / math.factorial(k + _SERIES_TERMS - 1)
    for n in range(_SERIES_TERMS - 2, -1, -1):
        total = total * z + 1.0 / math.factorial(n + k)
    return total


def _phi2(z):
    """``(e^z - 1 - z) / z^2`` (= 1/2 at 0), with its Taylor series for |z| < 1 (float32-safe)."""
    small = jnp.abs(z) < _SERIES_BELOW
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, _phi_series(z, 2), (jnp.expm1(zs) - zs) / zs**2)


def _phi3(z):
    """``(e^z - 1 - z - z^2/2) / z^3`` (= 1/6 at 0), with its Taylor series for |z| < 1."""
    small = jnp.abs(z) < _SERIES_BELOW
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, _phi_series(z, 3), (jnp.expm1(zs) - zs - zs**2 / 2) / zs**3)


def _safe_step(lam_t, lam_s0):
    """``h = lambda_t - lambda_s0`` and a finite, non-zero stand-in for the final step (h = +inf)
    and for a step whose history is not filled yet (h = 0), so unused branches stay finite."""
    h = lam_t - lam_s0
    return h, jnp.where(jnp.isfinite(h) & (h != 0), h, 1.0)


def dpmpp_multistep_coefficients(alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam_s1, lam_s2, order):
    """Multistep DPM-Solver++ (data prediction) from s0 to t: ``(cx, k0, k1, k2)`` with
    ``x_t = cx x_s0 + k0 m0 + k1 m1 + k2 m2``, ``m_j`` the x0 predictions at s0, s1, s2.

    - order 1 (DDIM; DPM-Solver++ Eq. 5 with k = 1): ``x_t = sigma_t/sigma_s0 x - alpha_t (e^-h - 1) m0``.
    - order 2 (2M, Algorithm 2): ``D1 = (m0 - m1) / r0``, ``r0 = h0 / h``,
      ``x_t = sigma_t/sigma_s0 x - alpha_t (e^-h - 1) (m0 + D1 / 2)``.
    - order 3 (3M, appendix; diffusers' ``multistep_dpm_solver_third_order_update``):
      ``D1_0 = (m0 - m1)/r0``, ``D1_1 = (m1 - m2)/r1``, ``D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1)``,
      ``D2 = (D1_0 - D1_1)/(r0+r1)``, ``x_t = sigma_t/sigma_s0 x - alpha_t (e^-h - 1) m0
      + alpha_t ((e^-h - 1)/h + 1) D1 - alpha_t ((e^-h - 1 + h)/h^2 - 1/2) D2``.

    ``h0 = lambda_s0 - lambda_s1``, ``h1 = lambda_s1 - lambda_s2``. On the final step
    (``sigma_t = 0``, ``lambda_t = inf``) the order is forced to 1 and the result is m0. ``order``
    may be traced; unused history (``order`` below 3) may hold anything finite.
    """
    h, h_safe = _safe_step(lam_t, lam_s0)
    order = jnp.where(jnp.isfinite(h), order, 1)
    z = -h_safe
    cx = sigma_t / sigma_s0
    c0 = -alpha_t * jnp.expm1(-h)  # alpha_t at the final step (expm1(-inf) = -1)
    r0 = jnp.where(order >= 2, (lam_s0 - lam_s1) / h_safe, 1.0)
    r1 = jnp.where(order >= 3, (lam_s1 - lam_s2) / h_safe, 1.0)
    # u multiplies D1_0 and v multiplies D1_1 once D1 and D2 are expanded.
    c_d1_midpoint = -0.5 * alpha_t * jnp.expm1(z)
    c_d1 = -alpha_t * z * _phi2(z)  # + alpha_t ((e^-h - 1)/h + 1)
    c_d2 = -alpha_t * z * _phi3(z)  # - alpha_t ((e^-h - 1 + h)/h^2 - 1/2)
    q, p = r0 / (r0 + r1), 1.0 / (r0 + r1)
    u = jnp.where(order == 2, c_d1_midpoint, jnp.where(order >= 3, c_d1 * (1 + q) + c_d2 * p, 0.0))
    v = jnp.where(order >= 3, -c_d1 * q - c_d2 * p, 0.0)
    return cx, c0 + u / r0, -u / r0 + v / r1, -v / r1


def unipc_corrector_coefficients(alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam_s1, order):
    """UniC with B(h) = e^h - 1 ("bh2", UniPC Algorithm 2 in data prediction) from s0 to t:
    ``(cx, k_new, k0, k1)`` with ``x_t^c = cx x_s0 + k_new m_t + k0 m0 + k1 m1``, where ``x_s0``
    is the (corrected) state the previous step left from, ``m_t`` the x0 prediction at the new
    point (from the predictor's x_t, so no extra network call), ``m0``, ``m1`` those at s0, s1.

    ``x_t^c = sigma_t/sigma_s0 x_s0 - alpha_t (e^-h - 1) m0 - alpha_t B(h) (sum_k rho_k D1_k
    + rho_last (m_t - m0))`` with ``D1_1 = (m1 - m0) / r1``, ``r1 = (lambda_s1 - lambda_s0) / h``;
    ``order`` is the order of the predictor that produced x_t: 1 gives ``rho_last = 1/2``; 2 solves
    ``[[1, 1], [r1, 1]] rho = b`` with ``b_1 = h phi_2 / B(h)``, ``b_2 = 2 h phi_3 / B(h)`` (written
    for ``-h``; diffusers' ``multistep_uni_c_bh_update``).
    """
    h, h_safe = _safe_step(lam_t, lam_s0)
    z = -h_safe
    b_h = jnp.expm1(z)
    cx = sigma_t / sigma_s0
    rk = jnp.where(order >= 2, (lam_s1 - lam_s0) / h_safe, -1.0)
    b1 = z * _phi2(z) / b_h
    b2 = 2.0 * z * _phi3(z) / b_h
    rho0 = jnp.where(order >= 2, (b1 - b2) / (1.0 - rk), 0.0)
    rho_last = jnp.where(order >= 2, b1 - rho0, 0.5)
    k_new = -alpha_t * b_h * rho_last
    k1 = -alpha_t * b_h * rho0 / rk
    k0 = -alpha_t * jnp.expm1(-h) + alpha_t * b_h * (rho0 / rk + rho_last)
    return cx, k_new, k0, k1


def unipc_predictor_coefficients(alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam_s1, order):
    """UniP-p with B(h) = e^h - 1 (UniPC Algorithm 3, data prediction), p = 1 or 2: ``(cx, k0, k1)``.

    For p = 2 ("a simplified version" in diffusers: rho = 1/2) the update
    ``x_t = sigma_t/sigma_s0 x - alpha_t (e^-h - 1) m0 - alpha_t B(h) / 2 * (m1 - m0) / r1``,
    ``r1 = (lambda_s1 - lambda_s0) / h = -r0``, is exactly DPM-Solver++(2M); p = 1 is DDIM.
    """
    cx, k0, k1, _ = dpmpp_multistep_coefficients(alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam_s1, lam_s1, order)
    return cx, k0, k1


def pndm_transfer_coefficients(a_from, a_to):
    """PNDM's transfer part (Liu et al. 2022, Eq. 9), ``(cx, ceps)``: ``x_to = cx x + ceps eps``.

    ``cx = sqrt(a_to / a_from)``, ``ceps = -(a_to - a_from) / (a_from sqrt(1 - a_to)
    + sqrt(a_from (1 - a_from) a_to))``: algebraically the deterministic DDIM step (Eq. 12 of
    the DDIM paper with sigma = 0), written as PNDM and diffusers write it.
    """
    cx = jnp.sqrt(a_to / a_from)
    ceps = -(a_to - a_from) / (a_from * jnp.sqrt(1.0 - a_to) + jnp.sqrt(a_from * (1.0 - a_from) * a_to))
    return cx, ceps


# PLMS's linear multistep weights on (eps_new, eps_-1, eps_-2, eps_-3) by the number of eps
# values available (PNDM Eq. 12: Adams-Bashforth of order 1..4).
_PLMS_WEIGHTS = np.array(
    [[1.0, 0, 0, 0], [3 / 2, -1 / 2, 0, 0], [23 / 12, -16 / 12, 5 / 12, 0], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
)


def plms_schedule(seq: Array):
    """The PLMS iteration plan for a descending timestep sequence ``seq [S]``: S + 1 network
    evaluations for S >= 2 (one for S = 1), started as diffusers' ``PNDMScheduler`` with
    ``skip_prk_steps=True`` does.

    Iteration 0 evaluates eps at ``(x_T, s_0)`` and takes the DDIM step to ``s_1``; iteration 1
    evaluates eps at that point and redoes the step ``s_0 -> s_1`` from x_T with the mean of the
    two (a Heun / trapezoidal start; its eps is not kept); iteration ``k >= 2`` evaluates at
    ``s_{k-1}`` and steps to ``s_k`` (``-1`` after the last) with the Adams-Bashforth weights of
    the eps values kept so far (at most 4).

    Returns ``(t_eval, t_from, t_to [K] int32, weights [K, 4], push [K] bool, from_x_T [K] bool)``
    with ``K = S + 1`` (``S = 1``: ``K = 1``); ``weights`` and the flags depend only on S.
    """
    seq = jnp.asarray(seq, jnp.int32)
    num_steps = seq.shape[0]
    after = jnp.concatenate([seq[1:], jnp.full((1,), -1, jnp.int32)])
    if num_steps == 1:
        weights = _PLMS_WEIGHTS[:1]
        return seq, seq, after, jnp.asarray(weights, jnp.float32), np.array([True]), np.array([False])
    t_eval = jnp.concatenate([seq[:1], seq[1:2], seq[1:]])
    t_from = jnp.concatenate([seq[:1], seq[:1], seq[1:]])
    t_to = jnp.concatenate([after[:1], after[:1], after[1:]])
    rows = [_PLMS_WEIGHTS[0], np.array([0.5, 0.5, 0, 0])]
    rows += [_PLMS_WEIGHTS[min(k, 4) - 1] for k in range(2, num_steps + 1)]
    push = np.array([True, False] + [True] * (num_steps - 1))
    from_x_T = np.array([False, True] + [False] * (num_steps - 1))
    return t_eval, t_from, t_to, jnp.asarray(np.stack(rows), jnp.float32), push, from_x_T


# The number of grid steps below which a solver lowers its order on the last steps (None: always):
# DPM-Solver's and diffusers' ``lower_order_final`` act below 15 steps, UniPC's at every S.
LOWER_ORDER_FINAL_BELOW = {"dpmpp_2m": 15, "dpmpp_3m": 15, "unipc": None}


def multistep_orders(solver: str, seq: Array) -> Array:
    """The order of each of the S steps, int32 ``[S]`` (traced; depends on S and on ``seq[-1]``).

    Step ``i`` goes from ``seq[i]`` to ``seq[i + 1]`` (``-1``, alpha = 1, after the last). A
    sequence that ends at t = 0 (every spacing of ``timestep_sequence``) has ``n = S - 1`` grid
    steps and a last step from t = 0 to alpha = 1 that only denoises (the official DPM-Solver's
    grid ends at a finite lambda, with ``denoise_to_zero`` as an extra first-order step); one
    that ends above 0 (diffusers' grids) has ``n = S``, its last step to alpha = 1 being part of
    the grid (diffusers' ``final_sigmas_type="zero"``). Grid step ``i`` runs at
    ``min(order, i + 1, n - i)``: lower while the history fills, and on the last grid steps
    (..., 2, 1) as DPM-Solver's ``lower_order_final`` (n < 15) and UniPC's
    ``min(order, steps + 1 - step)`` (every n) do; the step to alpha = 1 is always first order.
    """
    order = SOLVER_ORDERS[solver]
    num_steps = seq.shape[0]
    index = jnp.arange(num_steps, dtype=jnp.int32)
    grid = num_steps - (seq[-1] == 0).astype(jnp.int32)
    below = LOWER_ORDER_FINAL_BELOW.get(solver)
    lower_final = True if below is None else grid < below
    tail = jnp.where(lower_final, grid - index, order)
    orders = jnp.maximum(jnp.minimum(jnp.minimum(order, index + 1), tail), 1)
    return jnp.where(index == num_steps - 1, 1, orders).astype(jnp.int32)
