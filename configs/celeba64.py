"""CelebA 64x64 (DDIM §5): the DDPM UNet with a five-level (1, 2, 2, 2, 4) ladder.

Images are cropped to the 128x128 face box the DDIM authors use (rows 57..185, columns 25..153 of
the 218x178 aligned images) and resized to 64x64. Attention at 16x16, dropout 0.1, flips.
TFDS's ``celeb_a`` must be prepared first (see the README).

    python train.py --config configs/celeba64.py --workdir runs/celeba64
"""

from ddim_jax.config_utils import default_config


def get_config():
    config = default_config()
    config.data.name = "celeb_a"
    config.data.image_size = 64
    config.data.channels = 3
    config.data.random_flip = True
    config.data.crop = (57, 25, 128, 128)
    config.data.eval_split = "test"
    config.data.num_workers = 4

    config.model.ch = 128
    config.model.ch_mult = (1, 2, 2, 2, 4)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1

    config.training.batch_size = 128
    config.training.num_train_steps = 500_000

    config.sampling.skip = "uniform"
    return config
