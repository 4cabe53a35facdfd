"""Tree checksums, shared by training and sampling.

- :func:`tree_checksum` -- a sha256 over a pytree's leaves (path, dtype, shape and bytes, in tree
  order), computed on the host. Checkpoints store one per saved tree and verify it on restore
  (orbax itself does not checksum data); ``sample.py`` records the one of the params it loaded so
  a resumed run cannot mix two models.
- :func:`json_checksum` -- a sha256 over a JSON value's canonical text (sorted keys, no spaces):
  checkpoints store one of the run config and one of the progress record (step, data position).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np

__all__ = ["tree_checksum", "json_checksum", "host_array"]


def host_array(leaf: Any) -> np.ndarray:
    """A leaf's value on this host (a replicated, possibly multi-process array: its first shard)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.asarray(jax.device_get(leaf))


def tree_checksum(tree: Any) -> str:
    """sha256 (hex) over every leaf's key path, dtype, shape and bytes, in tree order.

    Two trees have the same checksum exactly when they have the same structure and bit-identical
    leaves, so it changes with any flipped byte of the data.
    """
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(host_array(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def json_checksum(value: Any) -> str:
    """sha256 (hex) of ``value``'s canonical JSON text (keys sorted, no whitespace, NaN refused).

    Equal for a value and its JSON round trip (tuples read back as lists, keys in any order), so
    the checksum of what was saved can be compared with the checksum of what was read back.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
