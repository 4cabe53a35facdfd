"""The one base class of user errors: requests a user can fix, reported as one line.

Every entry point (``train.py``, ``sample.py``, ``evaluate.py``, ``python -m ddim_jax.metrics``,
``python -m ddim_jax.pretrained``) catches :class:`UserError` and prints its message on one line
with exit status 1 (:func:`ddim_jax.cli.entry.user_errors`); anything else is a bug and keeps its
traceback. Each subclass also derives from the builtin exception its callers expect (most are
``ValueError``), so ``except ValueError`` keeps working in library code.
"""

from __future__ import annotations

__all__ = ["UserError", "one_line"]


class UserError(Exception):
    """Something the user asked for cannot be done; the message says what and, where it helps, how to fix it."""


def one_line(error: BaseException) -> str:
    """The error's message with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(error).split())
