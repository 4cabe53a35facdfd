"""Every solver x spacing x S on the exact-score Gaussian mixture (tests/mixture_oracle.py).

Run:  python -m benchmarks.solver_oracle_table [--steps 5,10,20] [--spacings uniform,quad,logsnr,karras]
      [--solvers ddim,dpmpp_2m,...] [--markdown]

Each cell: 4,000 samples from the same x_T (``prior(3)``), sampled over
``timestep_sequence(S, 1000, spacing, alphas_cumprod=...)`` with the exact noise predictor, and
their sliced Wasserstein-1 distance to 4,000 data samples (64 directions; lower is better; a
converged sampler scores about 0.015, the sampling noise of this measure). Stochastic solvers
draw their noise from ``PRNGKey(1)``. A spacing or solver the installed ``ddim_jax`` does not
know is left out, so the same script measures older commits.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from ddim_jax import sample, timestep_sequence
from ddim_jax.solvers import SOLVERS

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from mixture_oracle import ALPHAS_CUMPROD, NUM_SAMPLES, T, draw_data, mixture_eps, prior, sliced_w1  # noqa: E402


def _needs_key(name: str) -> bool:
    try:
        from ddim_jax.solvers import REGISTRY
    except ImportError:
        return False
    return REGISTRY[name].stochastic


def measure(solver: str, spacing: str, num_steps: int, data: np.ndarray) -> float | None:
    """Sliced W1 of one cell, or None when this ``ddim_jax`` lacks the spacing."""
    try:
        seq = timestep_sequence(num_steps, T, spacing, alphas_cumprod=ALPHAS_CUMPROD)
    except ValueError:
        return None
    key = jax.random.PRNGKey(1) if _needs_key(solver) else None
    x = sample(mixture_eps, prior(3), seq, ALPHAS_CUMPROD, key=key, solver=solver)
    return sliced_w1(x, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="5,10,20")
    parser.add_argument("--spacings", default="uniform,quad,logsnr,karras")
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    data = draw_data(NUM_SAMPLES, seed=100)
    print("| spacing | solver | " + " | ".join(f"S = {s}" for s in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for spacing in args.spacings.split(","):
        for solver in args.solvers.split(","):
            if solver not in SOLVERS:
                continue
            values = [measure(solver, spacing, s, data) for s in steps]
            if all(v is None for v in values):
                continue
            cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
            print(f"| {spacing} | {solver} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
