"""The samplers of ``sample(..., solver=name)``: one class per method, one registry.

``REGISTRY`` maps each name to a frozen :class:`~ddim_jax.solvers.base.Solver` (``plan``,
``init``, ``step``; ``order``, ``stochastic``, ``calls(S)``), which ``ddim_jax.sampling.sample``
runs as one ``lax.scan``. Every rule about what a solver accepts (eta and sigma-hat only for
DDIM, a key for the stochastic ones, re-derived eps under clipping for those stepping with eps)
is read from the registry through :func:`solver_problem`.

| name | method | order | calls |
|---|---|---|---|
| ``ddim`` | DDIM, paper Eq. 12 (eta, sigma-hat) | 1 | S |
| ``dpmpp_2m``, ``dpmpp_3m`` | multistep DPM-Solver++ (Lu et al. 2022) | 2, 3 | S |
| ``dpmpp_2m_sde`` | DPM-Solver++(2M) SDE (stochastic) | 2 | S |
| ``plms`` | PNDM's pseudo linear multistep (Liu et al. 2022) | 4 | S + 1 |
| ``unipc``, ``unipc_3``, ``unipc_bh1``, ``unipc_bh1_3`` | UniPC bh2 / bh1 (Zhao et al. 2023) | 2, 3 | S |
| ``heun`` | EDM's Heun (Karras et al. 2022) | 2 | 2S - 1 |
| ``ddpm`` | ancestral DDPM with the learned variance (guided-diffusion's ``p_sample``; stochastic) | 1 | S |
"""

from __future__ import annotations

from ddim_jax.solvers.base import Solver, alpha_sigma_lambda, multistep_orders, phi
from ddim_jax.solvers.ddim import DDIM
from ddim_jax.solvers.ddpm import AncestralDDPM
from ddim_jax.solvers.dpmpp import DPMSolverPP, dpmpp_multistep_coefficients, dpmpp_sde_coefficients
from ddim_jax.solvers.heun import Heun
from ddim_jax.solvers.plms import PLMS, plms_schedule, pndm_transfer_coefficients
from ddim_jax.solvers.unipc import UniPC, unipc_coefficients

REGISTRY: dict[str, Solver] = {
    solver.name: solver
    for solver in (
        DDIM("ddim", order=1, accepts_eta=True),
        DPMSolverPP("dpmpp_2m", order=2),
        DPMSolverPP("dpmpp_3m", order=3),
        PLMS("plms", order=4, steps_with_eps=True),
        UniPC("unipc", order=2),
        UniPC("unipc_3", order=3),
        UniPC("unipc_bh1", order=2, variant="bh1"),
        UniPC("unipc_bh1_3", order=3, variant="bh1"),
        Heun("heun", order=2),
        DPMSolverPP("dpmpp_2m_sde", order=2, stochastic=True),
        AncestralDDPM("ddpm", order=1, stochastic=True, uses_variance=True),
    )
}
SOLVERS = tuple(REGISTRY)
# The highest order each solver runs at.
SOLVER_ORDERS = {name: solver.order for name, solver in REGISTRY.items()}


def solver_problem(name: str, *, eta: float = 0.0, sigma_hat: bool = False, clip_x0: bool = False,
                   rederive_eps: bool = True, learned_variance: bool | None = None) -> str | None:
    """Why these options do not go with solver ``name``, in one line (None when they do): an
    unknown name, eta > 0 or sigma-hat with a solver that does not take them, clipping with
    the model's own eps for a solver that steps with eps, or a solver stepping with the learned
    variance on a model without one (``learned_variance=False``; None: not known yet)."""
    if name not in REGISTRY:
        return f"unknown solver {name!r}; expected one of {', '.join(SOLVERS)}"
    solver = REGISTRY[name]
    if solver.uses_variance and learned_variance is False:
        return (f"solver {name!r} samples with the model's learned variance; this model has none "
                "(use solver 'ddim' with eta 1 for DDPM's fixed posterior variance)")
    if not solver.accepts_eta:
        kind = "stochastic with its own noise" if solver.stochastic else "deterministic"
        if sigma_hat:
            return f"sigma_hat needs solver 'ddim' (solver {name!r} is {kind})"
        if eta != 0:
            return f"eta > 0 needs solver 'ddim'; solver {name!r} is {kind} (use eta 0)"
    if solver.steps_with_eps and clip_x0 and not rederive_eps:
        return (f"clipping x0 with the model's own eps (rederive_eps off) has no effect on solver {name!r} "
                "(it steps with eps); re-derive eps or do not clip")
    return None


def needs_key(name: str, *, eta: float = 0.0, sigma_hat: bool = False) -> bool:
    """Whether sampling with ``name`` and these options draws noise (and so needs a PRNG key)."""
    solver = REGISTRY[name]
    return solver.stochastic or (solver.accepts_eta and (sigma_hat or eta != 0))


__all__ = [
    "REGISTRY", "SOLVERS", "SOLVER_ORDERS", "Solver", "DDIM", "AncestralDDPM", "DPMSolverPP", "Heun", "PLMS", "UniPC",
    "solver_problem", "needs_key", "alpha_sigma_lambda", "multistep_orders", "phi",
    "dpmpp_multistep_coefficients", "dpmpp_sde_coefficients", "unipc_coefficients", "plms_schedule",
    "pndm_transfer_coefficients",
]
