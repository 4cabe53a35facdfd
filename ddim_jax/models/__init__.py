"""Network architectures: the DDPM UNet that DDIM samples from, OpenAI's ADM UNet and noisy
classifier (:mod:`ddim_jax.models.adm`), and the one calling convention.

Every noise network here is called as ``apply_model(model, x, t, params)``:
``x [B, H, W, C]`` float, ``t`` int32 ``[B]`` -> ``[B, H, W, C]``; training adds ``dropout_key``,
and a class-conditional model (``num_classes > 0``) takes ``labels`` int32 ``[B]`` (``num_classes``
is the null class; ``None`` means the null class for all). The ADM UNet has no null class: a
class-conditional one requires labels in ``0 .. num_classes - 1``, and with ``learn_sigma`` it
returns ``[B, H, W, 2 C]`` (eps, then the variance interpolation).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddim_jax.models.adm import ADMClassifier, ADMUNet, create_adm_classifier, create_adm_model
from ddim_jax.models.adm_config import ADMConfigError
from ddim_jax.models.unet import UNet, UNetConfigError, create_model
from ddim_jax.models.unet_blocks import timestep_embedding

__all__ = ["UNet", "UNetConfigError", "create_model", "apply_model", "eps_fn_for", "abstract_params",
           "timestep_embedding", "ADMUNet", "ADMClassifier", "ADMConfigError", "create_adm_model",
           "create_adm_classifier"]


def apply_model(model: nn.Module, x: Any, t: Any, params: Any, dropout_key: Any = None, labels: Any = None) -> Any:
    """eps_theta(x, t[, labels]): x [B, H, W, C], t int32 [B] -> [B, H, W, C]; dropout on iff ``dropout_key``.

    ``labels`` (int32 [B]) only for class-conditional models; unconditional calls never pass it.
    """
    extra = () if labels is None else (labels,)
    if dropout_key is None:
        return model.apply({"params": params}, x, t, *extra)
    return model.apply({"params": params}, x, t, *extra, train=True, rngs={"dropout": dropout_key})


def _eps(model: nn.Module, x: Any, t: Any, params: Any, labels: Any = None) -> Any:
    return apply_model(model, x, t, params, labels=labels)


@functools.cache
def eps_fn_for(model: nn.Module) -> Callable[..., Any]:
    """``eps_fn(x, t, params)`` for ``sample(..., eps_fn_args=(params,))``, one per architecture.

    A class-conditional model also takes ``eps_fn(x, t, params, labels)``
    (``eps_fn_args=(params, labels)``); for classifier-free guidance wrap it with
    :func:`ddim_jax.guidance.guided_eps_fn`.

    ``sample`` / ``encode`` treat their eps function as static; linen modules hash by their
    fields, so the same architecture gets the same function object and every batch and every new
    set of params reuse one compilation.
    """
    return functools.partial(_eps, model)


def abstract_params(model: nn.Module, image_shape: Sequence[int]) -> Any:
    """The params' shapes and dtypes (``jax.ShapeDtypeStruct`` leaves) for ``[H, W, C]`` images;
    nothing is computed."""
    x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(lambda x, t: model.init({"params": jax.random.key(0)}, x, t), x, t)["params"]
