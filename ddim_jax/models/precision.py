"""``--precision fp32|bf16``: the flag spelling of ``config.model.dtype`` (the UNet's computation dtype).

``train.py`` and ``sample.py`` take the flag; both map it here, so the spellings and the error
message are the same everywhere. bf16 is mixed precision: activations, matmuls and convolutions in
bfloat16; parameters, optimizer state, EMA, GroupNorm statistics, the attention softmax, the
network output, the loss and the sampler state in float32.
"""

from __future__ import annotations

from typing import Any

from ddim_jax.errors import UserError

__all__ = ["PRECISIONS", "PrecisionError", "parse_precision", "with_precision"]

# flag value -> UNet.dtype / config.model.dtype
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


class PrecisionError(UserError, ValueError):
    """An unknown ``--precision`` value (a one-line message)."""


def parse_precision(value: str) -> str:
    """``"fp32"`` -> ``"float32"``, ``"bf16"`` -> ``"bfloat16"``; anything else raises PrecisionError."""
    if value not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return PRECISIONS[value]


def with_precision(model: Any, value: str | None) -> Any:
    """``model`` computing in the dtype of ``--precision value`` (same params); ``None`` keeps it."""
    return model if value is None else model.clone(dtype=parse_precision(value))
