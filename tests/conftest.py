"""Test-wide setup: run JAX on the CPU, whatever the machine has."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def import_torchvision_cpu():
    """Imports torchvision with the CPU-only torch build, or returns None if that is impossible.

    torchvision 0.28's C extension is built against a CUDA torch; on the CPU build it fails to load
    and the fake/autograd registrations of its custom ops (``torch.library.register_fake`` /
    ``register_autograd`` on ``torchvision::nms`` etc.) raise at import time. The metrics tests only
    need its pure-Python ``Inception3``, so the two registration functions are replaced with no-ops
    for the duration of the import and restored afterwards.
    """
    import sys

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    try:
        import torch
    except ImportError:
        return None
    saved = torch.library.register_fake, torch.library.register_autograd
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    torch.library.register_autograd = lambda *args, **kwargs: None
    try:
        import torchvision
    except Exception:  # noqa: BLE001 -- any import failure means: skip the parity tests
        return None
    finally:
        torch.library.register_fake, torch.library.register_autograd = saved
    return torchvision
