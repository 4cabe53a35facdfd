"""PyTorch references for the parity tests and benchmarks (dev tooling; needs the ``dev`` extra).

:func:`import_torchvision` imports torchvision next to the CPU build of torch, and
:func:`random_fid_inception_state` makes a random state dict of pytorch-fid's FID Inception.

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


def random_fid_inception_state(seed: int = 0) -> dict:
    """A random state dict of pytorch-fid's FID InceptionV3 (torchvision ``Inception3`` names, 1008-way
    ``fc``): He-scaled convs, random BatchNorm scales, biases and running statistics, so that the
    activations stay O(1) through all 94 conv layers. ``num_batches_tracked`` is included (as in the
    published file), with an arbitrary count."""
    import_torchvision()
    import pytorch_fid.inception
    import torch

    shapes = pytorch_fid.inception._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("conv.weight"):
            state[name] = torch.randn(tensor.shape, generator=generator) * (2.0 / tensor[0].numel()) ** 0.5
        elif name.endswith(("bn.weight", "running_var")):
            state[name] = 0.5 + torch.rand(tensor.shape, generator=generator)
        elif name.endswith(("bn.bias", "running_mean", "fc.bias")):
            state[name] = 0.1 * torch.randn(tensor.shape, generator=generator)
        elif name == "fc.weight":
            state[name] = torch.randn(tensor.shape, generator=generator) / 2048**0.5
        else:
            raise KeyError(name)
    return state
