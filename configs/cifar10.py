"""CIFAR-10 32x32: the DDPM recipe that the DDIM paper reuses (Ho et al. 2020; DDIM §5).

35.7M-parameter UNet (ch 128, multipliers (1, 2, 2, 2), 2 residual blocks, attention at 16x16,
dropout 0.1), Adam lr 2e-4 with 5,000 warmup steps, batch 128, gradient-norm clip 1.0, EMA 0.9999,
random horizontal flips, linear betas 1e-4 .. 0.02 over T = 1000 steps, 800k training steps.

    python train.py --config configs/cifar10.py --workdir runs/cifar10
"""

from ddim_jax.config_utils import default_config


def get_config():
    config = default_config()  # already the CIFAR-10 recipe; restated here for the reader
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True
    config.data.num_workers = 4

    config.model.ch = 128
    config.model.ch_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1

    config.training.batch_size = 128
    config.training.num_train_steps = 800_000
    config.training.ema_decay = 0.9999

    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5_000
    config.optim.grad_clip_norm = 1.0

    config.sampling.skip = "quad"  # the paper's choice for CIFAR-10
    return config
