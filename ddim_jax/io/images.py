"""Image helpers: model outputs in [-1, 1] to uint8, sample grids, and atomic file writes.

Everything here is host-side NumPy / Pillow; nothing is traced by JAX. The writers are atomic:
they write a temporary file in the destination directory and then ``os.replace`` it, so a reader
(or a run killed half-way) never sees a truncated PNG or NPZ.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

GRID_PADDING = 2


def to_uint8(images: Any) -> np.ndarray:
    """Maps float images in [-1, 1] to uint8 in [0, 255].

    Args:
      images: float array [N, H, W, C] (or any shape) with data scaled to [-1, 1]; values outside
        are clipped. JAX arrays are fetched to the host.

    Returns:
      np.uint8 array of the same shape: ``round((x + 1) * 127.5)``.
    """
    array = np.asarray(images, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("to_uint8: images contain NaN or infinite values")
    return np.clip(np.rint((array + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images_uint8: np.ndarray, ncols: int | None = None, *, upscale: int = 1) -> np.ndarray:
    """Tiles a batch of images into one image with ``GRID_PADDING`` px of black padding.

    Args:
      images_uint8: uint8 [N, H, W, C] with C in {1, 3} (or [N, H, W], read as C = 1).
      ncols: images per row; default ``ceil(sqrt(N))``.
      upscale: integer nearest-neighbour magnification of each image (handy for 8x8 digits).

    Returns:
      uint8 [rows * (H' + p) + p, ncols * (W' + p) + p, C] with H' = H * upscale, p = padding.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise ValueError(f"make_grid expects uint8 images, got dtype {images.dtype}; use to_uint8 first")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"make_grid expects a non-empty [N, H, W, C] batch, got shape {images.shape}")
    if upscale < 1:
        raise ValueError(f"make_grid: upscale must be >= 1, got {upscale}")
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    num, height, width, channels = images.shape
    ncols = int(ncols) if ncols else int(math.ceil(math.sqrt(num)))
    if ncols < 1:
        raise ValueError(f"make_grid: ncols must be >= 1, got {ncols}")
    nrows = int(math.ceil(num / ncols))
    pad = GRID_PADDING
    grid = np.zeros((nrows * (height + pad) + pad, ncols * (width + pad) + pad, channels), np.uint8)
    for index in range(num):
        row, col = divmod(index, ncols)
        top, left = pad + row * (height + pad), pad + col * (width + pad)
        grid[top:top + height, left:left + width] = images[index]
    return grid
