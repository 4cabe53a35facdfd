"""UniPC (Zhao, Bai, Rao, Zhou, Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models", NeurIPS 2023, arXiv 2302.04867): the UniP predictor and the UniC
corrector of order 1-3 in data prediction, with B(h) = h ("bh1") or e^h - 1 ("bh2")
(Algorithms 2-3; diffusers' ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``).

The corrector re-uses the next step's network evaluation, so S steps cost S calls.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax.numpy as jnp

from ddim_jax.solvers.base import Array, Model, Solver, multistep_orders, phi, safe_step, step_grid


def _solve_leading(columns, b, size):
    """The first ``size`` (traced, 0..3) unknowns of ``sum_k columns[k]^i rho_k = b_i``
    (i < size); the others 0. ``columns [3]``, ``b [3]``."""
    i = jnp.arange(3)
    active = (i[:, None] < size) & (i[None, :] < size)
    matrix = jnp.where(active, columns[None, :] ** i[:, None], jnp.eye(3, dtype=columns.dtype))
    return jnp.linalg.solve(matrix, jnp.where(i < size, b, 0.0))


def unipc_coefficients(alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam_hist, order, *, variant: str, corrector: bool):
    """One UniP (``corrector=False``) or UniC step from s0 to t in data prediction:
    ``(cx, k0, k_hist [2], k_new)`` with ``x_t = cx x_s0 + k0 m0 + k_hist . m_hist + k_new m_t``,
    ``m0`` the x0 prediction at s0, ``m_hist`` those at the two points before s0, ``m_t`` the one
    at t (the corrector's new evaluation; ``k_new = 0`` for the predictor).

    ``x_t = sigma_t/sigma_s0 x - alpha_t (e^-h - 1) m0 - alpha_t B(h) (sum_k rho_k D1_k
    + rho_new (m_t - m0))`` with ``D1_k = (m_k - m0) / r_k``, ``r_k = (lambda_k - lambda_s0) / h``
    and ``rho`` solving ``sum_k r_k^(i-1) rho_k = b_i = (-h) phi_{i+1}(-h) i! / B(h)`` for
    i = 1..p (the corrector, with r = 1 for m_t) or i = 1..p-1 (the predictor); the order-2
    predictor and the order-1 corrector use rho = 1/2, as the reference codes do. ``lam_hist
    [2]``: lambda at the two points before s0; ``order`` (traced) is p; the final step
    (lambda_t = inf) is forced to order 1 (the predictor then returns m0).
    """
    h, h_safe = safe_step(lam_t, lam_s0)
    order = jnp.where(jnp.isfinite(h), order, 1)
    hh = -h_safe
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    rk = (lam_hist - lam_s0) / h_safe
    rk = jnp.where(rk == 0, 1.0, rk)  # an unfilled history slot (its rho is 0)
    b = jnp.stack([hh * phi(hh, i + 1) * math.factorial(i) / b_h for i in (1, 2, 3)])
    one = jnp.ones((1,), rk.dtype)
    if corrector:
        rho = _solve_leading(jnp.concatenate([one, rk]), b, order)
        rho = jnp.where(order == 1, jnp.array([0.5, 0.0, 0.0], rk.dtype), rho)
        rho_new, rho_hist = rho[0], rho[1:]
    else:
        rho = _solve_leading(jnp.concatenate([rk, one]), b, order - 1)
        rho = jnp.where(order == 2, jnp.array([0.5, 0.0, 0.0], rk.dtype), rho)
        rho_new, rho_hist = 0.0, rho[:2]
    k_hist = -alpha_t * b_h * rho_hist / rk
    k_new = -alpha_t * b_h * rho_new
    k0 = -alpha_t * jnp.expm1(-h) + alpha_t * b_h * (jnp.sum(rho_hist / rk) + rho_new)
    return sigma_t / sigma_s0, k0, k_hist, k_new


@flax.struct.dataclass
class UniPCCarry:
    x: Array  # the predictor's point at the current t (the next network input)
    x_prev: Array  # the corrected point at the previous t, where that predictor started
    m: Array  # [3, B, ...]: the x0 predictions one, two and three steps back
    lam: Array  # [3]: their lambdas
    sigma1: Array  # sigma one step back
    order_prev: Array  # the previous predictor's order (0 before the first step: no correction)


@dataclasses.dataclass(frozen=True)
class UniPC(Solver):
    """UniPC of ``order`` 1-3 with ``variant`` "bh1" or "bh2": at step i, correct the point the
    previous predictor produced with the evaluation just made there (UniC, of that predictor's
    order), then predict the next point from it (UniP). Orders as ``base.multistep_orders`` with
    no gate (UniPC's ``min(order, steps + 1 - step)``)."""

    variant: str = "bh2"

    def plan(self, seq, alphas_cumprod, eta):
        return dict(step_grid(seq, alphas_cumprod), order=multistep_orders(self.order, seq, None))

    def init(self, x_T):
        return UniPCCarry(x=x_T, x_prev=x_T, m=jnp.zeros((3,) + x_T.shape, x_T.dtype), lam=jnp.zeros(3, x_T.dtype),
                          sigma1=jnp.ones((), x_T.dtype), order_prev=jnp.int32(0))

    def step(self, carry: UniPCCarry, inputs, model: Model):
        x = carry.x
        _, m_now = model(x, inputs["t"])
        alpha_s, sigma_s, lam_s = inputs["alpha_s"], inputs["sigma_s"], inputs["lam_s"].astype(x.dtype)
        cx, k0, k_hist, k_new = unipc_coefficients(
            alpha_s, sigma_s, carry.sigma1, lam_s, carry.lam[0], carry.lam[1:], carry.order_prev,
            variant=self.variant, corrector=True)
        corrected = cx * carry.x_prev + k0 * carry.m[0] + _dot(k_hist, carry.m[1:]) + k_new * m_now
        x_c = jnp.where(carry.order_prev > 0, corrected, x)
        px, p0, p_hist, _ = unipc_coefficients(
            inputs["alpha_t"], inputs["sigma_t"], sigma_s, inputs["lam_t"], lam_s, carry.lam[:2], inputs["order"],
            variant=self.variant, corrector=False)
        x_next = px * x_c + p0 * m_now + _dot(p_hist, carry.m[:2])
        new = UniPCCarry(
            x=x_next.astype(x.dtype), x_prev=x_c.astype(x.dtype),
            m=jnp.concatenate([m_now[None], carry.m[:2]]), lam=jnp.concatenate([lam_s[None], carry.lam[:2]]),
            sigma1=sigma_s.astype(x.dtype), order_prev=inputs["order"])
        return new, (x, m_now)


def _dot(weights, stack):
    """``sum_k weights[k] stack[k]`` for ``weights [K]``, ``stack [K, B, ...]``."""
    return jnp.tensordot(weights.astype(stack.dtype), stack, axes=1)
