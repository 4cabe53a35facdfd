"""Reading PyTorch pickles for the one-off converters (never at load time) and preparing their
output directories.

``torch`` is imported inside :func:`load_torch_file` / :func:`torch_state_to_numpy` only, and files
are read with ``torch.load(path, map_location="cpu", weights_only=True)``, which refuses anything
but tensors and plain containers (no arbitrary code runs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ddim_jax.pretrained.files import PretrainedError


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors."""
    try:
        import torch  # only the converters read pickles
    except ImportError:
        raise PretrainedError("converting a PyTorch checkpoint needs PyTorch, which the main install leaves out: "
                              "pip install -e \".[convert]\" (the CPU build is enough)") from None

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PretrainedError(f"no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses other objects; a corrupt file: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PretrainedError(f"cannot read {path} as PyTorch tensors: {type(err).__name__}: {first}") from err


def torch_state_to_numpy(state: Any, what: str) -> dict[str, np.ndarray]:
    """A ``{name: torch.Tensor}`` mapping as NumPy arrays: float16 / float32 / float64 kept,
    bfloat16 -> float32 (NumPy has none), integer tensors kept so that the checks name them."""
    import torch

    if not isinstance(state, Mapping):
        raise PretrainedError(f"{what} does not hold a state dict (name -> tensor) but a {type(state).__name__}")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str))
    if not_tensors:
        raise PretrainedError(f"{what}: entries that are not tensors: {', '.join(not_tensors[:8])}")
    arrays = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        arrays[name] = tensor.contiguous().numpy()
    return arrays


def prepare_out_dir(out_dir: str) -> None:
    """Creates ``out_dir``; refuses one that exists and is not an empty directory."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise PretrainedError(f"{out_dir} exists and is not an empty directory; pick a new output directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise PretrainedError(f"cannot create {out_dir}: {err.strerror or err}") from None
