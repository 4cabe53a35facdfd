"""Multistep DPM-Solver++ (data prediction): 2M, 3M and the 2M SDE.

References: Lu, Zhou, Bao, Chen, Li, Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", arXiv 2211.01095 (2022): Algorithm 2 (2M), the appendix (3M) and
section 5 (the SDE variant, as k-diffusion's ``sample_dpmpp_2m_sde`` and diffusers'
``algorithm_type="sde-dpmsolver++"`` run it, midpoint form, eta = 1).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp

from ddim_jax.solvers.base import Array, Model, Solver, multistep_orders, normal, phi, safe_step, step_grid


def dpmpp_multistep_coefficients(alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam_s1, lam_s2, order):
    """DPM-Solver++ from s0 to t: ``(cx, k0, k1, k2)`` with ``x_t = cx x_s0 + k0 m0 + k1 m1 + k2 m2``,
    ``m_j`` the x0 predictions at s0, s1, s2.

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
    h, h_safe = safe_step(lam_t, lam_s0)
    order = jnp.where(jnp.isfinite(h), order, 1)
    z = -h_safe
    cx = sigma_t / sigma_s0
    c0 = -alpha_t * jnp.expm1(-h)  # alpha_t at the final step (expm1(-inf) = -1)
    r0 = jnp.where(order >= 2, (lam_s0 - lam_s1) / h_safe, 1.0)
    r1 = jnp.where(order >= 3, (lam_s1 - lam_s2) / h_safe, 1.0)
    # u multiplies D1_0 and v multiplies D1_1 once D1 and D2 are expanded.
    c_d1_midpoint = -0.5 * alpha_t * jnp.expm1(z)
    c_d1 = -alpha_t * z * phi(z, 2)  # + alpha_t ((e^-h - 1)/h + 1)
    c_d2 = -alpha_t * z * phi(z, 3)  # - alpha_t ((e^-h - 1 + h)/h^2 - 1/2)
    q, p = r0 / (r0 + r1), 1.0 / (r0 + r1)
    u = jnp.where(order == 2, c_d1_midpoint, jnp.where(order >= 3, c_d1 * (1 + q) + c_d2 * p, 0.0))
    v = jnp.where(order >= 3, -c_d1 * q - c_d2 * p, 0.0)
    return cx, c0 + u / r0, -u / r0 + v / r1, -v / r1


def dpmpp_sde_coefficients(alpha_t, sigma_t, sigma_s0, lam_t, lam_s0, lam_s1, order):
    """DPM-Solver++(2M) SDE from s0 to t (eta = 1, midpoint): ``(cx, k0, k1, cz)`` with
    ``x_t = cx x_s0 + k0 m0 + k1 m1 + cz z``, z standard normal:
    ``x_t = sigma_t/sigma_s0 e^-h x + alpha_t (1 - e^-2h) (m0 + D1 / 2) + sigma_t sqrt(1 - e^-2h) z``,
    ``D1 = (m0 - m1) / r0`` at order 2 (0 at order 1). The final step (sigma_t = 0) returns m0."""
    h, h_safe = safe_step(lam_t, lam_s0)
    order = jnp.where(jnp.isfinite(h), order, 1)
    decay = -jnp.expm1(-2.0 * h)  # 1 - e^-2h (1 at the final step)
    cx = sigma_t / sigma_s0 * jnp.exp(-h)
    r0 = jnp.where(order >= 2, (lam_s0 - lam_s1) / h_safe, 1.0)
    u = jnp.where(order >= 2, 0.5 * alpha_t * decay / r0, 0.0)
    return cx, alpha_t * decay + u, -u, sigma_t * jnp.sqrt(decay)


@flax.struct.dataclass
class MultistepCarry:
    x: Array  # x at the current step's start (the next network input)
    m1: Array  # the x0 prediction one step back
    m2: Array  # two steps back
    lam1: Array  # lambda one step back
    lam2: Array  # two steps back


@dataclasses.dataclass(frozen=True)
class DPMSolverPP(Solver):
    """Multistep DPM-Solver++ of ``order`` 2 (2M) or 3 (3M), or the 2M SDE (``stochastic``); lower
    orders on the first steps and, below ``lower_final_below`` grid steps, on the last ones
    (``base.multistep_orders``)."""

    lower_final_below: int | None = 15

    def plan(self, seq, alphas_cumprod, eta):
        grid = step_grid(seq, alphas_cumprod)
        return dict(grid, order=multistep_orders(self.order, seq, self.lower_final_below))

    def init(self, x_T):
        zero = jnp.zeros((), x_T.dtype)
        return MultistepCarry(x=x_T, m1=jnp.zeros_like(x_T), m2=jnp.zeros_like(x_T), lam1=zero, lam2=zero)

    def step(self, carry: MultistepCarry, inputs, model: Model):
        x = carry.x
        _, m0 = model(x, inputs["t"])
        ends = (inputs["alpha_t"], inputs["sigma_t"], inputs["sigma_s"], inputs["lam_t"], inputs["lam_s"])
        if self.stochastic:
            cx, k0, k1, cz = dpmpp_sde_coefficients(*ends, carry.lam1, inputs["order"])
            x_next = cx * x + k0 * m0 + k1 * carry.m1 + cz * normal(inputs["key"], x.shape, x.dtype)
        else:
            cx, k0, k1, k2 = dpmpp_multistep_coefficients(*ends, carry.lam1, carry.lam2, inputs["order"])
            x_next = cx * x + k0 * m0 + k1 * carry.m1 + k2 * carry.m2
        lam_s = inputs["lam_s"].astype(carry.lam1.dtype)
        new = MultistepCarry(x=x_next.astype(x.dtype), m1=m0, m2=carry.m1, lam1=lam_s, lam2=carry.lam1)
        return new, (x, m0)
