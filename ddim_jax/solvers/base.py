"""The solver interface and what the solvers share: log-SNR per step, the phi functions, orders.

A solver is a frozen dataclass with three methods and a few data fields (:class:`Solver`);
``ddim_jax.sampling.sample`` runs every one the same way::

    carry, _ = jax.lax.scan(lambda c, inputs: solver.step(c, inputs, model),
                            solver.init(x_T), solver.plan(seq, alphas_cumprod, eta))
    x0 = carry.x

``plan`` turns the timesteps into the per-iteration arrays the scan reads (leading axis K, one
network call per iteration); ``init`` gives the carry, a ``flax.struct.dataclass`` whose field
``x`` is the network's next input and, after the last iteration, the sample; ``step`` makes one
network call through ``model(x, t) -> (eps, x0_hat)`` (the prediction type, clipping and the
dtype casts are the sampler's) and returns the new carry with ``(x_t, x0_hat)`` for the
trajectory.

Notation (Lu et al. 2022): ``a_t = alphas_cumprod[t]``, ``alpha_t = sqrt(a_t)``,
``sigma_t = sqrt(1 - a_t)``, ``lambda_t = log(alpha_t / sigma_t)``, ``h = lambda_t - lambda_s``
for a step from s to t. The step after ``seq[-1]`` goes to ``t = -1``: alpha = 1, sigma = 0,
lambda = +inf.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax.diffusion import alpha_at

Array = Any
Model = Callable[[Array, Array], tuple[Array, Array]]


@dataclasses.dataclass(frozen=True)
class Solver:
    """One sampler of ``sample(..., solver=name)``.

    Attributes:
      name: the registry name.
      order: the highest order it runs at.
      stochastic: it draws fresh noise every iteration (``plan`` inputs get ``"key"``; ``sample``
        needs a key).
      steps_with_eps: it steps with the noise prediction rather than x0, so clipping x0 reaches it
        only through the re-derived eps (``rederive_eps=True``).
      accepts_eta: it takes ``eta`` and ``sigma_hat`` (DDIM, paper Eq. 12 and Table 1); every other
        solver is the deterministic ODE solver or carries its own noise rule.
      uses_variance: it steps with the model's learned variance (ancestral DDPM): its ``model``
        returns ``(eps, x0_hat, v, cond_grad)`` and it needs a ``"learned_range"`` model.
    """

    name: str
    order: int
    stochastic: bool = False
    steps_with_eps: bool = False
    accepts_eta: bool = False
    uses_variance: bool = False

    def calls(self, num_steps: int) -> int:
        """Network evaluations for S steps (= scan iterations)."""
        return num_steps

    def trajectory_rows(self, num_steps: int) -> np.ndarray:
        """The scan iterations whose ``(x_t, x0_hat)`` form the S rows of ``return_trajectory``."""
        return np.arange(num_steps)

    def plan(self, seq: Array, alphas_cumprod: Array, eta: Array) -> dict[str, Array]:
        """Per-iteration arrays ``[K, ...]`` for descending timesteps ``seq [S]`` (traced)."""
        raise NotImplementedError

    def init(self, x_T: Array) -> Any:
        """The carry before the first iteration (``x_T`` already in the state dtype)."""
        raise NotImplementedError

    def step(self, carry: Any, inputs: dict[str, Array], model: Model) -> tuple[Any, tuple[Array, Array]]:
        """One iteration: one ``model`` call; returns ``(carry, (x_t, x0_hat))``."""
        raise NotImplementedError


def next_timesteps(seq: Array) -> Array:
    """``seq[i + 1]``, and ``-1`` (alpha = 1) after the last: int32 ``[S]``."""
    seq = jnp.asarray(seq, jnp.int32)
    return jnp.concatenate([seq[1:], jnp.full((1,), -1, jnp.int32)])


def alpha_sigma_lambda(alphas_cumprod: Array, t: Array):
    """``(alpha_t, sigma_t, lambda_t)`` for int timesteps ``t``; ``t = -1`` gives ``(1, 0, +inf)``."""
    a = alpha_at(alphas_cumprod, t)
    return jnp.sqrt(a), jnp.sqrt(1.0 - a), 0.5 * (jnp.log(a) - jnp.log1p(-a))


def step_grid(seq: Array, alphas_cumprod: Array) -> dict[str, Array]:
    """Both ends of every step ``seq[i] -> seq[i + 1]``: ``t``, ``t_next`` and ``alpha``, ``sigma``,
    ``lambda`` at the start (``_s``) and the end (``_t``), each ``[S]``."""
    seq = jnp.asarray(seq, jnp.int32)
    t_next = next_timesteps(seq)
    alpha_s, sigma_s, lam_s = alpha_sigma_lambda(alphas_cumprod, seq)
    alpha_t, sigma_t, lam_t = alpha_sigma_lambda(alphas_cumprod, t_next)
    return dict(t=seq, t_next=t_next, alpha_s=alpha_s, sigma_s=sigma_s, lam_s=lam_s,
                alpha_t=alpha_t, sigma_t=sigma_t, lam_t=lam_t)


# phi_k is summed as its Taylor series for |z| < k / 2: the closed form cancels (it loses about
# k! eps / |z|^(k-1) of relative precision: phi_3 4e-5 in float32 at |z| = 0.1), below 2e-7
# from |z| = k / 2 on; the series (12 terms) is exact to float32 below it.
_SERIES_TERMS = 12


def _phi_series(z, k: int):
    """``phi_k(z) = sum_n z^n / (n + k)!`` (Horner, ``_SERIES_TERMS`` terms)."""
    total = jnp.zeros_like(z) + 1.0 / math.factorial(k + _SERIES_TERMS - 1)
    for n in range(_SERIES_TERMS - 2, -1, -1):
        total = total * z + 1.0 / math.factorial(n + k)
    return total


def phi(z, k: int):
    """``phi_k(z) = (e^z - sum_{n<k} z^n / n!) / z^k`` (``phi_k(0) = 1/k!``), k >= 1, with its
    Taylor series for |z| < k / 2 (float32-safe)."""
    small = jnp.abs(z) < k / 2
    zs = jnp.where(small, 1.0, z)
    closed = jnp.expm1(zs) - sum(zs**n / math.factorial(n) for n in range(1, k))
    return jnp.where(small, _phi_series(z, k), closed / zs**k)


def _phi2(z):
    """``(e^z - 1 - z) / z^2``."""
    return phi(z, 2)


def _phi3(z):
    """``(e^z - 1 - z - z^2/2) / z^3``."""
    return phi(z, 3)


def safe_step(lam_t, lam_s0):
    """``h = lambda_t - lambda_s0`` and a finite, non-zero stand-in for the final step (h = +inf)
    and for a step whose history is not filled yet (h = 0), so unused branches stay finite."""
    h = lam_t - lam_s0
    return h, jnp.where(jnp.isfinite(h) & (h != 0), h, 1.0)


def multistep_orders(order: int, seq: Array, lower_final_below: int | None) -> Array:
    """The order of each of the S steps, int32 ``[S]`` (traced; depends on S and on ``seq[-1]``).

    Step ``i`` goes from ``seq[i]`` to ``seq[i + 1]`` (``-1``, alpha = 1, after the last). A
    sequence that ends at t = 0 (every spacing of ``timestep_sequence``) has ``n = S - 1`` grid
    steps and a last step from t = 0 to alpha = 1 that only denoises (the official DPM-Solver's
    grid ends at a finite lambda, with ``denoise_to_zero`` as an extra first-order step); one
    that ends above 0 (diffusers' grids) has ``n = S``, its last step to alpha = 1 being part of
    the grid (diffusers' ``final_sigmas_type="zero"``). Grid step ``i`` runs at
    ``min(order, i + 1, n - i)``: lower while the history fills, and on the last grid steps
    (..., 2, 1) when ``n < lower_final_below`` (None: at every n) as DPM-Solver's
    ``lower_order_final`` (n < 15) and UniPC's ``min(order, steps + 1 - step)`` (every n) do. At
    ``n >= lower_final_below`` the last grid step is still first order, as diffusers' last step
    (to sigma = 0) is at every S: on a grid that ends at t = 0 that is the step into t = 0, which a
    t-uniform spacing makes several times longer in lambda than the one before (the official
    DPM-Solver keeps full order there; on the Gaussian-mixture oracle at S = 20 uniform that costs
    2M 0.097 against 0.032 sliced W1). The step to alpha = 1 is always first order.
    """
    seq = jnp.asarray(seq, jnp.int32)
    num_steps = seq.shape[0]
    index = jnp.arange(num_steps, dtype=jnp.int32)
    grid = num_steps - (seq[-1] == 0).astype(jnp.int32)
    lower_final = True if lower_final_below is None else grid < lower_final_below
    tail = jnp.where(lower_final, grid - index, jnp.where(index == grid - 1, 1, order))
    orders = jnp.maximum(jnp.minimum(jnp.minimum(order, index + 1), tail), 1)
    return jnp.where(index == num_steps - 1, 1, orders).astype(jnp.int32)


def is_key_batch(key) -> bool:
    """Whether ``key`` is one PRNG key per example (``[B]`` typed keys, or raw ``uint32 [B, 2]``)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


def normal(key, shape, dtype):
    """Standard normal noise of ``shape = [B, ...]`` from one key, or row b from ``key[b]``."""
    if is_key_batch(key):
        return jax.vmap(lambda example_key: jax.random.normal(example_key, shape[1:], dtype))(key)
    return jax.random.normal(key, shape, dtype)


def iteration_keys(key, num_iterations: int):
    """The key of each iteration, ``[K, ...]``: ``split(key, K)``, or per example ``split(key[b], K)``."""
    if is_key_batch(key):
        return jnp.swapaxes(jax.vmap(lambda example_key: jax.random.split(example_key, num_iterations))(key), 0, 1)
    return jax.random.split(key, num_iterations)
