"""ddim-jax: Denoising Diffusion Implicit Models (Song, Meng & Ermon, ICLR 2021) in JAX/Flax.

The math lives in pure, jittable functions (conventions: ``docs/conventions.md``):

- :mod:`ddim_jax.schedules` -- beta schedules, ``alphas_cumprod`` and timestep sub-sequences.
- :mod:`ddim_jax.diffusion` -- the forward marginal (Eq. 4), x0 prediction (Eq. 9) and the
  generalized reverse step (Eq. 12 with sigma of Eq. 16).
- :mod:`ddim_jax.sampling` -- the whole S-step sampler and the encoder (inversion) as one
  ``lax.scan`` inside one ``jit``, and ``slerp`` for latent interpolation.
- :mod:`ddim_jax.guidance` -- classifier-free guidance: ``guided_eps_fn`` (conditional and null
  estimates in one batched call, for every solver) and ``labels_for``.

The application layer: ``models`` (the UNet), ``train_state`` / ``train_lib`` / ``checkpointing``
(training), ``loading`` / ``batching`` / ``shards`` / ``sample_modes`` / ``sample_lib``
(``sample.py``), ``pretrained`` (diffusers checkpoints).
"""

from ddim_jax.diffusion import (
    PREDICTION_TYPES,
    ddim_sigma,
    ddim_step,
    eps_from_prediction,
    forward_marginal,
    generalized_step,
    predict_x0,
    sigma_hat_step,
)
from ddim_jax.models import UNet, create_model
from ddim_jax.pretrained import load_diffusers_schedule, load_diffusers_unet
from ddim_jax.sampling import encode, sample, slerp
from ddim_jax.schedules import (
    BETA_SCHEDULES,
    SCHEDULE_SPACINGS,
    SPACINGS,
    alphas_cumprod_from_betas,
    log_snr,
    make_alphas_cumprod,
    make_betas,
    timestep_sequence,
)
from ddim_jax.solvers import SOLVERS

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "SCHEDULE_SPACINGS",
    "SOLVERS",
    "SPACINGS",
    "UNet",
    "alphas_cumprod_from_betas",
    "create_model",
    "ddim_sigma",
    "ddim_step",
    "encode",
    "eps_from_prediction",
    "forward_marginal",
    "generalized_step",
    "log_snr",
    "load_diffusers_schedule",
    "load_diffusers_unet",
    "make_alphas_cumprod",
    "make_betas",
    "predict_x0",
    "sample",
    "sigma_hat_step",
    "slerp",
    "timestep_sequence",
]
