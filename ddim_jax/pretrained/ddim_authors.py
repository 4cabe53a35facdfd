"""Converting the DDIM authors' own checkpoints (ermongroup/ddim, e.g. their CelebA 64x64 model)
into a diffusers-format directory, which :func:`~ddim_jax.pretrained.load_diffusers_unet` and
``--pretrained`` read.

Their ``ckpt.pth`` is a list ``[model state, optimizer state, epoch, step, EMA state]``; the model
state's names carry the ``module.`` prefix of ``DataParallel``, the EMA state's do not (their
``EMAHelper`` registers the unwrapped module). The last element, the EMA weights the paper samples
from, is converted; a ``module.`` prefix is dropped if present.

Their ``models/diffusion.py`` is the DDPM UNet with these names (levels ``i``, blocks ``j``;
``up.{i}`` is the decoder level at resolution level ``i``, which diffusers stores as
``up_blocks.{L-1-i}``)::

    temb.dense.0 / .1                          time_embedding.linear_1 / linear_2
    conv_in, norm_out, conv_out                conv_in, conv_norm_out, conv_out
    down.{i}.block.{j}.{norm1,conv1,norm2,conv2}  down_blocks.{i}.resnets.{j}.(same)
    ....temb_proj / .nin_shortcut              ....time_emb_proj / .conv_shortcut
    down.{i}.attn.{j}.{norm,q,k,v,proj_out}    down_blocks.{i}.attentions.{j}.{group_norm,to_q,to_k,to_v,to_out.0}
    down.{i}.downsample.conv                   down_blocks.{i}.downsamplers.0.conv
    mid.block_1 / attn_1 / block_2             mid_block.resnets.0 / attentions.0 / resnets.1
    up.{i}.block.{j} / attn.{j} / upsample.conv   up_blocks.{L-1-i}.resnets.{j} / attentions.{j} / upsamplers.0.conv

Their attention projections are 1x1 convs (``[C, C, 1, 1]``), diffusers' are linears (``[C, C]``).
The architecture otherwise is exactly the project's :class:`~ddim_jax.models.UNet` with DDPM's
settings (GroupNorm eps 1e-6, sin-first embedding with ``log(10000) / (half - 1)``, one attention
head, downsampling padded at the bottom / right).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from ddim_jax.pretrained.files import WEIGHTS_NAME, PretrainedError
from ddim_jax.pretrained.torch_files import load_torch_file, prepare_out_dir, torch_state_to_numpy
from ddim_jax.pretrained.unet_mapping import load_diffusers_unet

# The paper's CelebA 64x64 model: the authors' configs/celeba.yml.
CELEBA_CONFIG: dict[str, Any] = dict(
    image_size=64, channels=3, ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
    dropout=0.1, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000,
)
_RESNET = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
           "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_FIXED = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
          "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out",
          "mid.block_1": "mid_block.resnets.0", "mid.attn_1": "mid_block.attentions.0",
          "mid.block_2": "mid_block.resnets.1"}
_LEVEL = re.compile(r"^(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(.+)$")
_RESAMPLE = re.compile(r"^(down|up)\.(\d+)\.(downsample|upsample)\.conv$")


def diffusers_name(name: str, num_levels: int) -> str:
    """The diffusers ``UNet2DModel`` name of one of the authors' parameters (``...weight``/``bias``)."""
    module, _, leaf = name.rpartition(".")
    if module in _FIXED:
        return f"{_FIXED[module]}.{leaf}"
    prefix, _, layer = module.rpartition(".")
    if prefix in _FIXED:  # inside a mid-block resnet / attention
        table = _ATTN if "attn" in prefix else _RESNET
        if layer in table:
            return f"{_FIXED[prefix]}.{table[layer]}.{leaf}"
    match = _LEVEL.match(module)
    if match:
        side, level, kind, index, layer = match.groups()
        table = _RESNET if kind == "block" else _ATTN
        if layer in table:
            block = int(level) if side == "down" else num_levels - 1 - int(level)
            group = "resnets" if kind == "block" else "attentions"
            return f"{side}_blocks.{block}.{group}.{index}.{table[layer]}.{leaf}"
    match = _RESAMPLE.match(module)
    if match and (match.group(1) == "down") == (match.group(3) == "downsample"):
        side, level = match.group(1), int(match.group(2))
        block = level if side == "down" else num_levels - 1 - level
        return f"{side}_blocks.{block}.{side}samplers.0.conv.{leaf}"
    raise PretrainedError(f"unexpected weight {name} (not a name of the authors' models/diffusion.py Model)")


