"""Command-line spelling shared by ``sample.py`` and ``evaluate.py`` (absl knows only underscores)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_NEGATED_BOOL = re.compile(r"^no[_-]")


def normalize_argv(argv: Sequence[str], boolean_flags: Iterable[str] = ()) -> list[str]:
    """Accept dashed flag spellings for absl, which only knows underscores.

    ``--batch-size=8`` -> ``--batch_size=8``, ``--sigma-hat`` -> ``--sigma_hat`` and, for the
    boolean flags named in ``boolean_flags``, ``--no-ema`` / ``--no_ema`` -> ``--noema``. Values,
    positional arguments and everything after a bare ``--`` are left alone.
    """
    booleans = set(boolean_flags)
    normalized = list(argv[:1])
    passthrough = False
    for arg in argv[1:]:
        if passthrough or not arg.startswith("--") or arg == "--":
            passthrough = passthrough or arg == "--"
            normalized.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if _NEGATED_BOOL.match(name) and name[3:] in booleans:
            name = "no" + name[3:]
        normalized.append(f"--{name}{eq}{value}")
    return normalized
