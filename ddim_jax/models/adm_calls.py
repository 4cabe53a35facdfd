"""The ADM networks in the calling conventions of the sampler: the UNet as ``eps_fn`` and the noisy
classifier as a logits function, both called with the original timestep ``t`` (int32 ``[B]``) and
converted here to what the network was trained on (``t * 1000 / T`` with ``rescale_timesteps``, as
guided-diffusion's ``_WrappedModel`` does)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def _network_time(t: Any, timestep_scale: float | None) -> Any:
    return t if timestep_scale is None else jnp.asarray(t, jnp.float32) * timestep_scale


@dataclasses.dataclass(frozen=True)
class ADMEpsFn:
    """``eps_fn(x [B, H, W, C], t int32 [B], params[, labels int32 [B]]) -> [B, H, W, out]`` of an
    :class:`~ddim_jax.models.adm.ADMUNet` (``out = 2 C`` with ``learn_sigma``: sample it with
    ``output_type="learned_range"``). Frozen and hashable, so ``sample`` compiles once per model.

    Attributes:
      model: the ADM UNet.
      timestep_scale: ``1000 / T`` for a model trained with ``rescale_timesteps``; None otherwise.
    """

    model: nn.Module
    timestep_scale: float | None = None

    def __call__(self, x: Any, t: Any, params: Any, labels: Any = None) -> Any:
        extra = () if labels is None else (labels,)
        return self.model.apply({"params": params}, x, _network_time(t, self.timestep_scale), *extra)


@dataclasses.dataclass(frozen=True)
class ADMLogitsFn:
    """``logits_fn(x [B, H, W, C], t int32 [B], params) -> [B, K]`` of an
    :class:`~ddim_jax.models.adm.ADMClassifier` (see ``ddim_jax.guidance.classifier_cond_fn``)."""

    model: nn.Module
    timestep_scale: float | None = None

    def __call__(self, x: Any, t: Any, params: Any) -> Any:
        return self.model.apply({"params": params}, x, _network_time(t, self.timestep_scale))


def timestep_scale(rescale_timesteps: bool, num_timesteps: int) -> float | None:
    """``1000 / T`` when the network was trained on rescaled timesteps, else None."""
    return 1000.0 / num_timesteps if rescale_timesteps else None
