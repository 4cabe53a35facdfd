"""``--precision fp32|bf16``: the flag spelling of ``config.model.dtype`` (the UNet's computation dtype).

``train.py``, ``sample.py`` and ``evaluate.py`` take the flag; all map it here, so the spellings, the
error message and the CPU notice (:func:`warn_if_bf16_on_cpu`) are the same everywhere.
bf16 is mixed precision: activations, matmuls and convolutions in bfloat16; parameters, optimizer
state, EMA, GroupNorm statistics, the attention softmax, the network output, the loss and the
sampler state in float32.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import jax

from ddim_jax.errors import UserError

__all__ = ["PRECISIONS", "PrecisionError", "parse_precision", "with_precision", "bf16_cpu_notice",
           "warn_if_bf16_on_cpu"]

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


def bf16_cpu_notice(dtype: Any, backend: str) -> str | None:
    """The one-line notice for a bfloat16 network on ``backend`` ("cpu", "gpu", ...), or None.

    This jaxlib's XLA:CPU computes bfloat16 convolutions and matmuls in float32 (it converts the
    operands up and the result back; no oneDNN / AMX path, whatever the XLA flags), so on a CPU
    bf16 only adds conversions: it is slower than fp32 and less accurate.
    """
    if backend != "cpu" or str(dtype) != "bfloat16":
        return None
    return ("bf16 on the CPU backend is slower than fp32 here (XLA:CPU computes bfloat16 convolutions and "
            "matmuls in float32 plus conversions; see docs/precision.md): use --precision fp32 on a CPU")


def warn_if_bf16_on_cpu(dtype: Any, program: str, backend: str | None = None, stream: TextIO | None = None) -> bool:
    """Prints :func:`bf16_cpu_notice` as ``"<program>: note: ..."`` on stderr when it applies;
    returns whether it printed. ``backend`` defaults to ``jax.default_backend()`` (call this after
    any ``jax.distributed`` initialisation)."""
    notice = bf16_cpu_notice(dtype, jax.default_backend() if backend is None else backend)
    if notice is not None:
        print(f"{program}: note: {notice}", file=sys.stderr if stream is None else stream, flush=True)
    return notice is not None
