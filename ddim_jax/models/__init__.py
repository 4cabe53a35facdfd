"""Network architectures: the DDPM UNet that DDIM samples from."""

import functools
from typing import Any, Callable

import flax.linen as nn

from ddim_jax.models.unet import UNet, create_model, timestep_embedding

__all__ = ["UNet", "create_model", "eps_fn_for", "timestep_embedding"]


def _apply_eval(model: nn.Module, x: Any, t: Any, params: Any) -> Any:
    """eps_theta(x, t): x [B, H, W, C] float32, t int32 [B] -> [B, H, W, C] (dropout off)."""
    return model.apply({"params": params}, x, t)


@functools.lru_cache(maxsize=None)
def eps_fn_for(model: nn.Module) -> Callable[..., Any]:
    """``eps_fn(x, t, params)`` for ``sample(..., eps_fn_args=(params,))``, one per architecture.

    ``sample`` / ``encode`` treat their eps function as static; linen modules hash by their
    fields, so the same architecture gets the same function object and every batch and every new
    set of params reuse one compilation.
    """
    return functools.partial(_apply_eval, model)