def convert_authors_state(state: Mapping[str, np.ndarray], num_levels: int) -> dict[str, np.ndarray]:
    """The authors' state dict (``module.`` prefix optional) under diffusers names and layouts."""
    names = list(state)
    if names and all(n.startswith("module.") for n in names):
        state = {n[len("module."):]: v for n, v in state.items()}
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        new = diffusers_name(name, num_levels)
        if value.ndim == 4 and value.shape[2:] == (1, 1) and re.search(r"\.(to_[qkv]|to_out\.0)\.weight$", new):
            value = value[:, :, 0, 0]  # 1x1 conv -> linear
        out[new] = np.ascontiguousarray(value)
    return out


def unet2d_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusers ``UNet2DModel`` config of the authors' model with ``config`` (their yml keys)."""
    size, levels = int(config["image_size"]), len(config["ch_mult"])
    attn = [size >> level in tuple(config["attn_resolutions"]) for level in range(levels)]
    return {
        "_class_name": "UNet2DModel", "sample_size": size, "in_channels": int(config["channels"]),
        "out_channels": int(config["channels"]),
        "block_out_channels": [int(config["ch"]) * int(m) for m in config["ch_mult"]],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "layers_per_block": int(config["num_res_blocks"]), "norm_num_groups": 32, "norm_eps": 1e-6,
        "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "attention_head_dim": None,
        "dropout": float(config["dropout"]), "act_fn": "silu", "time_embedding_type": "positional",
        "center_input_sample": False, "mid_block_scale_factor": 1, "resnet_time_scale_shift": "default",
    }


def scheduler_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Their betas; ``clip_sample`` false because their ``generalized_steps`` does not clip x0."""
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": int(config["num_diffusion_timesteps"]),
            "beta_schedule": config["beta_schedule"], "beta_start": float(config["beta_start"]),
            "beta_end": float(config["beta_end"]), "prediction_type": "epsilon", "clip_sample": False}


def _ema_state(states: Any, path: str) -> Any:
    if isinstance(states, Mapping):  # a bare state dict
        return states
    if isinstance(states, Sequence) and states and isinstance(states[-1], Mapping):
        return states[-1]
    raise PretrainedError(f"{path} is not the authors' checkpoint: expected a list ending in the EMA state dict, "
                          f"got a {type(states).__name__}")


def convert_ddim_authors(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike,
                         config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes the authors' ``ckpt.pth`` as a diffusers directory (config.json, safetensors weights,
    scheduler_config.json) that ``--pretrained out_dir`` samples from.

    Args:
      ckpt_path: their ``ckpt.pth`` (read with ``torch.load(weights_only=True)``).
      out_dir: a new or empty directory.
      config: their model / diffusion settings (keys of :data:`CELEBA_CONFIG`, which is the default).

    Returns:
      The ``UNet2DModel`` config written.

    Raises:
      PretrainedError: unreadable file, an unexpected name, or (from the check by
        :func:`~ddim_jax.pretrained.load_diffusers_unet`) a missing or wrongly shaped weight.
    """
    ckpt_path, out_dir = os.fspath(ckpt_path), os.fspath(out_dir)
    config = {**CELEBA_CONFIG, **(config or {})}
    state = torch_state_to_numpy(_ema_state(load_torch_file(ckpt_path), ckpt_path), ckpt_path)
    not_float = sorted(n for n, v in state.items() if not np.issubdtype(v.dtype, np.floating))
    if not_float:
        raise PretrainedError(f"{ckpt_path}: non-float tensors: {', '.join(not_float[:8])}")
    weights = convert_authors_state(state, len(config["ch_mult"]))
    unet_config = unet2d_config(config)
    prepare_out_dir(out_dir)
    save_file(weights, os.path.join(out_dir, WEIGHTS_NAME))
    for name, value in (("config.json", unet_config), ("scheduler_config.json", scheduler_config(config))):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2)
    try:
        load_diffusers_unet(out_dir)  # every weight present with the right shape, nothing extra
    except PretrainedError as err:
        for name in (WEIGHTS_NAME, "config.json", "scheduler_config.json"):
            os.remove(os.path.join(out_dir, name))
        raise PretrainedError(f"{ckpt_path} does not match the configured model: {err}") from None
    return unet_config
