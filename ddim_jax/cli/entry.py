"""How every entry point ends: user errors and Ctrl-C as one line, never a traceback.

``with user_errors("sample.py", resume_note="..."):`` around an entry point's work turns a
:class:`ddim_jax.errors.UserError` into ``<prog>: error: <message>`` (one line) and exit status 1,
and a ``KeyboardInterrupt`` into ``<prog>: interrupted; <resume_note>`` and exit status 130 (the
shell's code for SIGINT). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import NoReturn

from ddim_jax.errors import UserError, one_line

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "fail", "user_errors"]

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def fail(prog: str, message: str) -> NoReturn:
    """Prints ``<prog>: error: <message>`` on one line to stderr and exits with status 1."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def user_errors(prog: str, resume_note: str = "rerun the same command to continue") -> Iterator[None]:
    """Reports a UserError (exit 1) or Ctrl-C (exit 130) raised inside the block as one line."""
    try:
        yield
    except UserError as error:
        fail(prog, one_line(error))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {resume_note}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
