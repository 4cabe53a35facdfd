"""``tiny.py`` made class-conditional (10 digit classes + the null class), for tests and smoke runs.

    python train.py --config configs/tiny_cond.py --workdir /tmp/tiny_cond
"""

from configs import tiny


def get_config():
    config = tiny.get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.25  # a few dropped labels even in a batch of 8
    return config
