"""The digits (scikit-learn, offline) with their class labels: classifier-free guidance on 2 CPU cores in
about 10 minutes. The same UNet as ``digits.py`` plus a class embedding (11 rows: 10 digits and the
null class); 10% of the labels are dropped to the null class, so one network is both the
conditional and the unconditional model.

    python train.py --config configs/digits_cond.py --workdir runs/digits_cond
    python sample.py --workdir runs/digits_cond --label all --guidance 2 --steps 20
"""

from configs import digits


def get_config():
    config = digits.get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.1
    return config
