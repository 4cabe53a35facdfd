"""CIFAR-10 32x32: the DDPM recipe that the DDIM paper reuses (Ho et al. 2020; DDIM §5).

The defaults in ``ddim_jax/training/schema.py`` already are this recipe, so this file only names the
dataset's extras. It reproduces the paper's CIFAR-10 settings:

- the 35.7M-parameter UNet: ch 128, multipliers (1, 2, 2, 2), 2 residual blocks per level,
  self-attention at 16x16, dropout 0.1;
- Adam, learning rate 2e-4 with 5,000 warmup steps, batch 128, gradient-norm clip 1.0,
  EMA decay 0.9999, 800k training steps, random horizontal flips;
- linear betas 1e-4 .. 0.02 over T = 1000 steps;
- sampling with the "quad" timestep spacing, the paper's choice for CIFAR-10.

    python train.py --config configs/cifar10.py --workdir runs/cifar10
"""

from ddim_jax.training.schema import default_config


def get_config():
    config = default_config()
    config.data.num_workers = 4
    config.sampling.skip = "quad"
    return config
