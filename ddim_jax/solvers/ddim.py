"""DDIM (Song, Meng & Ermon, ICLR 2021): paper Eq. 12 with sigma(eta) of Eq. 16, or Table 1's
sigma-hat row (the DDPM posterior mean plus ``sqrt(1 - a_t / a_prev)`` noise)."""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp

from ddim_jax.diffusion import alpha_at, direction_kernel, x_prev_from_x0_eps
from ddim_jax.solvers.base import Array, Model, Solver, next_timesteps, normal

NOISE_KINDS = ("none", "eta", "sigma_hat")


@flax.struct.dataclass
class DDIMCarry:
    x: Array  # x_t, the next network input; the sample after the last step


@dataclasses.dataclass(frozen=True)
class DDIM(Solver):
    """``x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z`` (Eq. 12).

    ``noise``: ``"none"`` (eta = 0, deterministic), ``"eta"`` (sigma of Eq. 16 from the traced
    eta) or ``"sigma_hat"``; ``sample`` picks it from its arguments. The step to ``t = -1``
    returns x0_hat.
    """

    noise: str = "none"

    def plan(self, seq, alphas_cumprod, eta):
        t_prev = next_timesteps(seq)
        a, a_prev = alpha_at(alphas_cumprod, seq), alpha_at(alphas_cumprod, t_prev)
        if self.noise == "sigma_hat":  # beta = 1 - a_t / a_prev; no noise on the last step
            sigma = jnp.where(t_prev >= 0, jnp.sqrt(1.0 - a / a_prev), 0.0)
            direction = jnp.zeros_like(a)   # (the posterior mean needs none)
        elif self.noise == "eta":  # Eq. 16, and sqrt(1 - a_prev - sigma^2) without cancellation
            sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a)) * jnp.sqrt(1.0 - a / a_prev)
            direction = direction_kernel(a, a_prev, eta)
        else:
            sigma, direction = jnp.zeros_like(a), jnp.sqrt(1.0 - a_prev)
        return dict(t=jnp.asarray(seq, jnp.int32), a=a, a_prev=a_prev, sigma=sigma, direction=direction)

    def init(self, x_T):
        return DDIMCarry(x=x_T)

    def step(self, carry: DDIMCarry, inputs, model: Model):
        x_t = carry.x
        eps, x0_hat = model(x_t, inputs["t"])
        a, a_prev, sigma, direction = inputs["a"], inputs["a_prev"], inputs["sigma"], inputs["direction"]
        if self.noise == "none":
            x_prev = x_prev_from_x0_eps(x0_hat, eps, a_prev, direction, 0.0, 0.0)
        elif self.noise == "eta":
            x_prev = x_prev_from_x0_eps(x0_hat, eps, a_prev, direction, sigma,
                                        normal(inputs["key"], x_t.shape, x_t.dtype))
        else:  # sigma_hat: the DDPM posterior mean of q(x_prev | x_t, x0_hat)
            beta = 1.0 - a / a_prev
            mean = (jnp.sqrt(a_prev) * beta * x0_hat + jnp.sqrt(1.0 - beta) * (1.0 - a_prev) * x_t) / (1.0 - a)
            x_prev = mean + sigma * normal(inputs["key"], x_t.shape, x_t.dtype)
        return DDIMCarry(x=x_prev.astype(x_t.dtype)), (x_t, x0_hat)
