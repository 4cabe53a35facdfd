"""MNIST 28x28 with its class labels (TFDS ``label``): ``mnist.py`` plus a class embedding, 10% of the
labels dropped to the null class for classifier-free guidance.

    python train.py --config configs/mnist_cond.py --workdir runs/mnist_cond
"""

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.1
    return config
