"""Importing torchvision next to the CPU build of torch (dev tooling for the tests and benchmarks).

The PyPI torchvision wheels are built against CUDA torch. Next to the CPU torch this project pins,
torchvision's C extension (``_C.so``, the detection ops ``nms``, ``roi_align``, ...) cannot load,
and ``import torchvision`` then fails while registering fake kernels for those missing ops. Both
parity references need torchvision only for pure-Python model code: diffusers imports it whenever
it is installed, and pytorch-fid builds its Inception network from ``torchvision.models``. So
:func:`import_torchvision` imports it with those registrations skipped when, and only when, the C
extension does not load. Nothing in ``ddim_jax`` imports torch or torchvision.
"""

from __future__ import annotations

import glob
import importlib.util
import os


def import_torchvision() -> None:
    """Imports torchvision if installed, skipping its op registrations when ``_C.so`` cannot load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch
    import torch.library

    libraries = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    try:
        if libraries:
            torch.ops.load_library(libraries[0])
        import torchvision  # noqa: F401  (a working build: import it as is)
        return
    except (OSError, RuntimeError):
        pass
    saved = torch.library.register_fake, torch.library.register_autograd
    torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
    torch.library.register_autograd = lambda *args, **kwargs: None
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake, torch.library.register_autograd = saved
