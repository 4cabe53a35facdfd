"""Network architectures: the DDPM UNet that DDIM samples from, and the one calling convention.

Every noise network here is called as ``apply_model(model, x, t, params)``:
``x [B, H, W, C]`` float, ``t`` int32 ``[B]`` -> ``[B, H, W, C]``; training adds ``dropout_key``.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddim_jax.models.unet import UNet, UNetConfigError, create_model, timestep_embedding

__all__ = ["UNet", "UNetConfigError", "create_model", "apply_model", "eps_fn_for", "abstract_params",
           "timestep_embedding"]


def apply_model(model: nn.Module, x: Any, t: Any, params: Any, dropout_key: Any = None) -> Any:
    """eps_theta(x, t): x [B, H, W, C], t int32 [B] -> [B, H, W, C]; dropout on iff ``dropout_key``."""
    if dropout_key is None:
        return model.apply({"params": params}, x, t)
    return model.apply({"params": params}, x, t, train=True, rngs={"dropout": dropout_key})


@functools.cache
def eps_fn_for(model: nn.Module) -> Callable[..., Any]:
    """``eps_fn(x, t, params)`` for ``sample(..., eps_fn_args=(params,))``, one per architecture.

    ``sample`` / ``encode`` treat their eps function as static; linen modules hash by their
    fields, so the same architecture gets the same function object and every batch and every new
    set of params reuse one compilation.
    """
    return functools.partial(apply_model, model)


def abstract_params(model: nn.Module, image_shape: Sequence[int]) -> Any:
    """The params' shapes and dtypes (``jax.ShapeDtypeStruct`` leaves) for ``[H, W, C]`` images;
    nothing is computed."""
    x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(lambda x, t: model.init({"params": jax.random.key(0)}, x, t), x, t)["params"]
