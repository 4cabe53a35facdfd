"""Loading a converted ADM (guided-diffusion) directory to sample from, and its noisy classifier.

A directory written by ``python -m ddim_jax.pretrained convert-adm`` (it holds ``adm_config.json``)
becomes a :class:`~ddim_jax.generation.loading.LoadedModel` with the schedule of its diffusion
settings, the learned-variance output type (``learn_sigma``), its timestep scaling
(``rescale_timesteps``), re-derived eps under clipping and clipping on (guided-diffusion's
``ddim_sample`` / ``p_sample`` with ``clip_denoised=True``). Its ``timestep_respacing``, when set,
becomes the default ``--skip`` / ``--steps`` (``"ddim25"`` -> ddim, 25; ``"250"`` -> respace, 250).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ddim_jax import pretrained
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.guidance import classifier_cond_fn
from ddim_jax.io.checksums import tree_checksum
from ddim_jax.models.adm import ADMClassifier
from ddim_jax.models.adm_calls import ADMLogitsFn, timestep_scale
from ddim_jax.pretrained.adm_convert import CONFIG_NAME, load_adm, read_adm_config
from ddim_jax.schedules import alphas_cumprod_from_betas


def is_adm_directory(path: str) -> bool:
    """Whether ``path`` is a converted ADM directory (it holds ``adm_config.json``)."""
    return os.path.isfile(os.path.join(path, CONFIG_NAME))


def respacing_defaults(respacing: str) -> dict[str, Any]:
    """guided-diffusion's ``timestep_respacing`` as ``{"skip", "num_steps"}`` defaults ({} if unset)."""
    if not respacing:
        return {}
    if respacing.startswith("ddim"):
        return {"skip": "ddim", "num_steps": int(respacing[len("ddim"):])}
    counts = [int(part) for part in respacing.split(",")]
    return {"skip": "respace" if len(counts) == 1 else f"respace:{respacing}", "num_steps": sum(counts)}


@dataclasses.dataclass(frozen=True)
class ClassifierGuidance:
    """A noisy classifier ready to guide: ``cond_fn(x, t, params, labels, scale)`` of
    :func:`ddim_jax.guidance.classifier_cond_fn`, its params, the scale, its number of classes,
    where it was loaded from and ``fingerprint``, the sha256 of its params
    (:func:`ddim_jax.io.checksums.tree_checksum`)."""

    cond_fn: Any
    params: Any
    scale: float
    num_classes: int
    path: str = ""
    fingerprint: str = ""

    @property
    def description(self) -> str:
        return f"classifier {self.path} scale {self.scale:g}"

    def at_scale(self, scale: float) -> ClassifierGuidance:
        """The same classifier at another guidance scale (the scale is a traced argument of
        ``sample``: no recompilation)."""
        return dataclasses.replace(self, scale=float(scale))


def _load(path: str, what: str):
    try:
        return load_adm(path)
    except pretrained.PretrainedError as error:
        raise SampleError(f"cannot load {what} {path!r}: {error}") from error


def adm_model_fields(path: str) -> dict[str, Any]:
    """The :class:`~ddim_jax.generation.loading.LoadedModel` fields of a converted ADM UNet directory."""
    model, params, schedule = _load(path, "ADM model")
    if isinstance(model, ADMClassifier):
        raise SampleError(f"{path!r} holds a classifier; pass it as --classifier and a UNet as --pretrained")
    size = int(read_adm_config(path)["image_size"])
    try:
        defaults = respacing_defaults(schedule["timestep_respacing"])
    except ValueError:
        raise SampleError(f"{path!r}: timestep_respacing {schedule['timestep_respacing']!r} is neither 'ddimN' nor "
                          "comma-separated section counts") from None
    return dict(
        model=model, params=params, alphas_cumprod=alphas_cumprod_from_betas(schedule["betas"]),
        image_shape=(size, size, int(model.in_channels)), prediction_type="eps",
        description=f"ADM {path}", defaults={"clip_x0": True, **defaults},
        rederive_eps=True, fingerprint=tree_checksum(params),
        output_type="learned_range" if schedule["learn_sigma"] else "fixed",
        timestep_scale=timestep_scale(schedule["rescale_timesteps"], int(schedule["num_timesteps"])),
        null_class=False,
    )


def load_classifier(path: str, scale: float, num_timesteps: int) -> ClassifierGuidance:
    """A converted ADM classifier directory as :class:`ClassifierGuidance` at ``scale`` for a model of
    ``num_timesteps`` training steps (the classifier's own diffusion steps must agree)."""
    model, params, schedule = _load(path, "classifier")
    if not isinstance(model, ADMClassifier):
        raise SampleError(f"--classifier {path!r} holds a diffusion UNet, not a classifier")
    if int(schedule["num_timesteps"]) != num_timesteps:
        raise SampleError(f"--classifier {path!r} was trained on {schedule['num_timesteps']} timesteps, the model on "
                          f"{num_timesteps}")
    logits_fn = ADMLogitsFn(model, timestep_scale(schedule["rescale_timesteps"], num_timesteps))
    return ClassifierGuidance(classifier_cond_fn(logits_fn), params, float(scale), int(model.out_channels),
                              path=path, fingerprint=tree_checksum(params))
