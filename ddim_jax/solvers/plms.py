"""PNDM's pseudo linear multistep (PLMS): Liu, Ren, Lin, Zhao, "Pseudo Numerical Methods for
Diffusion Models on Manifolds", ICLR 2022 (arXiv 2202.09778), Eq. 9 (transfer) and Eq. 12
(linear multistep), started as diffusers' ``PNDMScheduler(skip_prk_steps=True)``."""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
import numpy as np

from ddim_jax.diffusion import alpha_at
from ddim_jax.solvers.base import Array, Model, Solver


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



@flax.struct.dataclass
class PLMSCarry:
    x: Array  # the next network input
    x_start: Array  # x_T, which the start's second iteration steps from again
    eps: Array  # [3, B, ...]: the kept eps values, newest first


@dataclasses.dataclass(frozen=True)
class PLMS(Solver):
    """Adams-Bashforth weights of up to 4 eps values on the DDIM transfer; steps with eps, S + 1
    network calls (``plms_schedule``). The last step keeps its multistep eps, as PNDM does."""

    def calls(self, num_steps: int) -> int:
        return num_steps + 1 if num_steps > 1 else 1

    def trajectory_rows(self, num_steps: int) -> np.ndarray:
        return np.arange(num_steps) if num_steps == 1 else np.concatenate([[0], np.arange(2, num_steps + 1)])

    def plan(self, seq, alphas_cumprod, eta):
        t_eval, t_from, t_to, weights, push, from_x_T = plms_schedule(seq)
        cx, ceps = pndm_transfer_coefficients(alpha_at(alphas_cumprod, t_from), alpha_at(alphas_cumprod, t_to))
        return dict(t=t_eval, cx=cx, ceps=ceps, weights=weights, push=jnp.asarray(push),
                    from_x_T=jnp.asarray(from_x_T))

    def init(self, x_T):
        return PLMSCarry(x=x_T, x_start=x_T, eps=jnp.zeros((3,) + x_T.shape, x_T.dtype))

    def step(self, carry: PLMSCarry, inputs, model: Model):
        x = carry.x
        eps, x0_hat = model(x, inputs["t"])
        w = inputs["weights"].astype(x.dtype)
        eps_prime = w[0] * eps + jnp.tensordot(w[1:], carry.eps, axes=1)
        base = jnp.where(inputs["from_x_T"], carry.x_start, x)
        x_next = inputs["cx"] * base + inputs["ceps"] * eps_prime
        kept = jnp.where(inputs["push"], jnp.concatenate([eps[None], carry.eps[:2]]), carry.eps)
        return PLMSCarry(x=x_next.astype(x.dtype), x_start=carry.x_start, eps=kept), (x, x0_hat)
