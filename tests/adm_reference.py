"""Random-weight guided-diffusion reference networks shared by the ADM tests (test-only; needs torch
and guided-diffusion-sdk)."""

import numpy as np


def randomize(module, seed):
    """Every parameter random (zero-initialised output layers too): weights N(0, 1 / fan_in),
    norms' scales 1 + 0.3 N, biases 0.3 N, so that no branch is zero."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * noise)
            elif name.endswith("label_emb.weight"):
                p.copy_(noise)
            else:
                p.copy_(noise / np.sqrt(p[0].numel() if "positional_embedding" not in name else p.shape[0]))
    return module.eval()
