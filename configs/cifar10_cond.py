"""CIFAR-10 32x32 with its class labels (TFDS ``label``): the DDPM recipe of ``cifar10.py`` plus a class
embedding added to the time embedding, 10% of the labels dropped to the null class (classifier-free
guidance, Ho & Salimans 2022, who drop 10-20%).

    python train.py --config configs/cifar10_cond.py --workdir runs/cifar10_cond
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.1
    return config
