"""``python -m ddim_jax.pretrained --pretrained DIR_OR_HUB_ID --workdir runs/x``: export a workdir."""

import sys

from ddim_jax.pretrained.export import main

if __name__ == "__main__":
    sys.exit(main())
