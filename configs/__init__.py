"""Run configs: each module's ``get_config()`` returns a ``ml_collections.ConfigDict``.

Every file starts from ``ddim_jax.training.schema.default_config()`` (the DDPM/DDIM CIFAR-10 recipe,
which is also the schema) and sets only what differs. Use one with
``python train.py --config configs/<name>.py``, or import it: ``from configs import digits``.
"""
