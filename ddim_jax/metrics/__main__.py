"""Entry point of ``python -m ddim_jax.metrics`` (see :mod:`ddim_jax.metrics.cli`)."""

import sys

from ddim_jax.metrics.cli import main

if __name__ == "__main__":
    sys.exit(main())
