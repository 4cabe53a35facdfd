"""What a sampling run asks for: the sampler settings and the user-error type of sampling.

:class:`SamplerSpec` is how to run the reverse process (S, eta or sigma-hat, the timestep spacing,
clipping); :class:`SampleError` is the one-line user error that ``sample.py`` prints.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ddim_jax.errors import UserError
from ddim_jax.schedules import ALL_SPACINGS, is_spacing_kind, timestep_sequence
from ddim_jax.solvers import solver_problem
from ddim_jax.validation import eta_problem, num_steps_problem

# (plus "respace:c1,c2,..." section counts, guided-diffusion's timestep_respacing "c1,c2,...")
SKIP_KINDS = ALL_SPACINGS


class SampleError(UserError, ValueError):
    """A user error (bad flag, missing run, unreadable checkpoint): its message is one line."""


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """How to run the reverse process.

    Attributes:
      steps: S, the length of the timestep sub-sequence (1 <= S <= T).
      eta: the eta of Eq. 16 (0 = DDIM, deterministic; 1 = DDPM's ancestral step).
      sigma_hat: use the larger variance sigma_hat = sqrt(1 - a_t / a_prev) (Table 1's last row);
        replaces eta.
      skip: the timestep spacing ("uniform", "quad", "leading", "trailing", "linspace", "logsnr" and
        "karras", which depend on the model's schedule, or guided-diffusion's respacing "ddim",
        "respace", "respace:c1,c2,...").
      clip_x0: clip the predicted x0 (Eq. 9) to [-1, 1] at every step.
      solver: a name of ``ddim_jax.solvers.REGISTRY``; only "ddim" (Eq. 12) takes eta and sigma_hat.
    """

    steps: int = 20
    eta: float = 0.0
    sigma_hat: bool = False
    skip: str = "uniform"
    clip_x0: bool = True
    solver: str = "ddim"


def check_skip(skip: str) -> None:
    """Raise :class:`SampleError` for a ``--skip`` that names no spacing."""
    if not is_spacing_kind(skip):
        raise SampleError(f"unknown --skip={skip!r}; choose one of {', '.join(SKIP_KINDS)} or respace:c1,c2,... "
                          "(section counts summing to --steps)")


def validate_spec(spec: SamplerSpec, num_timesteps: int) -> None:
    """Raise :class:`SampleError` naming the first problem with ``spec`` for a T-step model."""
    if not isinstance(spec.steps, (int, np.integer)) or isinstance(spec.steps, bool):
        raise SampleError(f"--steps must be an integer, got {spec.steps!r}")
    problem = num_steps_problem("--steps", spec.steps, num_timesteps)
    if problem is not None:
        raise SampleError(problem)
    check_skip(spec.skip)
    if spec.skip == "ddim" or spec.skip.startswith("respace"):
        try:  # the kinds that do not exist for every S (a stride, section counts summing to S)
            timestep_sequence(int(spec.steps), num_timesteps, spec.skip)
        except ValueError as error:
            raise SampleError(f"--skip={spec.skip} --steps={spec.steps}: {error}") from None
    if eta_problem(spec.eta) is not None:
        raise SampleError(f"--eta {eta_problem(spec.eta)}")
    if spec.sigma_hat and spec.eta != 0:
        raise SampleError(
            f"--sigma_hat replaces eta with the larger variance; drop --eta={spec.eta} or --sigma_hat"
        )
    problem = solver_problem(spec.solver, eta=spec.eta, sigma_hat=spec.sigma_hat)
    if problem is not None:
        raise SampleError(f"--solver={spec.solver}: {problem}")
