"""Orbax's harmless noise around a checkpoint that fails to restore, kept off the terminal.

The fallback of :mod:`ddim_jax.training.checkpoints` reports an unusable step in one line; orbax
and tensorstore would add their own output beside it:

- a failed restore leaves coroutines and tensorstore callbacks aimed at orbax's closed asyncio
  loop; when they are collected, Python prints each one's traceback ("Exception ignored in:
  <coroutine ...>", "RuntimeError: Event loop is closed") through ``sys.unraisablehook``;
- orbax logs (absl) an error or a warning for a missing or unreadable ``_CHECKPOINT_METADATA``
  (its own timestamps, which nothing here reads: the data is verified by checksums).

:func:`install` drops exactly those and passes everything else on.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["install"]

# The messages of orbax/_src/metadata/checkpoint.py about the step metadata file.
_STEP_METADATA_MESSAGES = ("Metadata file does not exist", "Failed to read Metadata file",
                           "Failed to json parse Metadata file")


def _is_loop_noise(unraisable: Any) -> bool:
    value, source = unraisable.exc_value, unraisable.object
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
        return True
    code = getattr(source, "cr_code", None)   # a coroutine of orbax's, collected after the failure
    return code is not None and "/orbax/" in code.co_filename.replace("\\", "/")


class _StepMetadataFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        return not (message.startswith(_STEP_METADATA_MESSAGES) and "orbax" in record.pathname)


def install() -> None:
    """Installs both filters once per process (idempotent)."""
    previous = sys.unraisablehook
    if not getattr(previous, "_ddim_jax_filter", False):
        def hook(unraisable):
            if not _is_loop_noise(unraisable):
                previous(unraisable)

        hook._ddim_jax_filter = True
        sys.unraisablehook = hook
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _StepMetadataFilter) for f in absl_logger.filters):
        absl_logger.addFilter(_StepMetadataFilter())
