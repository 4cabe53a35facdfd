"""Mapping guided-diffusion state dicts (ADM UNet, noisy classifier) onto the Flax modules of
:mod:`ddim_jax.models.adm`, and back.

Names: a Flax module ``input_blocks_1_0`` is the PyTorch module ``input_blocks.1.0`` (every
``_<digits>`` is a list index), and the leaves ``kernel`` / ``scale`` / ``embedding`` are
``weight``. Layouts (PyTorch -> Flax)::

    Conv2d weight      [out, in, kh, kw] -> [kh, kw, in, out]
    Conv1d 1x1 weight  [out, in, 1]      -> [in, out]     (qkv, proj_out, qkv_proj, c_proj)
    Linear weight      [out, in]         -> [in, out]
    Embedding weight   [rows, dim]       -> [rows, dim]
    positional_embedding [C, HW + 1]     -> [HW + 1, C]
    biases, GroupNorm weight / bias      -> unchanged

Every mismatch (missing, unexpected, wrongly shaped or non-float tensors) raises one
:class:`~ddim_jax.pretrained.files.PretrainedError` naming them; nothing is left at its initial value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ddim_jax.models import abstract_params
from ddim_jax.pretrained.files import PretrainedError
from ddim_jax.pretrained.unet_mapping import _format_names

_CONV1D_MODULES = ("qkv", "proj_out", "qkv_proj", "c_proj")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight",
               "positional_embedding": "positional_embedding"}
_INDEX = re.compile(r"_(\d+)")


def torch_name(flax_path: tuple[str, ...]) -> str:
    """``("input_blocks_1_0", "in_layers_2", "kernel")`` -> ``"input_blocks.1.0.in_layers.2.weight"``."""
    return ".".join([_INDEX.sub(r".\1", name) for name in flax_path[:-1]] + [_LEAF_NAMES[flax_path[-1]]])


def _is_conv1d(flax_path: tuple[str, ...]) -> bool:
    return flax_path[-1] == "kernel" and len(flax_path) >= 2 and flax_path[-2] in _CONV1D_MODULES


def torch_shape(flax_path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of the Flax leaf ``flax_path`` of shape ``shape``."""
    if flax_path[-1] in ("embedding",) or len(shape) == 1:
        return tuple(shape)
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if _is_conv1d(flax_path):
        return (shape[1], shape[0], 1)
    return (shape[1], shape[0])  # Linear weight, positional_embedding


def to_flax(flax_path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
    """A PyTorch-layout tensor as the Flax leaf ``flax_path`` (see the table in the module doc)."""
    if flax_path[-1] == "embedding" or array.ndim == 1:
        return array
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if array.ndim == 3:
        array = array[:, :, 0]
    return np.ascontiguousarray(array.T)


def to_torch(flax_path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_flax`."""
    array = np.asarray(array)
    if flax_path[-1] == "embedding" or array.ndim == 1:
        return array
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    out = np.ascontiguousarray(array.T)
    return out[:, :, None] if _is_conv1d(flax_path) else out


def expected_tensors(model: nn.Module, image_size: int) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """``torch name -> (flax path, PyTorch shape)`` for every parameter of ``model``."""
    abstract = abstract_params(model, (image_size, image_size, model.in_channels))
    expected = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        flax_path = tuple(entry.key for entry in path)
        expected[torch_name(flax_path)] = (flax_path, torch_shape(flax_path, tuple(leaf.shape)))
    return expected


def check_state_dict(state: Mapping[str, Any], model: nn.Module, image_size: int, what: str) -> dict:
    """Checks ``state`` (name -> NumPy array) against ``model``; returns
    :func:`expected_tensors`.

    Raises:
      PretrainedError: one line listing the missing, unexpected, wrongly shaped and non-float tensors.
    """
    expected = expected_tensors(model, image_size)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{name} ({what} {tuple(state[name].shape)}, model expects {shape})"
                   for name, (_, shape) in expected.items() if name in state and tuple(state[name].shape) != shape)
    not_float = sorted(f"{name} ({state[name].dtype})" for name in state
                       if not np.issubdtype(np.asarray(state[name]).dtype, np.floating))
    problems = [f"{label}: {_format_names(names)}" for label, names in
                (("missing weights", missing), ("unexpected weights", unexpected), ("wrong shapes", wrong),
                 ("non-float tensors", not_float)) if names]
    if problems:
        raise PretrainedError(f"{what} does not match the model its flags describe; " + "; ".join(problems))
    return expected


def convert_adm_state_dict(state: Mapping[str, np.ndarray], model: nn.Module, image_size: int,
                           what: str = "checkpoint") -> dict:
    """guided-diffusion tensors (PyTorch names and layouts) -> ``model``'s Flax params, float32 NumPy.

    Raises:
      PretrainedError: for any missing, unexpected, wrongly shaped or non-float tensor.
    """
    expected = check_state_dict(state, model, image_size, what)
    params: dict = {}
    for name, (flax_path, _) in expected.items():
        node = params
        for key in flax_path[:-1]:
            node = node.setdefault(key, {})
        node[flax_path[-1]] = to_flax(flax_path, np.asarray(state[name], np.float32))
    return params


def adm_state_dict(params: Any) -> dict[str, np.ndarray]:
    """Flax params of an ADM module -> guided-diffusion names and PyTorch layouts (the inverse)."""
    return {torch_name(tuple(e.key for e in path)): to_torch(tuple(e.key for e in path), np.asarray(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
