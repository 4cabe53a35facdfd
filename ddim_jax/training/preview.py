"""The EMA sample grids drawn during training (``samples/step_*.png``).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from ddim_jax.io.checksums import host_array
from ddim_jax.models import create_model, eps_fn_for
from ddim_jax.sampling import sample
from ddim_jax.schedules import make_alphas_cumprod, timestep_sequence


class GridSampler:
    """Draws the same ``num_grid_samples`` x_T through DDIM (``config.sampling``) for every grid."""

    def __init__(self, config: ml_collections.ConfigDict, replicated: NamedSharding):
        # One function object per architecture: ``sample`` compiles once per run (and per process).
        self.eps_fn = eps_fn_for(create_model(config))
        size, channels = config.data.image_size, config.data.channels
        x_T = jax.random.normal(jax.random.PRNGKey(config.training.seed + 1),
                                (config.training.num_grid_samples, size, size, channels))
        self.x_T = jax.device_put(np.asarray(x_T), replicated)
        self.alphas_cumprod = jax.device_put(np.asarray(make_alphas_cumprod(config.diffusion)), replicated)
        self.seq = timestep_sequence(config.sampling.num_steps, config.diffusion.num_timesteps,
                                     kind=config.sampling.skip, alphas_cumprod=make_alphas_cumprod(config.diffusion))
        self.solver = config.sampling.solver
        self.eta = config.sampling.eta
        self.key = jax.device_put(np.asarray(jax.random.PRNGKey(config.training.seed + 2)), replicated)
        self.clip_x0 = config.sampling.clip_x0
        self.rederive_eps = config.sampling.rederive_eps
        # Class-conditional runs: grid image i is of class i mod K (plain conditional, no guidance).
        num_classes = config.model.num_classes
        self.labels = ((jax.device_put(np.arange(config.training.num_grid_samples, dtype=np.int32) % num_classes,
                                       replicated),) if num_classes else ())

    def __call__(self, ema_params: Any) -> np.ndarray:
        x0 = sample(self.eps_fn, self.x_T, self.seq, self.alphas_cumprod, self.eta,
                    self.key if self.eta > 0 else None, eps_fn_args=(ema_params, *self.labels),
                    clip_x0=self.clip_x0, rederive_eps=self.rederive_eps, solver=self.solver)
        return host_array(x0)
