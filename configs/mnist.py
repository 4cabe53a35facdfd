"""MNIST 28x28 (TFDS ``mnist``), a small real dataset for quick experiments on one GPU.

Digits are not mirror-symmetric, so no flips. 28 = 7 * 4 allows two downsamplings (28 -> 14 -> 7).

    python train.py --config configs/mnist.py --workdir runs/mnist
"""

from ddim_jax.training.schema import default_config


def get_config():
    config = default_config()
    config.data.name = "mnist"
    config.data.image_size = 28
    config.data.channels = 1
    config.data.random_flip = False

    config.model.ch = 64
    config.model.ch_mult = (1, 2, 2)
    config.model.attn_resolutions = (14,)

    config.training.num_train_steps = 50_000
    config.training.checkpoint_every_steps = 2_500
    config.training.sample_every_steps = 5_000
    config.training.ema_decay = 0.9995

    config.optim.warmup_steps = 1_000
    return config
