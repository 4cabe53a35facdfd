"""Ancestral DDPM sampling with a learned variance (Nichol & Dhariwal 2021, Eq. 15), on the
respaced process as guided-diffusion's ``p_sample`` on a ``SpacedDiffusion`` runs it.

For the S kept timesteps ``seq`` (descending) the respaced process has ``a_k = alphas_cumprod[t_k]``,
``beta_k = 1 - a_k / a_{k-1}`` (``a_{-1} = 1``) and the posterior variance
``pv_k = beta_k (1 - a_{k-1}) / (1 - a_k)``, whose log is clipped at the last step (``log pv_1``
in place of ``log 0``). A model of the ``"learned_range"`` output type returns ``v`` in [-1, 1] next
to eps; ``frac = (v + 1) / 2`` interpolates ``log sigma^2 = frac log beta_k + (1 - frac) log pv_k``.
The step is the posterior mean of q(x_{k-1} | x_k, x0_hat) (x0_hat clipped as the sampler clips it),
shifted by ``sigma^2 * grad log p(y | x_k)`` under classifier guidance (guided-diffusion's
``condition_mean``), plus ``sigma z``, except on the last step.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp

from ddim_jax.diffusion import alpha_at
from ddim_jax.solvers.base import Array, Solver, next_timesteps, normal


@flax.struct.dataclass
class DDPMCarry:
    x: Array  # x_t, the next network input; the sample after the last step


@dataclasses.dataclass(frozen=True)
class AncestralDDPM(Solver):
    """guided-diffusion's ``p_sample`` with ``model_var_type = LEARNED_RANGE``: one call per step.

    ``step`` takes ``model(x, t) -> (eps, x0_hat, v, cond_grad)`` (``cond_grad`` None without
    classifier guidance); ``sample`` gives it that form because ``uses_variance`` is set.
    """

    def plan(self, seq, alphas_cumprod, eta):
        t_prev = next_timesteps(seq)
        a, a_prev = alpha_at(alphas_cumprod, seq), alpha_at(alphas_cumprod, t_prev)
        beta = 1.0 - a / a_prev
        posterior_variance = beta * (1.0 - a_prev) / (1.0 - a)
        # log pv clipped: the last step (pv = 0) takes the log of the step before it (pv_1); with
        # S = 1 there is none and log beta stands in (only the guidance shift reads it).
        stand_in = posterior_variance[-2] if seq.shape[0] > 1 else beta[-1]
        log_pv = jnp.log(posterior_variance.at[-1].set(stand_in))
        return dict(
            t=jnp.asarray(seq, jnp.int32), log_beta=jnp.log(beta), log_pv=log_pv,
            coef_x0=beta * jnp.sqrt(a_prev) / (1.0 - a), coef_xt=(1.0 - a_prev) * jnp.sqrt(a / a_prev) / (1.0 - a),
            last=t_prev < 0,
        )

    def init(self, x_T):
        return DDPMCarry(x=x_T)

    def step(self, carry: DDPMCarry, inputs, model):
        x_t = carry.x
        eps, x0_hat, v, cond_grad = model(x_t, inputs["t"])
        frac = (v + 1.0) / 2.0
        log_variance = frac * inputs["log_beta"] + (1.0 - frac) * inputs["log_pv"]
        mean = inputs["coef_x0"] * x0_hat + inputs["coef_xt"] * x_t
        if cond_grad is not None:
            mean = mean + jnp.exp(log_variance) * cond_grad
        scale = jnp.where(inputs["last"], 0.0, jnp.exp(0.5 * log_variance))
        x_prev = mean + scale * normal(inputs["key"], x_t.shape, x_t.dtype)
        return DDPMCarry(x=x_prev.astype(x_t.dtype)), (x_t, x0_hat)
