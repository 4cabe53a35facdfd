"""Device meshes for data parallelism: one ``data`` axis, batches split along it, params replicated.

Training spans every device of every process (:func:`global_data_mesh`); sampling and feature
extraction run in one process over that host's devices (:func:`local_data_mesh`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

DATA_AXIS = "data"


def global_data_mesh() -> Mesh:
    """A 1-D mesh with axis ``data`` over all devices of all processes (``jax.devices()``)."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def local_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over this process's devices (``jax.local_devices()``) or ``devices``."""
    return Mesh(np.asarray(list(jax.local_devices() if devices is None else devices)), (DATA_AXIS,))


def ceil_div(numerator: int, denominator: int) -> int:
    """``ceil(numerator / denominator)`` for non-negative ints, exactly (no float rounding)."""
    return -(-int(numerator) // int(denominator))
