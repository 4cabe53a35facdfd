"""Joining a multi-process (multi-host) run: the flags ``train.py``, ``sample.py`` and ``evaluate.py``
share, and :func:`initialize`, which calls ``jax.distributed.initialize`` from them.

On each host run the same command with ``--coordinator_address=HOST0:PORT --num_processes=N
--process_id=i``, or ``--multihost`` where ``jax.distributed.initialize()`` finds its settings
itself (Cloud TPU, SLURM).
"""

from __future__ import annotations

import jax
from absl import flags

from ddim_jax.errors import UserError


class DistributedSetupError(UserError, ValueError):
    """The multi-process flags are incomplete (a one-line user error)."""


def define_flags() -> None:
    """Defines ``--multihost``, ``--coordinator_address``, ``--num_processes`` and ``--process_id``."""
    flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with auto-detected settings.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a multi-process run.")
    flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def initialize(values: flags.FlagValues) -> None:
    """Joins the run the flags of :func:`define_flags` describe; nothing for a one-process run."""
    explicit = (values.coordinator_address, values.num_processes, values.process_id)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            raise DistributedSetupError(
                "a multi-process run needs all of --coordinator_address, --num_processes and --process_id")
        jax.distributed.initialize(coordinator_address=values.coordinator_address,
                                   num_processes=values.num_processes, process_id=values.process_id)
    elif values.multihost:
        jax.distributed.initialize()


def is_lead_process() -> bool:
    """Whether this is process 0, the one that writes shared files and prints (True in a
    one-process run)."""
    return jax.process_index() == 0
