"""ddim-jax: Denoising Diffusion Implicit Models (Song, Meng & Ermon, ICLR 2021) in JAX/Flax.

The math layer is this package's top level: pure, jittable functions with no application imports
(conventions: ``docs/conventions.md``):

- :mod:`ddim_jax.schedules` -- beta schedules, ``alphas_cumprod`` and timestep sub-sequences.
- :mod:`ddim_jax.diffusion` -- the forward marginal (Eq. 4), x0 prediction (Eq. 9) and the
  generalized reverse step (Eq. 12 with sigma of Eq. 16).
- :mod:`ddim_jax.sampling` -- the S-step sampler and the encoder as one ``lax.scan`` in one ``jit``,
  and ``slerp`` for latent interpolation.
- :mod:`ddim_jax.solvers` -- every sampler (one class each) and their registry.
- :mod:`ddim_jax.guidance` -- classifier-free guidance in one batched call.
- :mod:`ddim_jax.validation` -- the argument checks the layers above share.

The application lives in subpackages, one role each (``docs/layout.md``): ``models`` (networks),
``training``, ``generation`` (the ``sample.py`` program), ``evaluation``, ``metrics``,
``pretrained``, ``io`` (atomic files, locks, checksums), ``parallel`` (meshes, processes) and
``cli``. ``import ddim_jax`` loads only the math; ``UNet``, ``create_model`` and the diffusers
loaders are imported on first use.
"""

import importlib

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

# Names whose modules import flax / the pretrained loaders: imported on first access.
_LAZY = {
    "UNet": "ddim_jax.models",
    "create_model": "ddim_jax.models",
    "load_diffusers_schedule": "ddim_jax.pretrained",
    "load_diffusers_unet": "ddim_jax.pretrained",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddim_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
