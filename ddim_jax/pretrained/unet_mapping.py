"""Mapping a diffusers ``UNet2DModel`` onto the Flax UNet: its config onto the UNet's keyword
arguments, and its state dict onto the Flax params (NCHW / [out, in] -> NHWC / [in, out]).

Class-conditional checkpoints (``num_class_embeds=N``, ``class_embed_type=None``: an ``N``-row
``nn.Embedding`` added to the time embedding) become ``UNet(num_classes=N - 1)``: our table has one
row per class plus the null class as its LAST row, and diffusers' has no declared null row, so
its last row is read as the null class. The forward pass is identical for every label
``0 .. N-1``; classifier-free guidance (``--guidance`` other than 1) only makes sense for a
checkpoint that was trained with its last class as the dropped label, as ours are (a model
exported from this project has ``num_class_embeds = num_classes + 1``). For a checkpoint trained
without one, sample with ``--guidance 1`` and labels ``0 .. N-2``.

Every mismatch (unknown config option or block type, missing / unexpected / wrongly shaped
weights) raises :class:`PretrainedError` naming the offending entries: nothing is skipped and no
parameter is left at its random initial value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax.models import abstract_params
from ddim_jax.models.unet import UNet
from ddim_jax.pretrained.files import PretrainedError, find_unet_dir, read_json, read_safetensors, weight_files

# The diffusers UNet2DModel keyword arguments of the published google/ddpm-cifar10-32 model
# (Ho et al.'s CIFAR-10 UNet, 35,746,307 parameters): ``diffusers.UNet2DModel(**DDPM_CIFAR10_LAYOUT)``.
DDPM_CIFAR10_LAYOUT = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
    norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
    dropout=0.1,
)

# UNet2DModel's constructor defaults: a config.json written by an older diffusers omits the keys
# added later, and diffusers then uses these values.
_UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,  # only used by time_embedding_type="learned", which is refused
}
_DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> has attention
_UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}

# Module lists in diffusers' state dict ("resnets.0") are flat names in Flax ("resnets_0").
_LIST_MODULE = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|to_out)_(\d+)$")
# Attention weights as diffusers < 0.15 named them (diffusers renames them on load too).
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _require_value(config: Mapping[str, Any], key: str, allowed: tuple, what: str = "") -> None:
    if config[key] not in allowed:
        raise PretrainedError(
            f"unsupported UNet2DModel config: {key}={config[key]!r} (supported: "
            f"{', '.join(repr(a) for a in allowed)}){what}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_types(config: Mapping[str, Any]) -> None:
    """Type and range checks of the keys the mapping reads, each a one-line PretrainedError."""
    def bad(key: str, expected: str) -> PretrainedError:
        return PretrainedError(f"config.json: {key} must be {expected}, got {config[key]!r}")

    for key in ("in_channels", "out_channels", "layers_per_block", "norm_num_groups"):
        if not _is_int(config[key]) or config[key] < 1:
            raise bad(key, "a positive integer")
    for key in ("down_block_types", "up_block_types"):
        if not isinstance(config[key], (list, tuple)) or not all(isinstance(v, str) for v in config[key]):
            raise bad(key, "a list of block type names")
    channels = config["block_out_channels"]
    if (not isinstance(channels, (list, tuple)) or not channels
            or not all(_is_int(c) and c >= 1 for c in channels)):
        raise bad("block_out_channels", "a non-empty list of positive integers")
    size = config["sample_size"]
    sizes = size if isinstance(size, (list, tuple)) else [size]
    if size is not None and (not sizes or not all(_is_int(v) and v >= 1 for v in sizes)):
        raise bad("sample_size", "a positive integer (or a pair of them)")
    for key in ("time_embedding_dim", "attention_head_dim", "attn_norm_num_groups"):
        if config[key] is not None and (not _is_int(config[key]) or config[key] < 1):
            raise bad(key, "a positive integer or null")
    if not _is_number(config["dropout"]) or not 0.0 <= config["dropout"] < 1.0:
        raise bad("dropout", "a number in [0, 1)")
    if not _is_number(config["norm_eps"]) or not config["norm_eps"] > 0:
        raise bad("norm_eps", "a positive number")
    if not _is_number(config["freq_shift"]):
        raise bad("freq_shift", "a number")
    if not isinstance(config["flip_sin_to_cos"], bool):
        raise bad("flip_sin_to_cos", "true or false")
    if any(c % config["norm_num_groups"] for c in channels):
        raise PretrainedError(f"config.json: block_out_channels {list(channels)} are not all divisible by "
                              f"norm_num_groups={config['norm_num_groups']}")


def unet_kwargs_from_diffusers_config(raw_config: Mapping[str, Any]) -> dict[str, Any]:
    """Maps a diffusers ``UNet2DModel`` ``config.json`` onto :class:`~ddim_jax.models.UNet` kwargs.

    Supported: the DDPM family (``DownBlock2D`` / ``AttnDownBlock2D`` / ``UpBlock2D`` /
    ``AttnUpBlock2D``, positional time embedding, conv resampling, ``UNetMidBlock2D``). Everything
    else is refused with a message naming the option.

    Returns:
      UNet kwargs, plus the keys ``"sample_size"`` and ``"in_channels"`` (not UNet fields).
    """
    class_name = raw_config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise PretrainedError(f"expected a UNet2DModel config, got _class_name={class_name!r}")
    unknown = sorted(k for k in raw_config if not k.startswith("_") and k not in _UNET2D_DEFAULTS)
    if unknown:
        raise PretrainedError(f"unsupported UNet2DModel config keys: {', '.join(unknown)}")
    config = {**_UNET2D_DEFAULTS, **{k: v for k, v in raw_config.items() if not k.startswith("_")}}
    _check_types(config)

    _check_supported_options(config)
    ch, ch_mult, down_attn = _levels(config)
    sample_size = _square_size(config["sample_size"])
    if any(down_attn) and sample_size is None:
        raise PretrainedError("the config has attention blocks but no sample_size, so their resolution is unknown")
    attn_resolutions = tuple(sample_size >> level for level in range(len(ch_mult)) if down_attn[level])
    num_class_embeds = config["num_class_embeds"]
    groups = int(config["norm_num_groups"])

    return dict(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=int(config["layers_per_block"]),
        attn_resolutions=attn_resolutions,
        dropout=float(config["dropout"]),
        resamp_with_conv=True,
        out_ch=int(config["out_channels"]),
        num_groups=groups,
        norm_eps=float(config["norm_eps"]),
        flip_sin_to_cos=bool(config["flip_sin_to_cos"]),
        freq_shift=float(config["freq_shift"]),
        downsample_padding=int(config["downsample_padding"]),
        attn_head_dim=None if config["attention_head_dim"] is None else int(config["attention_head_dim"]),
        num_classes=0 if num_class_embeds is None else int(num_class_embeds) - 1,
        sample_size=sample_size,
        in_channels=int(config["in_channels"]),
    )


# ---------------------------------------------------------------------------------------------
# Weight mapping
# ---------------------------------------------------------------------------------------------



def _check_supported_options(config: Mapping[str, Any]) -> None:
    """Refuses every option outside the DDPM family, naming it."""
    _require_value(config, "time_embedding_type", ("positional",))
    _require_value(config, "center_input_sample", (False,))
    _require_value(config, "mid_block_type", ("UNetMidBlock2D",))
    _require_value(config, "mid_block_scale_factor", (1, 1.0))
    _require_value(config, "downsample_type", ("conv",))
    _require_value(config, "upsample_type", ("conv",))
    _require_value(config, "act_fn", ("silu", "swish"))
    _require_value(config, "resnet_time_scale_shift", ("default",))
    _require_value(config, "add_attention", (True,))
    _require_value(config, "downsample_padding", (0, 1))
    if config["class_embed_type"] is not None:
        raise PretrainedError(f"unsupported UNet2DModel config: class_embed_type={config['class_embed_type']!r} "
                              "(only None: an nn.Embedding of num_class_embeds rows)")
    num_class_embeds = config["num_class_embeds"]
    if num_class_embeds is not None and int(num_class_embeds) < 2:
        raise PretrainedError(f"unsupported UNet2DModel config: num_class_embeds={num_class_embeds} (need at least "
                              "2: the classes and, as the last row, the null class of classifier-free guidance)")
    ch = int(config["block_out_channels"][0]) if config["block_out_channels"] else None
    time_dim = config["time_embedding_dim"]
    if ch is not None and time_dim is not None and int(time_dim) != 4 * ch:
        raise PretrainedError(f"unsupported time_embedding_dim={time_dim} (only 4 * block_out_channels[0] = {4 * ch})")
    groups = int(config["norm_num_groups"])
    if config["attn_norm_num_groups"] not in (None, groups):
        raise PretrainedError(f"unsupported attn_norm_num_groups={config['attn_norm_num_groups']} "
                              f"(only equal to norm_num_groups={groups})")


def _levels(config: Mapping[str, Any]) -> tuple[int, tuple[int, ...], list[bool]]:
    """``(ch, ch_mult, attention at each level)`` from the block types and channel counts."""
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    bad = [b for b in down if b not in _DOWN_BLOCKS] + [b for b in up if b not in _UP_BLOCKS]
    if bad:
        raise PretrainedError(
            f"unsupported block types: {', '.join(sorted(set(bad)))} (supported: {', '.join(_DOWN_BLOCKS)}, "
            f"{', '.join(_UP_BLOCKS)})"
        )
    channels = [int(c) for c in config["block_out_channels"]]
    if not (len(down) == len(up) == len(channels) >= 1):
        raise PretrainedError(f"down_block_types ({len(down)}), up_block_types ({len(up)}) and "
                              f"block_out_channels ({len(channels)}) must have the same length")
    ch = channels[0]
    if any(c % ch for c in channels):
        raise PretrainedError(f"block_out_channels {channels} are not multiples of the first entry {ch}")
    down_attn = [_DOWN_BLOCKS[b] for b in down]
    up_attn = [_UP_BLOCKS[b] for b in reversed(up)]  # up block i works at level num_levels - 1 - i
    if down_attn != up_attn:
        raise PretrainedError(
            f"attention must sit at the same resolutions on the way down and up; got down_block_types="
            f"{down} and up_block_types={up}"
        )
    return ch, tuple(c // ch for c in channels), down_attn


def _square_size(sample_size: Any) -> int | None:
    """The side of a square ``sample_size`` (an int or an equal pair), or None."""
    if isinstance(sample_size, (list, tuple)):
        if len(sample_size) != 2 or sample_size[0] != sample_size[1]:
            raise PretrainedError(f"only square images are supported, got sample_size={sample_size}")
        sample_size = sample_size[0]
    return None if sample_size is None else int(sample_size)

def _diffusers_name(flax_path: tuple[str, ...]) -> str:
    modules = [_LIST_MODULE.sub(r"\1.\2", name) for name in flax_path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}[flax_path[-1]]
    return ".".join(modules + [leaf])


def _to_torch_shape(shape: tuple[int, ...], embedding: bool = False) -> tuple[int, ...]:
    if embedding:  # nn.Embed [rows, dim] is nn.Embedding's layout
        return tuple(shape)
    if len(shape) == 4:  # conv kernel: Flax [kh, kw, in, out] <- PyTorch [out, in, kh, kw]
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # dense kernel: Flax [in, out] <- PyTorch [out, in]
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(array: np.ndarray, embedding: bool = False) -> np.ndarray:
    if embedding:
        return array
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return array


def _rename_legacy_attention(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    renamed: dict[str, np.ndarray] = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-2] in _LEGACY_ATTENTION_NAMES and "attentions" in parts:
            key = ".".join(parts[:-2] + [_LEGACY_ATTENTION_NAMES[parts[-2]], parts[-1]])
        if key in renamed:
            raise PretrainedError(f"weight {key} is stored twice (under its current and its legacy name)")
        renamed[key] = value
    return renamed


def _format_names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def convert_state_dict(state: Mapping[str, np.ndarray], model: UNet, sample_size: int, in_channels: int) -> dict:
    """Maps a diffusers state dict onto ``model``'s Flax params (NCHW/[out, in] -> NHWC/[in, out]).

    Raises:
      PretrainedError: listing every missing, unexpected and wrongly shaped weight.
    """
    abstract = abstract_params(model, (sample_size, sample_size, in_channels))
    expected = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        flax_path = tuple(entry.key for entry in path)
        expected[_diffusers_name(flax_path)] = (flax_path, tuple(leaf.shape))

    state = _rename_legacy_attention(dict(state))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    torch_shapes = {name: _to_torch_shape(shape, path[-1] == "embedding") for name, (path, shape) in expected.items()}
    wrong = sorted(
        f"{name} (checkpoint {tuple(state[name].shape)}, model expects {torch_shape})"
        for name, torch_shape in torch_shapes.items()
        if name in state and tuple(state[name].shape) != torch_shape
    )
    problems = []
    if missing:
        problems.append(f"missing weights: {_format_names(missing)}")
    if unexpected:
        problems.append(f"unexpected weights: {_format_names(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_format_names(wrong)}")
    if problems:
        raise PretrainedError("checkpoint does not match the UNet its config describes; " + "; ".join(problems))

    flat = {flax_path: _to_flax(state[name], flax_path[-1] == "embedding") for name, (flax_path, _) in expected.items()}
    params: dict = {}
    for flax_path, value in flat.items():
        node = params
        for name in flax_path[:-1]:
            node = node.setdefault(name, {})
        node[flax_path[-1]] = jnp.asarray(value, jnp.float32)
    return params


def load_unet_config(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    unet_dir = find_unet_dir(path)
    return unet_dir, unet_kwargs_from_diffusers_config(read_json(os.path.join(unet_dir, "config.json")))


def load_diffusers_unet(path: str | os.PathLike) -> tuple[UNet, dict]:
    """Loads a diffusers ``UNet2DModel`` directory (or a pipeline directory with ``unet/``).

    Returns:
      ``(model, variables)`` with ``model.apply(variables, x, t)`` taking ``x`` float32
      ``[B, H, W, C]`` (NHWC, the checkpoint's ``sample_size``) and ``t`` int ``[B]`` and returning
      the network output (noise, for ``prediction_type="eps"``) in the same layout.

    Raises:
      PretrainedError: for pickle weights, unsupported configs and any weight mismatch.
    """
    unet_dir, kwargs = load_unet_config(path)
    sample_size, in_channels = kwargs.pop("sample_size"), kwargs.pop("in_channels")
    model = UNet(**kwargs)
    state = read_safetensors(weight_files(unet_dir))
    if sample_size is None:  # no attention outside the mid block: any size works for the shapes
        sample_size = 2 ** (len(model.ch_mult) - 1)
    params = convert_state_dict(state, model, sample_size, in_channels)
    return model, {"params": params}


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(sample_size, in_channels)`` of a diffusers UNet directory (images are square)."""
    _, kwargs = load_unet_config(path)
    if kwargs["sample_size"] is None:
        raise PretrainedError(f"{path}: the UNet config has no sample_size")
    return kwargs["sample_size"], kwargs["in_channels"]
