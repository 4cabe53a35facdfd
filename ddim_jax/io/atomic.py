"""Atomic file writes (PNG, NPZ, JSON, any bytes): a temporary file beside the target, fsync, then
``os.replace``, so a reader or a run killed half-way never sees a truncated file.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
from PIL import Image


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write_fn, suffix: str) -> None:
    """Calls ``write_fn(file_object)`` on a temp file beside ``path``, then renames it onto ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as file_object:
            write_fn(file_object)
            file_object.flush()
            os.fsync(file_object.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def save_png(path: str | os.PathLike, array_uint8: np.ndarray) -> None:
    """Atomically writes a uint8 image [H, W], [H, W, 1] or [H, W, 3] as a PNG file."""
    array = np.asarray(array_uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"save_png expects [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {array.shape}")
    image = Image.fromarray(array)
    atomic_write(path, lambda f: image.save(f, format="PNG"), ".png")


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Atomically writes ``arrays`` to an uncompressed ``.npz`` file (``np.savez``)."""
    host_arrays = {name: np.asarray(value) for name, value in arrays.items()}
    atomic_write(path, lambda f: np.savez(f, **host_arrays), ".npz")


def save_json(path: str | os.PathLike, payload: Any) -> None:
    """Atomically writes ``payload`` as indented, key-sorted JSON."""
    text = json.dumps(payload, indent=2, sort_keys=True).encode()
    atomic_write(path, lambda f: f.write(text), ".json")

def os_error_in_chain(error: BaseException) -> OSError | None:
    """The first ``OSError`` with an errno in ``error`` or its causes/contexts (None if there is none)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None
