"""CelebA 64x64 (DDIM §5): the DDPM UNet with a five-level (1, 2, 2, 2, 4) ladder.

Images are cropped to the 128x128 face box the DDIM authors use (rows 57..185, columns 25..153 of
the 218x178 aligned images) and resized to 64x64. Attention at 16x16, dropout 0.1, flips (all as
in the defaults). TFDS's ``celeb_a`` must be prepared first (see the README).

    python train.py --config configs/celeba64.py --workdir runs/celeba64
"""

from ddim_jax.training.schema import default_config


def get_config():
    config = default_config()
    config.data.name = "celeb_a"
    config.data.image_size = 64
    config.data.crop = (57, 25, 128, 128)
    config.data.num_workers = 4

    config.model.ch_mult = (1, 2, 2, 2, 4)

    config.training.num_train_steps = 500_000
    return config
