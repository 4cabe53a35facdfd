"""Load published DDPM checkpoints in the diffusers ``UNet2DModel`` format into the Flax UNet.

The DDIM paper's CIFAR-10 / CelebA / LSUN numbers come from the original DDPM checkpoints, which now
circulate as diffusers model directories (``google/ddpm-cifar10-32`` and friends)::

    config.json                            the UNet2DModel config
    diffusion_pytorch_model.safetensors    the weights (or a sharded ``...safetensors.index.json``)
    scheduler_config.json                  betas, T and the prediction type (pipelines: scheduler/)

Pipelines keep the UNet in ``unet/``; both layouts are read. Weights are read with the
``safetensors`` package only: pickled checkpoints (``.bin``, ``.pt``, ``.ckpt``) are refused, because
unpickling runs arbitrary code.

Public API::

    local_dir = resolve_pretrained("google/ddpm-cifar10-32")   # or a local directory (offline)
    model, variables = load_diffusers_unet(local_dir)          # model.apply(variables, x, t)
    schedule = load_diffusers_schedule(local_dir)              # dict(betas, num_timesteps, prediction_type, ...)
    export_pretrained_to_workdir(local_dir, "runs/ddpm_cifar10")   # a regular run workdir

CLI: ``python -m ddim_jax.pretrained --pretrained DIR_OR_HUB_ID --workdir runs/x``.

PyTorch pickles are converted once, in an environment you trust, and never unpickled at load time:
OpenAI's guided-diffusion (ADM) models and classifiers with ``convert-adm`` /
``convert-adm-classifier`` (:mod:`~ddim_jax.pretrained.adm_convert`, loaded with ``load_adm``), the
DDIM authors' ``ckpt.pth`` with ``convert-ddim-authors`` (:mod:`~ddim_jax.pretrained.ddim_authors`,
written as a diffusers directory).

Every mismatch (unknown config option or block type, missing / unexpected / wrongly shaped
weights) raises :class:`PretrainedError` naming the offending entries: nothing is skipped and no
parameter is left at its random initial value.
"""

import importlib

from ddim_jax.pretrained.adm_convert import adm_schedule, convert_adm, load_adm
from ddim_jax.pretrained.ddim_authors import CELEBA_CONFIG, convert_ddim_authors
from ddim_jax.pretrained.files import PICKLE_SUFFIXES, PretrainedError, resolve_pretrained
from ddim_jax.pretrained.schedule import load_diffusers_schedule
from ddim_jax.pretrained.unet_mapping import (
    DDPM_CIFAR10_LAYOUT,
    convert_state_dict,
    image_shape,
    load_diffusers_unet,
    unet_kwargs_from_diffusers_config,
)

__all__ = [
    "DDPM_CIFAR10_LAYOUT",
    "PICKLE_SUFFIXES",
    "PretrainedError",
    "resolve_pretrained",
    "load_diffusers_unet",
    "load_diffusers_schedule",
    "unet_kwargs_from_diffusers_config",
    "convert_state_dict",
    "image_shape",
    "pretrained_run_config",
    "export_pretrained_to_workdir",
    "main",
    "convert_adm",
    "load_adm",
    "adm_schedule",
    "convert_ddim_authors",
    "CELEBA_CONFIG",
]

# The workdir export writes orbax checkpoints (the training stack): imported on first access.
_EXPORT_NAMES = ("export_pretrained_to_workdir", "main", "pretrained_run_config")


def __getattr__(name: str):
    if name in _EXPORT_NAMES:
        return getattr(importlib.import_module("ddim_jax.pretrained.export"), name)
    raise AttributeError(f"module 'ddim_jax.pretrained' has no attribute {name!r}")
