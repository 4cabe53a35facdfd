"""The training state, its creation and the optimizer (shared by the training loop and checkpoints).

``TrainState`` is everything a training step reads and writes; :func:`create_train_state` makes a
fresh one from the config's seed, :func:`state_from_params` wraps given params (exported or
converted weights), and :func:`ema_update` is the exponential moving average that the sampler's
weights come from. ``ddim_jax/training/loop.py`` (the loop) and ``ddim_jax/training/checkpoints.py`` (orbax)
both import this module; neither imports the other's internals.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddim_jax.models import abstract_params, create_model

__all__ = [
    "TrainState",
    "learning_rate_schedule",
    "make_optimizer",
    "ema_update",
    "create_train_state",
    "state_from_params",
    "abstract_train_state",
    "image_shape",
]


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes (a pytree; replicated over devices).

    Attributes:
      step: int32 scalar, the number of steps taken (= global batches consumed).
      params: UNet parameters.
      ema_params: exponential moving average of ``params`` (what samples are drawn from).
      opt_state: optax state (includes the step count of the warmup schedule).
      rng: base PRNG key (uint32 [2]); step ``s`` uses ``fold_in(rng, s)``.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """``(H, W, C)`` of the run's images."""
    size, channels = int(config.data.image_size), int(config.data.channels)
    return size, size, channels


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to ``optim.learning_rate`` over ``optim.warmup_steps``, then constant."""
    peak, warmup = config.optim.learning_rate, config.optim.warmup_steps
    if warmup == 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
                                boundaries=[warmup])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """``clip_by_global_norm(grad_clip_norm)`` followed by Adam with the warmup schedule."""
    optim = config.optim
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip_norm),
        optax.adam(learning_rate_schedule(config), b1=optim.beta1, b2=optim.beta2, eps=optim.eps),
    )


def ema_update(ema_params: Any, new_params: Any, decay: float) -> Any:
    """One step of the exponential moving average: ``decay * ema + (1 - decay) * new``, leafwise."""
    return jax.tree.map(lambda ema, new: decay * ema + (1.0 - decay) * new, ema_params, new_params)


def _seed_keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
    """(init key, base training key) from ``config.training.seed``."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.training.seed))
    return init_key, train_key


def create_train_state(config: ml_collections.ConfigDict) -> TrainState:
    """A fresh state: UNet init from the seed, EMA = params, fresh optimizer state. Jittable."""
    model = create_model(config)
    init_key, train_key = _seed_keys(config)
    params = model.init({"params": init_key}, jnp.zeros((1,) + image_shape(config), jnp.float32),
                        jnp.zeros((1,), jnp.int32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=make_optimizer(config).init(params), rng=train_key)


def state_from_params(config: ml_collections.ConfigDict, params: Any) -> TrainState:
    """A step-0 state around given params (used by ``checkpoints.export_workdir``)."""
    _, train_key = _seed_keys(config)
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=make_optimizer(config).init(params), rng=train_key)


def abstract_train_state(config: ml_collections.ConfigDict, sharding: Any = None) -> TrainState:
    """The state's shapes and dtypes (``jax.ShapeDtypeStruct`` leaves, with ``sharding`` if given);
    nothing is computed. Checkpoints restore onto it."""
    params = abstract_params(create_model(config), image_shape(config))
    abstract = jax.eval_shape(lambda p: state_from_params(config, p), params)
    if sharding is None:
        return abstract
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), abstract)
