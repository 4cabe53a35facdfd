"""ddim-jax: Denoising Diffusion Implicit Models (Song, Meng & Ermon, ICLR 2021) in JAX/Flax.

The math lives in pure, jittable functions:

- :mod:`ddim_jax.schedules` -- beta schedules, ``alphas_cumprod`` and timestep sub-sequences.
- :mod:`ddim_jax.diffusion` -- the forward marginal (Eq. 4), x0 prediction (Eq. 9) and the
  generalized reverse step (Eq. 12 with sigma of Eq. 16).
- :mod:`ddim_jax.sampling` -- the whole S-step sampler and the encoder (inversion) as one
  ``lax.scan`` inside one ``jit``, and ``slerp`` for latent interpolation.
"""

from ddim_jax.schedules import (
    make_betas,
    alphas_cumprod_from_betas,
    timestep_sequence,
    BETA_SCHEDULES,
    SPACINGS,
    SCHEDULE_SPACINGS,
    log_snr,
)
from ddim_jax.diffusion import (
    forward_marginal,
    predict_x0,
    ddim_step,
    generalized_step,
    sigma_hat_step,
    ddim_sigma,
    eps_from_prediction,
    PREDICTION_TYPES,
)
from ddim_jax.sampling import sample, encode, slerp

# --- other modules register their public names below this line (one import per line) ---
from ddim_jax.models import UNet, create_model
from ddim_jax.pretrained import load_diffusers_unet, load_diffusers_schedule
