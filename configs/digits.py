"""The offline default: scikit-learn's copy of the UCI 8x8 handwritten digits (1,797 images).

No download, no TensorFlow. Sized so that 2 CPU cores train it in about 10 minutes to samples a
person recognises as digits. Digits are not mirror-symmetric, so no flips.

    python train.py --config configs/digits.py --workdir runs/digits
"""

from ddim_jax.training.schema import default_config


def get_config():
    config = default_config()
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.random_flip = False
    config.data.eval_split = "train"  # scikit-learn ships one split

    config.model.ch = 32
    config.model.ch_mult = (1, 2)
    config.model.attn_resolutions = (4,)
    config.model.dropout = 0.0
    config.model.num_groups = 8

    config.training.batch_size = 64
    config.training.num_train_steps = 2_500
    config.training.checkpoint_every_steps = 500
    config.training.sample_every_steps = 500
    config.training.num_grid_samples = 100
    config.training.ema_decay = 0.995  # a ~200-step window: short runs must forget the random init

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200

    config.sampling.num_samples = 100
    return config
