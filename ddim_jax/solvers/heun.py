"""Heun's second-order method on the probability-flow ODE in the EDM parametrisation (Karras,
Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative Models",
NeurIPS 2022, Algorithm 1 with S_churn = 0; k-diffusion's ``sample_heun``, diffusers'
``HeunDiscreteScheduler``).

In EDM's variables ``x_ve = x_t / alpha_t`` and ``s = sigma_t / alpha_t`` the ODE is
``dx_ve / ds = (x_ve - x0_hat) / s`` (the noise prediction re-derived from x0_hat). A step from
s_i to s_{i+1} takes the Euler point with that slope ``d_i``, evaluates the slope ``d'`` there
and steps again from x_i with ``(d_i + d') / 2``; the step to s = 0 (t = -1) is Euler only, so
S steps cost 2S - 1 network calls. The carry stays in the sampler's variable x_t.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
import numpy as np

from ddim_jax.diffusion import alpha_at
from ddim_jax.solvers.base import Array, Model, Solver, next_timesteps


@flax.struct.dataclass
class HeunCarry:
    x: Array  # the next network input, x_t (the Euler point during a correction)
    start: Array  # x_ve at the current step's start
    slope: Array  # d_i, the slope there


@dataclasses.dataclass(frozen=True)
class Heun(Solver):
    """EDM's Heun sampler: iterations alternate an Euler prediction (at ``seq[i]``) and a
    correction (at ``seq[i + 1]``); ``2S - 1`` iterations, one network call each."""

    def calls(self, num_steps: int) -> int:
        return 2 * num_steps - 1

    def trajectory_rows(self, num_steps: int) -> np.ndarray:
        return np.arange(0, 2 * num_steps - 1, 2)

    def plan(self, seq, alphas_cumprod, eta):
        seq = jnp.asarray(seq, jnp.int32)
        t_next = next_timesteps(seq)
        # Iteration 2i predicts from seq[i]; iteration 2i + 1 corrects at seq[i + 1] (none after the last).
        t_from = jnp.repeat(seq, 2)[:-1]
        t_to = jnp.repeat(t_next, 2)[:-1]
        correct = jnp.tile(jnp.array([False, True]), seq.shape[0])[:-1]
        t_eval = jnp.where(correct, t_to, t_from)
        a_from, a_to, a_eval = (alpha_at(alphas_cumprod, t) for t in (t_from, t_to, t_eval))
        return dict(t=t_eval, correct=correct, alpha_eval=jnp.sqrt(a_eval), s_eval=jnp.sqrt((1.0 - a_eval) / a_eval),
                    ds=jnp.sqrt((1.0 - a_to) / a_to) - jnp.sqrt((1.0 - a_from) / a_from), alpha_to=jnp.sqrt(a_to))

    def init(self, x_T):
        return HeunCarry(x=x_T, start=x_T, slope=jnp.zeros_like(x_T))

    def step(self, carry: HeunCarry, inputs, model: Model):
        x = carry.x
        _, x0_hat = model(x, inputs["t"])
        x_ve = x / inputs["alpha_eval"]
        slope = (x_ve - x0_hat) / inputs["s_eval"]
        correct = inputs["correct"]
        start = jnp.where(correct, carry.start, x_ve)
        step_slope = jnp.where(correct, 0.5 * (carry.slope + slope), slope)
        x_next = inputs["alpha_to"] * (start + step_slope * inputs["ds"])
        new = HeunCarry(x=x_next.astype(x.dtype), start=start.astype(x.dtype), slope=slope.astype(x.dtype))
        return new, (x, x0_hat)
