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

Every mismatch (unknown config option or block type, missing / unexpected / wrongly shaped
weights) raises :class:`PretrainedError` naming the offending entries: nothing is skipped and no
parameter is left at its random initial value.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax.models.unet import UNet
from ddim_jax.schedules import make_betas

__all__ = [
    "PretrainedError",
    "resolve_pretrained",
    "load_diffusers_unet",
    "load_diffusers_schedule",
    "unet_kwargs_from_diffusers_config",
    "convert_state_dict",
    "image_shape",
    "pretrained_run_config",
    "export_pretrained_to_workdir",
]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# The diffusers UNet2DModel keyword arguments of the published google/ddpm-cifar10-32 model
# (Ho et al.'s CIFAR-10 UNet, 35,746,307 parameters): ``diffusers.UNet2DModel(**DDPM_CIFAR10_LAYOUT)``.
DDPM_CIFAR10_LAYOUT = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
    norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
    dropout=0.1,
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_CONVERT_HINT = (
    "convert it once, in an environment you trust, with "
    "`python -c \"from diffusers import UNet2DModel as M; M.from_pretrained('DIR').save_pretrained('DIR')\"` "
    "(diffusers writes safetensors by default)"
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

# diffusers scheduler beta_schedule -> ddim_jax.schedules.make_betas kind (same formulas).
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
_PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 2e-2,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "clip_sample": True,
}

# Module lists in diffusers' state dict ("resnets.0") are flat names in Flax ("resnets_0").
_LIST_MODULE = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|to_out)_(\d+)$")
# Attention weights as diffusers < 0.15 named them (diffusers renames them on load too).
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class PretrainedError(ValueError):
    """A pretrained checkpoint cannot be found, read, or mapped onto the Flax UNet."""


# ---------------------------------------------------------------------------------------------
# Locating the files
# ---------------------------------------------------------------------------------------------


def _refuse_pickle(path: str) -> None:
    raise PretrainedError(
        f"refusing to load {path}: it is a pickle, and unpickling can run arbitrary code; only "
        f"safetensors weights are read. {_CONVERT_HINT}"
    )


def resolve_pretrained(name_or_path: str | os.PathLike) -> str:
    """A local diffusers model directory for ``name_or_path``.

    A local directory is returned as is (works offline). Anything else that looks like a hub id
    (``owner/name``) is downloaded with ``huggingface_hub.snapshot_download`` (the optional ``hub``
    extra), fetching only JSON and safetensors files.

    Raises:
      PretrainedError: a one-line message for a missing path, a pickle file, a missing
        ``huggingface_hub``, or a failed download.
    """
    name = os.fspath(name_or_path)
    if not name:
        raise PretrainedError("empty pretrained model name")
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    if os.path.isfile(expanded):
        if expanded.endswith(PICKLE_SUFFIXES):
            _refuse_pickle(expanded)
        if expanded.endswith(".safetensors"):
            return os.path.abspath(os.path.dirname(expanded))
        raise PretrainedError(f"{name} is a file; pass the diffusers model directory that holds config.json")
    # "runs/x" with an existing "runs/" is a mistyped local path, not a hub id: do not go online.
    first_component = name.split("/", 1)[0]
    looks_local = (name.startswith((".", "/", "~")) or name.count("/") > 1
                   or ("/" in name and os.path.isdir(first_component)))
    if looks_local or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise PretrainedError(f"no such directory: {name}")
    try:
        import huggingface_hub
    except ImportError as err:
        raise PretrainedError(
            f"{name} is not a local directory, and downloading it from the Hugging Face Hub needs the "
            f"optional extra: pip install 'ddim-jax[hub]' (or download it yourself and pass the directory)"
        ) from err
    try:
        return huggingface_hub.snapshot_download(name, allow_patterns=["*.json", "*.safetensors"])
    except Exception as err:  # any download failure becomes a one-line user error (cause chained)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PretrainedError(f"could not download {name} from the Hugging Face Hub: {type(err).__name__}: "
                              f"{first_line}") from err


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as err:
        raise PretrainedError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise PretrainedError(f"{path} does not hold a JSON object")
    return value


