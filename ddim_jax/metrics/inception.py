"""The FID InceptionV3 in Flax (NHWC): the network ``pytorch-fid`` uses, and its weights.

This is the PyTorch port of TensorFlow's ``2015-12-05`` Inception graph that every published FID
number since Heusel et al. (2017) is computed with: ``pytorch_fid.inception.fid_inception_v3()``, i.e.
torchvision's ``Inception3(num_classes=1008, aux_logits=False)`` with

- ``Mixed_5b/5c/5d`` -> ``FIDInceptionA``, ``Mixed_6b..6e`` -> ``FIDInceptionC``,
  ``Mixed_7b`` -> ``FIDInceptionE_1``: the 3x3 average pool of the pool branch does not count the
  zero padding (``count_include_pad=False``, as TensorFlow's ``avg_pool``);
- ``Mixed_7c`` -> ``FIDInceptionE_2``: a 3x3 *max* pool in the pool branch (a quirk of the TF graph);
- ``BasicConv2d`` = conv without bias + BatchNorm (eps 0.001, running statistics) + ReLU;
- 3x3 / stride-2 max pools after ``Conv2d_2b_3x3`` and ``Conv2d_4a_3x3`` (pytorch-fid's ``InceptionV3``
  wrapper), a global average pool to the 2048-d features, and the 1008-way ``fc`` (logits).

Weights are a safetensors file with the torchvision ``Inception3`` state-dict names of the published
``pt_inception-2015-12-05-6726825d.pth`` (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``,
``fc.weight``, ...). :func:`load_inception` reads them; :func:`convert_inception_checkpoint` writes them
from the ``.pth`` (the only place that reads a pickle, with ``torch.load(weights_only=True)``).

References: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016;
Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017; https://github.com/mseitzer/pytorch-fid (``pytorch_fid/inception.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save

from ddim_jax.errors import UserError
from ddim_jax.io.atomic import atomic_write

__all__ = [
    "FEATURE_DIM",
    "NUM_LOGITS",
    "INCEPTION_SIZE",
    "WEIGHTS_FILENAME",
    "InceptionWeightsError",
    "FIDInceptionV3",
    "Inception",
    "load_inception",
    "inception_from_state_dict",
    "convert_inception_checkpoint",
]

FEATURE_DIM = 2048
NUM_LOGITS = 1008
INCEPTION_SIZE = 299
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
_BN_EPS = 1e-3


class InceptionWeightsError(UserError, ValueError):
    """A missing, unreadable or mismatched Inception weights file."""


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
    """torchvision ``BasicConv2d``: conv (no bias) -> BatchNorm(eps=1e-3, running stats) -> ReLU.

    ``[N, H, W, C_in] -> [N, H', W', features]``; ``padding`` is PyTorch's symmetric (ph, pw).
    """

    features: int
    kernel_size: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 / stride-1 average pool that ignores the zero padding (TF ``avg_pool`` semantics)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """``FIDInceptionA``: [N, H, W, C] -> [N, H, W, 224 + pool_features]."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(64, 1, name="branch1x1")(x)
        b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision ``InceptionB`` (``Mixed_6a``): [N, H, W, C] -> [N, (H-3)//2+1, ., 480 + C]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """``FIDInceptionC``: [N, H, W, C] -> [N, H, W, 768]; factorised 7x7 convolutions."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, 1, name="branch1x1")(x)
        b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision ``InceptionD`` (``Mixed_7a``): [N, H, W, 768] -> [N, (H-3)//2+1, ., 1280]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """``FIDInceptionE_1`` (``max_pool=False``) / ``FIDInceptionE_2`` (``True``): -> [N, H, W, 2048]."""

    max_pool: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(320, 1, name="branch1x1")(x)
        b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.max_pool:  # FIDInceptionE_2: the TF graph max-pools here
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """The FID InceptionV3 on preprocessed images.

    ``__call__(x)`` takes float32 ``[N, H, W, 3]`` scaled to [-1, 1] (299 x 299 for FID; any size
    >= 75 runs) and returns ``(features [N, 2048], logits [N, 1008])``: the global average pool
    after ``Mixed_7c`` and the ``fc`` layer applied to it (dropout is the identity in eval mode).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        features = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_LOGITS, name="fc")(features)
        return features, logits


@dataclasses.dataclass(frozen=True)
class Inception:
    """A loaded FID Inception: the Flax module and its variables (``params``, ``batch_stats``).

    ``fc_kernel`` ([2048, 1008], the ``fc`` weight transposed) gives the unbiased logits the original
    Inception Score code uses (see ``ddim_jax.metrics.scores.unbiased_logits``).
    """

    module: FIDInceptionV3
    variables: Mapping[str, Any]

    @property
    def fc_kernel(self) -> np.ndarray:
        return np.asarray(self.variables["params"]["fc"]["kernel"])


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Torchvision state-dict name -> PyTorch shape, derived from the Flax module's variables."""
    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.float32))
    expected = {}
    for collection, tree in shapes.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = [entry.key for entry in path]
            torch_name = _torch_name(collection, keys)
            expected[torch_name] = _torch_shape(keys[-1], leaf.shape)
    return expected


_LEAF_TO_TORCH = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                  ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


