"""The training objective and the compiled train step.

L_simple (DDPM Eq. 14, the DDIM paper's shared surrogate; docs/conventions.md):

    L = E_{x0, t, eps} || eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t) ||^2,

with ``t`` uniform in ``0 .. T-1`` and the forward marginal of paper Eq. 4. One jitted step does
the forward/backward pass, the optax update and the EMA update, with no host sync inside; the
compiled step is cached per config so that runs in one process share it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding

from ddim_jax.diffusion import forward_marginal
from ddim_jax.models import apply_model, create_model
from ddim_jax.schedules import make_alphas_cumprod
from ddim_jax.training import schema
from ddim_jax.training.train_state import (
    TrainState,
    create_train_state,
    ema_update,
    make_optimizer,
)


def sample_training_timesteps(key: jax.Array, batch: int, num_timesteps: int) -> jax.Array:
    """t ~ Uniform{0, ..., T-1}, int32 ``[batch]``: every training timestep, including t = 0."""
    return jax.random.randint(key, (batch,), 0, num_timesteps, dtype=jnp.int32)


# fold_in constant of the label-dropout key: the keys of t, eps and dropout (split(key, 3)) stay what
# they are without labels.
_LABEL_DROPOUT_FOLD = 0x1AB3


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
    """Classifier-free guidance training: each label becomes ``null_label`` with probability ``rate``.

    ``key`` is the step's key (the labels' own key is ``fold_in(key, const)``), so a resumed run
    drops the same labels.
    """
    drop = jax.random.uniform(jax.random.fold_in(key, _LABEL_DROPOUT_FOLD), labels.shape) < rate
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def l_simple_loss(params: Any, apply_fn: Callable, x0: jax.Array, key: jax.Array,
                  alphas_cumprod: jax.Array, labels: jax.Array | None = None, *, label_dropout: float = 0.0,
                  null_label: int | None = None) -> jax.Array:
    """L_simple (DDPM Eq. 14 / DDIM's shared surrogate objective) on one batch.

    Args:
      params: UNet params.
      apply_fn: ``apply_fn(x_t, t, params, dropout_key) -> eps_theta`` [B, H, W, C] (the
        convention of ``ddim_jax.models.apply_model``).
      x0: data [B, H, W, C] in [-1, 1].
      key: PRNG key for t, eps and dropout.
      alphas_cumprod: [T].
      labels: class-conditional models: int32 [B], passed as ``apply_fn(..., dropout_key, labels)``
        after :func:`drop_labels` with ``label_dropout`` and ``null_label``.

    Returns:
      scalar: mean over batch and pixels of (eps - eps_theta(x_t, t))^2.
    """
    t_key, noise_key, dropout_key = jax.random.split(key, 3)
    batch = x0.shape[0]
    t = sample_training_timesteps(t_key, batch, alphas_cumprod.shape[0])
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = forward_marginal(x0, t, noise, alphas_cumprod)  # paper Eq. 4
    if labels is None:
        eps_pred = apply_fn(x_t, t, params, dropout_key)
    else:
        labels = drop_labels(key, labels, label_dropout, null_label)
        eps_pred = apply_fn(x_t, t, params, dropout_key, labels)
    # The reduction is float32 whatever the network computes in (a bf16 UNet returns float32).
    return jnp.mean(jnp.square(noise.astype(jnp.float32) - eps_pred.astype(jnp.float32)))


def make_train_step(config: ml_collections.ConfigDict) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict]]:
    """The (un-jitted) train step ``(state, batch [B, H, W, C]) -> (state, metrics)``; a
    class-conditional config's batch is ``(images, labels int32 [B])``.

    Metrics are device scalars: ``loss``, ``grad_norm`` (before clipping) and ``finite``
    (loss and gradient norm are finite). Nothing is fetched to the host here.
    """
    model = create_model(config)
    optimizer = make_optimizer(config)
    alphas_cumprod = make_alphas_cumprod(config.diffusion)
    ema_decay = config.training.ema_decay
    apply_fn = functools.partial(apply_model, model)
    num_classes = model.num_classes
    label_dropout = float(config.training.label_dropout)

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.rng, state.step)
        images, labels = batch if num_classes else (batch, None)
        loss, grads = jax.value_and_grad(l_simple_loss)(state.params, apply_fn, images, key, alphas_cumprod, labels,
                                                        label_dropout=label_dropout, null_label=num_classes)
        # Named scopes only label the ops (profiles: benchmarks/profile_cpu.py); they compute nothing.
        with jax.named_scope("optimizer"):
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        with jax.named_scope("ema"):
            ema_params = ema_update(state.ema_params, params, ema_decay)
        grad_norm = optax.tree.norm(grads)
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                                  opt_state=opt_state)
        return new_state, metrics

    return train_step


# The jitted functions are cached per (config, shardings) so that several runs in one process
# (tests, notebooks) reuse their compilations; the config travels as its JSON text (hashable).
def step_cache_key(config: ml_collections.ConfigDict) -> str:
    """The config's JSON with the keys that init and the train step do NOT depend on reset.

    Run-length keys (steps, logging and checkpoint intervals, grids) and the sampling section do
    not change the compiled step, so runs that differ only there share one compilation.
    """
    key = schema.config_from_json(schema.config_to_json(config))
    for name in ("num_train_steps", "log_every_steps", "checkpoint_every_steps", "sample_every_steps",
                 "num_grid_samples", "keep_checkpoints"):
        key.training[name] = 1
    key.sampling = schema.default_config().sampling
    return schema.config_to_json(key)


@functools.lru_cache(maxsize=8)
def _cached_init(config_json: str, replicated: NamedSharding) -> Callable[[], TrainState]:
    config = schema.config_from_json(config_json)
    return jax.jit(functools.partial(create_train_state, config), out_shardings=replicated)


@functools.lru_cache(maxsize=8)
def _cached_train_step(config_json: str, replicated: NamedSharding, data_sharding: NamedSharding):
    config = schema.config_from_json(config_json)
    return jax.jit(make_train_step(config), in_shardings=(replicated, data_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def jitted_init(config: ml_collections.ConfigDict, replicated: NamedSharding) -> Callable[[], TrainState]:
    """``init() -> TrainState`` compiled with its output on ``replicated``; cached per config."""
    return _cached_init(step_cache_key(config), replicated)


def jitted_train_step(config: ml_collections.ConfigDict, replicated: NamedSharding,
                      data_sharding: NamedSharding) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict]]:
    """:func:`make_train_step` compiled for a replicated state and a ``data_sharding`` batch (the
    state is donated); cached per config, so runs differing only in run length share it."""
    return _cached_train_step(step_cache_key(config), replicated, data_sharding)
