"""Locating and reading a diffusers checkpoint's files: directories, hub ids, JSON, safetensors.

Weights are read with the ``safetensors`` package only: pickled checkpoints (``.bin``, ``.pt``,
``.ckpt``) are refused, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from ddim_jax.errors import UserError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_CONVERT_HINT = (
    "convert it once, in an environment you trust, with "
    "`python -c \"from diffusers import UNet2DModel as M; M.from_pretrained('DIR').save_pretrained('DIR')\"` "
    "(diffusers writes safetensors by default)"
)


class PretrainedError(UserError, ValueError):
    """A pretrained checkpoint cannot be found, read, or mapped onto the Flax UNet."""


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


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as err:
        raise PretrainedError(f"{path} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise PretrainedError(f"{path} is not UTF-8 text (byte {err.start}); it is not a JSON config") from None
    except OSError as err:
        raise PretrainedError(f"cannot read {path}: {err.strerror or err}") from err
    if not isinstance(value, dict):
        raise PretrainedError(f"{path} does not hold a JSON object")
    return value


def find_unet_dir(path: str | os.PathLike) -> str:
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


def weight_files(unet_dir: str) -> list[str]:
    single = os.path.join(unet_dir, WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(unet_dir, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise PretrainedError(f"{index} has no weight_map")
        root = os.path.realpath(unet_dir)
        files = []
        for shard in sorted(set(map(str, weight_map.values()))):
            path = os.path.realpath(os.path.join(unet_dir, shard))
            if os.path.isabs(shard) or os.path.dirname(path) != root:
                raise PretrainedError(f"{index}: weight_map names {shard!r}, which is not a file in the model "
                                      "directory; refusing to read files outside it")
            files.append(path)
        return files
    pickles = sorted(name for name in os.listdir(unet_dir) if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        _refuse_pickle(os.path.join(unet_dir, pickles[0]))
    raise PretrainedError(f"no {WEIGHTS_NAME} (or sharded index) in {unet_dir}")


def read_safetensors(files: list[str]) -> dict[str, np.ndarray]:
    """All tensors of ``files`` as float32 NumPy arrays, keyed by their diffusers names."""
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    for path in files:
        if not os.path.isfile(path):
            raise PretrainedError(f"missing weight shard {path}")
        try:
            with safe_open(path, framework="numpy") as f:
                keys = list(f.keys())
                dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
                not_float = sorted(k for k, dtype in dtypes.items() if dtype not in _FLOAT_DTYPES)
                if not_float:
                    raise PretrainedError(
                        f"{path}: weights must be floating point; {not_float[0]} is {dtypes[not_float[0]]}"
                        + (f" (and {len(not_float) - 1} more)" if len(not_float) > 1 else ""))
                bf16 = [k for k in keys if dtypes[k] == "BF16"]
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