_TORCH_TO_LEAF = {"bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
                  "running_var": ("batch_stats", "var")}


def _torch_name(collection: str, keys: list[str]) -> str:
    return ".".join(keys[:-1] + [_LEAF_TO_TORCH[(collection, keys[-1])]])


def _torch_shape(leaf: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if leaf == "kernel" and len(flax_shape) == 4:  # HWIO -> OIHW
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if leaf == "kernel":  # Dense [in, out] -> Linear [out, in]
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


def _to_flax(leaf: str, array: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if leaf == "kernel":
        return array.T
    return array


def inception_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> Inception:
    """Builds an :class:`Inception` from a torchvision ``Inception3`` state dict (NumPy arrays).

    ``num_batches_tracked`` entries are ignored. Raises :class:`InceptionWeightsError` naming every
    missing, unexpected or wrongly shaped tensor.
    """
    state = {name: value for name, value in state_dict.items() if not name.endswith(".num_batches_tracked")}
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{name} {tuple(np.shape(state[name]))} (expected {expected[name]})"
                       for name in set(expected) & set(state) if tuple(np.shape(state[name])) != expected[name])
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", misshaped)):
        if names:
            problems.append(f"{len(names)} {label}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    not_float = sorted(name for name in set(expected) & set(state)
                       if not np.issubdtype(np.asarray(state[name]).dtype, np.floating))
    if not_float:
        problems.append(f"{len(not_float)} not floating-point: {', '.join(not_float[:8])}"
                        f"{' ...' if len(not_float) > 8 else ''}")
    if problems:
        raise InceptionWeightsError("Inception weights do not match the FID InceptionV3: " + "; ".join(problems))
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for name, value in state.items():
        *module_path, torch_leaf = name.split(".")
        if torch_leaf == "weight":
            collection, leaf = "params", "kernel" if module_path[-1] in ("conv", "fc") else "scale"
        else:
            collection, leaf = _TORCH_TO_LEAF[torch_leaf]
        node = variables[collection]
        for part in module_path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(_to_flax(leaf, np.asarray(value, dtype=np.float32)))
    return Inception(FIDInceptionV3(), variables)


def _missing_weights_message(path: str) -> str:
    return (f"Inception weights not found: {path}. The FID weights are published by pytorch-fid as "
            f"{WEIGHTS_FILENAME} ({WEIGHTS_URL}, the releases of github.com/mseitzer/pytorch-fid); "
            f"convert them once with: python -m ddim_jax.metrics convert-inception {WEIGHTS_FILENAME} {path}")


def load_inception(path: str | os.PathLike) -> Inception:
    """Loads the FID Inception from a safetensors file with torchvision ``Inception3`` names.

    Raises:
      InceptionWeightsError: the file is missing (the one-line message says where the weights are
        published and how to convert them), is not safetensors, or does not hold exactly the FID
        InceptionV3 tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InceptionWeightsError(_missing_weights_message(path))
    if path.endswith((".pth", ".pt", ".pkl", ".bin", ".ckpt")):
        raise InceptionWeightsError(f"{path} looks like a pickled PyTorch checkpoint, which is never read here; "
                                    f"convert it: python -m ddim_jax.metrics convert-inception {path} OUT.safetensors")
    try:
        state = load_file(path)
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise InceptionWeightsError(f"cannot read {path} as safetensors ({type(err).__name__}: {err})") from err
    return inception_from_state_dict(state)


def convert_inception_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Converts pytorch-fid's ``.pth`` state dict to safetensors (atomically); returns the tensor count.

    Reads the pickle with ``torch.load(..., weights_only=True)`` (tensors only, no code), checks that
    it is the FID InceptionV3 and writes it under the same names, ``num_batches_tracked`` dropped.
    """
    import torch  # only this one-time converter needs PyTorch

    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isfile(src):
        raise InceptionWeightsError(f"no such checkpoint: {src} (download {WEIGHTS_URL})")
    with open(src, "rb") as handle:
        magic = handle.read(2)
    if magic not in (b"PK", b"\x80\x02"):   # torch.save's zip archive, or its legacy pickle (protocol 2)
        raise InceptionWeightsError(f"{src} is not a PyTorch checkpoint (neither torch.save's zip archive nor its "
                                    f"legacy pickle); download {WEIGHTS_URL}")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InceptionWeightsError(f"cannot read {src} with torch.load(weights_only=True) "
                                    f"({type(err).__name__}: {err})") from err
    if not isinstance(state, Mapping):
        raise InceptionWeightsError(f"{src} does not hold a state dict (got {type(state).__name__})")
    not_tensors = sorted(str(name) for name, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise InceptionWeightsError(f"{src} is not a state dict of tensors ({len(not_tensors)} entries are not, "
                                    f"first {not_tensors[0]!r})")
    arrays = {name: np.ascontiguousarray(value.detach().cpu().numpy().astype(np.float32))
              for name, value in state.items() if not name.endswith(".num_batches_tracked")}
    inception_from_state_dict(arrays)  # refuses anything that is not the FID network
    payload = save(arrays, metadata={"source": os.path.basename(src), "format": "torchvision Inception3 state dict"})
    atomic_write(dst, lambda f: f.write(payload), ".safetensors")
    return len(arrays)
