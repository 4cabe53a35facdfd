"""A minute model (about 11k params) on the digits for tests and smoke runs: a few seconds per run on a CPU.

    python train.py --config configs/tiny.py --workdir /tmp/tiny
"""

from ddim_jax.training.schema import default_config


def get_config():
    config = default_config()
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.eval_split = "train"
    # data.random_flip stays on: exercised by the tests, even if digits are not symmetric.

    config.model.ch = 8
    config.model.ch_mult = (1,)  # no resampling and no attention: the smallest graph to compile
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = ()
    config.model.num_groups = 4
    # model.dropout stays 0.1: keeps the dropout PRNG path under the resume test.

    config.training.batch_size = 8
    config.training.num_train_steps = 6
    config.training.log_every_steps = 2
    config.training.checkpoint_every_steps = 2
    config.training.sample_every_steps = 6
    config.training.num_grid_samples = 4
    config.training.keep_checkpoints = 2
    config.training.ema_decay = 0.9

    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 2

    config.sampling.batch_size = 4
    config.sampling.num_samples = 4
    return config