def _unet_dir(path: str | os.PathLike) -> str:
    """The directory holding the UNet's config.json: ``path`` itself or ``path/unet`` (pipelines)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        if os.path.isfile(path) and path.endswith(PICKLE_SUFFIXES):
            _refuse_pickle(path)
        raise PretrainedError(f"no such directory: {path}")
    for candidate in (os.path.join(path, "unet"), path):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise PretrainedError(f"{path} is not a diffusers model directory: no config.json in it or in {path}/unet")


def _weight_files(unet_dir: str) -> list[str]:
    single = os.path.join(unet_dir, WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(unet_dir, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise PretrainedError(f"{index} has no weight_map")
        return [os.path.join(unet_dir, shard) for shard in sorted(set(weight_map.values()))]
    pickles = sorted(name for name in os.listdir(unet_dir) if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        _refuse_pickle(os.path.join(unet_dir, pickles[0]))
    raise PretrainedError(f"no {WEIGHTS_NAME} (or sharded index) in {unet_dir}")


def _read_safetensors(files: list[str]) -> dict[str, np.ndarray]:
    """All tensors of ``files`` as float32 NumPy arrays, keyed by their diffusers names."""
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    for path in files:
        if not os.path.isfile(path):
            raise PretrainedError(f"missing weight shard {path}")
        try:
            with safe_open(path, framework="numpy") as f:
                keys = list(f.keys())
                bf16 = [k for k in keys if f.get_slice(k).get_dtype() == "BF16"]
                for key in keys:
                    if key in tensors:
                        raise PretrainedError(f"weight {key} appears in more than one shard")
                    if key not in bf16:
                        tensors[key] = np.asarray(f.get_tensor(key), np.float32)
            if bf16:  # NumPy has no bfloat16; read those through JAX (ml_dtypes) and upcast
                with safe_open(path, framework="flax") as f:
                    for key in bf16:
                        tensors[key] = np.asarray(f.get_tensor(key), np.float32)
        except PretrainedError:
            raise
        except Exception as err:  # a corrupt or non-safetensors file: one-line error, cause chained
            raise PretrainedError(f"cannot read {path} as safetensors: {type(err).__name__}: {err}") from err
    return tensors


# ---------------------------------------------------------------------------------------------
# Config mapping
# ---------------------------------------------------------------------------------------------


def _require_value(config: Mapping[str, Any], key: str, allowed: tuple, what: str = "") -> None:
    if config[key] not in allowed:
        raise PretrainedError(
            f"unsupported UNet2DModel config: {key}={config[key]!r} (supported: "
            f"{', '.join(repr(a) for a in allowed)}){what}"
        )


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
    for key in ("class_embed_type", "num_class_embeds"):
        if config[key] is not None:
            raise PretrainedError(f"unsupported UNet2DModel config: {key}={config[key]!r} (class conditioning)")

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
    num_levels = len(channels)
    down_attn = [_DOWN_BLOCKS[b] for b in down]
    up_attn = [_UP_BLOCKS[b] for b in reversed(up)]  # up block i works at level num_levels - 1 - i
    if down_attn != up_attn:
        raise PretrainedError(
            f"attention must sit at the same resolutions on the way down and up; got down_block_types="
            f"{down} and up_block_types={up}"
        )

    sample_size = config["sample_size"]
    if isinstance(sample_size, (list, tuple)):
        if len(sample_size) != 2 or sample_size[0] != sample_size[1]:
            raise PretrainedError(f"only square images are supported, got sample_size={sample_size}")
        sample_size = sample_size[0]
    if sample_size is not None:
        sample_size = int(sample_size)
    if any(down_attn) and sample_size is None:
        raise PretrainedError("the config has attention blocks but no sample_size, so their resolution is unknown")
    attn_resolutions = tuple(sample_size >> level for level in range(num_levels) if down_attn[level])

    time_dim = config["time_embedding_dim"]
    if time_dim is not None and int(time_dim) != 4 * ch:
        raise PretrainedError(f"unsupported time_embedding_dim={time_dim} (only 4 * block_out_channels[0] = {4 * ch})")
    groups = int(config["norm_num_groups"])
    if config["attn_norm_num_groups"] not in (None, groups):
        raise PretrainedError(f"unsupported attn_norm_num_groups={config['attn_norm_num_groups']} "
                              f"(only equal to norm_num_groups={groups})")

    return dict(
        ch=ch,
        ch_mult=tuple(c // ch for c in channels),
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
        sample_size=sample_size,
        in_channels=int(config["in_channels"]),
    )


# ---------------------------------------------------------------------------------------------
# Weight mapping
# ---------------------------------------------------------------------------------------------


def _diffusers_name(flax_path: tuple[str, ...]) -> str:
    modules = [_LIST_MODULE.sub(r"\1.\2", name) for name in flax_path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[flax_path[-1]]
    return ".".join(modules + [leaf])


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # conv kernel: Flax [kh, kw, in, out] <- PyTorch [out, in, kh, kw]
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # dense kernel: Flax [in, out] <- PyTorch [out, in]
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(array: np.ndarray) -> np.ndarray:
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
    x = jax.ShapeDtypeStruct((1, sample_size, sample_size, in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    abstract = jax.eval_shape(lambda x, t: model.init({"params": jax.random.key(0)}, x, t), x, t)["params"]
    expected = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        flax_path = tuple(entry.key for entry in path)
        expected[_diffusers_name(flax_path)] = (flax_path, tuple(leaf.shape))

    state = _rename_legacy_attention(dict(state))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{name} (checkpoint {tuple(state[name].shape)}, model expects {_to_torch_shape(shape)})"
        for name, (_, shape) in expected.items()
        if name in state and tuple(state[name].shape) != _to_torch_shape(shape)
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

    flat = {flax_path: _to_flax(state[name]) for name, (flax_path, _) in expected.items()}
    params: dict = {}
    for flax_path, value in flat.items():
        node = params
        for name in flax_path[:-1]:
            node = node.setdefault(name, {})
        node[flax_path[-1]] = jnp.asarray(value, jnp.float32)
    return params


def _load_unet_config(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    unet_dir = _unet_dir(path)
    return unet_dir, unet_kwargs_from_diffusers_config(_read_json(os.path.join(unet_dir, "config.json")))


def load_diffusers_unet(path: str | os.PathLike) -> tuple[UNet, dict]:
    """Loads a diffusers ``UNet2DModel`` directory (or a pipeline directory with ``unet/``).

    Returns:
      ``(model, variables)`` with ``model.apply(variables, x, t)`` taking ``x`` float32
      ``[B, H, W, C]`` (NHWC, the checkpoint's ``sample_size``) and ``t`` int ``[B]`` and returning
      the network output (noise, for ``prediction_type="eps"``) in the same layout.

    Raises:
      PretrainedError: for pickle weights, unsupported configs and any weight mismatch.
    """
    unet_dir, kwargs = _load_unet_config(path)
    sample_size, in_channels = kwargs.pop("sample_size"), kwargs.pop("in_channels")
    model = UNet(**kwargs)
    state = _read_safetensors(_weight_files(unet_dir))
    if sample_size is None:  # no attention outside the mid block: any size works for the shapes
        sample_size = 2 ** (len(model.ch_mult) - 1)
    params = convert_state_dict(state, model, sample_size, in_channels)
    return model, {"params": params}


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(sample_size, in_channels)`` of a diffusers UNet directory (images are square)."""
    _, kwargs = _load_unet_config(path)
    if kwargs["sample_size"] is None:
        raise PretrainedError(f"{path}: the UNet config has no sample_size")
    return kwargs["sample_size"], kwargs["in_channels"]


# ---------------------------------------------------------------------------------------------
# Scheduler
# ---------------------------------------------------------------------------------------------


def load_diffusers_schedule(path: str | os.PathLike) -> dict[str, Any]:
    """The noise schedule shipped with a diffusers checkpoint.

    Reads ``scheduler/scheduler_config.json`` (pipelines) or ``scheduler_config.json``; missing
    keys take the diffusers ``DDPMScheduler`` defaults (linear betas 1e-4 .. 0.02, T = 1000,
    epsilon prediction). Without any scheduler config the DDPM schedule is assumed.

    Returns:
      dict with ``betas`` (np.float64 ``[T]``), ``num_timesteps`` (T), ``prediction_type``
      (``"eps"``, ``"x0"`` or ``"v"``), ``beta_schedule`` (the :func:`~ddim_jax.make_betas` kind,
      or ``None`` for explicit ``trained_betas``), ``beta_start``, ``beta_end`` and ``clip_sample``.

    Raises:
      PretrainedError: for an unknown beta schedule or prediction type, or zero-terminal-SNR
        rescaling (not supported).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise PretrainedError(f"no such directory: {path}")
    raw: dict[str, Any] = {}
    for candidate in (os.path.join(path, "scheduler", "scheduler_config.json"),
                      os.path.join(path, "scheduler_config.json")):
        if os.path.isfile(candidate):
            raw = _read_json(candidate)
            break
    config = {**_SCHEDULER_DEFAULTS, **{k: v for k, v in raw.items() if k in _SCHEDULER_DEFAULTS}}
    if config["rescale_betas_zero_snr"]:
        raise PretrainedError("unsupported scheduler option rescale_betas_zero_snr=True")
    if config["prediction_type"] not in _PREDICTION_TYPES:
        raise PretrainedError(f"unsupported scheduler prediction_type={config['prediction_type']!r} "
                              f"(supported: {', '.join(_PREDICTION_TYPES)})")
    num_timesteps = int(config["num_train_timesteps"])
    beta_start, beta_end = float(config["beta_start"]), float(config["beta_end"])
    if config["trained_betas"] is not None:
        betas = np.asarray(config["trained_betas"], np.float64)
        if betas.ndim != 1 or betas.size != num_timesteps:
            raise PretrainedError(f"trained_betas has shape {betas.shape}, expected ({num_timesteps},)")
        kind = None
    else:
        if config["beta_schedule"] not in _BETA_SCHEDULES:
            raise PretrainedError(f"unsupported scheduler beta_schedule={config['beta_schedule']!r} "
                                  f"(supported: {', '.join(_BETA_SCHEDULES)})")
        kind = _BETA_SCHEDULES[config["beta_schedule"]]
        try:
            betas = make_betas(kind, num_timesteps, beta_start, beta_end)
        except ValueError as err:
            raise PretrainedError(f"bad scheduler config: {err}") from err
    if not np.all((betas > 0) & (betas <= 1)):
        raise PretrainedError("scheduler betas must lie in (0, 1]")
    return dict(
        betas=betas,
        num_timesteps=num_timesteps,
        prediction_type=_PREDICTION_TYPES[config["prediction_type"]],
        beta_schedule=kind,
        beta_start=beta_start,
        beta_end=beta_end,
        clip_sample=bool(config["clip_sample"]),
    )


# ---------------------------------------------------------------------------------------------
# Export as a run workdir
# ---------------------------------------------------------------------------------------------


def _default_dataset(channels: int, size: int) -> str:
    if channels == 1:
        return "mnist"
    return "cifar10" if size == 32 else "celeb_a"


def pretrained_run_config(path: str | os.PathLike, data_name: str | None = None):
    """A full run config (``ml_collections.ConfigDict``) for a converted checkpoint.

    Starts from the project's default (CIFAR-10 DDPM) recipe and sets ``data.image_size``,
    ``data.channels``, every ``model.*`` key and the ``diffusion.*`` schedule from the checkpoint.
    ``data_name`` is the dataset further training would read (default: ``mnist`` for one channel,
    ``cifar10`` for 32x32 RGB, ``celeb_a`` otherwise); sampling does not use it.
    """
    from ddim_jax import config_utils

    path = os.fspath(path)
    _, kwargs = _load_unet_config(path)
    schedule = load_diffusers_schedule(path)
    if kwargs["sample_size"] is None:
        raise PretrainedError("the UNet config has no sample_size, so the run's image size is unknown")
    if kwargs["in_channels"] != kwargs["out_ch"]:
        raise PretrainedError(f"a run needs in_channels == out_channels, got {kwargs['in_channels']} and "
                              f"{kwargs['out_ch']}")
    if schedule["beta_schedule"] is None:
        raise PretrainedError("the scheduler has explicit trained_betas, which a run config cannot describe")

    config = config_utils.default_config()
    size, channels = kwargs["sample_size"], kwargs["in_channels"]
    config.data.name = data_name or _default_dataset(channels, size)
    config.data.image_size = size
    config.data.channels = channels
    model = config.model
    for key in ("ch", "num_res_blocks", "dropout", "resamp_with_conv", "num_groups", "norm_eps"):
        model[key] = kwargs[key]
    model.ch_mult = tuple(kwargs["ch_mult"])
    model.attn_resolutions = tuple(kwargs["attn_resolutions"])
    model.flip_sin_to_cos = kwargs["flip_sin_to_cos"]
    model.freq_shift = kwargs["freq_shift"]
    model.downsample_padding = kwargs["downsample_padding"]
    model.attn_head_dim = kwargs["attn_head_dim"]
    config.diffusion.beta_schedule = schedule["beta_schedule"]
    config.diffusion.beta_start = schedule["beta_start"]
    config.diffusion.beta_end = schedule["beta_end"]
    config.diffusion.num_timesteps = schedule["num_timesteps"]
    config.diffusion.prediction_type = schedule["prediction_type"]
    config.sampling.clip_x0 = schedule["clip_sample"]
    config.sampling.rederive_eps = False  # diffusers' DDIMScheduler keeps the model's eps when clipping
    return config_utils.validate_config(config)


def export_pretrained_to_workdir(name_or_path: str | os.PathLike, workdir: str | os.PathLike,
                                 data_name: str | None = None):
    """Writes a converted checkpoint as a regular run workdir (step-0 checkpoint + config).

    ``sample.py --workdir WORKDIR`` samples from it, and ``train.py --workdir WORKDIR`` with the
    returned config fine-tunes it.

    Returns:
      The run config that was written.
    """
    from ddim_jax.checkpointing import export_workdir

    local_dir = resolve_pretrained(name_or_path)
    config = pretrained_run_config(local_dir, data_name=data_name)
    _, variables = load_diffusers_unet(local_dir)
    export_workdir(os.path.abspath(os.fspath(workdir)), config, variables["params"])
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ddim_jax.pretrained",
        description="Convert a diffusers UNet2DModel checkpoint into a ddim-jax run workdir.",
    )
    parser.add_argument("--pretrained", required=True, help="local diffusers directory or Hugging Face Hub id")
    parser.add_argument("--workdir", required=True, help="new (empty) run directory to write")
    parser.add_argument("--data_name", default=None,
                        help="dataset for further training (default: from the image size and channels)")
    args = parser.parse_args(argv)
    try:
        config = export_pretrained_to_workdir(args.pretrained, args.workdir, data_name=args.data_name)
    except ValueError as err:  # PretrainedError, CheckpointError, ConfigError: one-line messages
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.workdir}: {config.data.image_size}x{config.data.image_size}x{config.data.channels} "
          f"UNet (ch={config.model.ch}, ch_mult={tuple(config.model.ch_mult)}), "
          f"{config.diffusion.beta_schedule} betas, T={config.diffusion.num_timesteps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
