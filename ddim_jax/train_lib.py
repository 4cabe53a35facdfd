"""Training a DDPM/DDIM noise-prediction UNet: ``train_and_evaluate(config, workdir)``.

The objective is the paper's L_simple (the same as DDPM; docs/conventions.md):

    L = E_{x0, t, eps} || eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t) ||^2,

with ``t`` uniform in ``0 .. T-1`` and the forward marginal of paper Eq. 4. One jitted step does
the forward/backward pass, the optax update (global-norm clip, Adam, linear warmup) and the EMA
update, with no host sync inside.

Data parallel: a ``Mesh`` over all devices of all processes with one ``data`` axis; the batch is
sharded along it and the train state is replicated. With ``jax.distributed.initialize`` done first
(``train.py`` does it), each process feeds its slice of the global batch through
``jax.make_array_from_process_local_data``. All randomness (init, timesteps, noise, dropout,
data order, flips) derives from ``config.training.seed`` and the step number, so results do not
depend on the device or process count, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ddim_jax import checkpointing, config_utils, images, input_pipeline
from ddim_jax.diffusion import forward_marginal
from ddim_jax.integrity import FileLock, LockHeldError
from ddim_jax.meshes import global_data_mesh
from ddim_jax.models import apply_model, create_model, eps_fn_for
from ddim_jax.sampling import sample
from ddim_jax.schedules import make_alphas_cumprod, timestep_sequence
from ddim_jax.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    ema_update,
    learning_rate_schedule,
    make_optimizer,
)

__all__ = [
    "NonFiniteLossError",
    "sample_training_timesteps",
    "l_simple_loss",
    "drop_labels",
    "make_train_step",
    "jitted_init",
    "jitted_train_step",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SAMPLES_SUBDIR = "samples"
LOCK_FILE = "train.lock"


class NonFiniteLossError(FloatingPointError):
    """The training loss (or gradient norm) became NaN or infinite; training stopped."""


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
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = ema_update(state.ema_params, params, ema_decay)
        grad_norm = optax.tree.norm(grads)
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                                  opt_state=opt_state)
        return new_state, metrics

    return train_step


def _host_value(array: jax.Array) -> np.ndarray:
    """A replicated (possibly multi-process) array's value on this host."""
    return np.asarray(array.addressable_data(0))


def _check_workdir(workdir: str) -> None:
    if not workdir:
        raise checkpointing.CheckpointError("--workdir is empty; name a directory for the run")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise checkpointing.CheckpointError(f"cannot create workdir {workdir!r}: {err.strerror}") from err
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise checkpointing.CheckpointError(f"workdir {workdir!r} is not writable")


def lock_workdir(workdir: str) -> FileLock:
    """An exclusive lock on the workdir for this process: ``train.lock`` for process 0 (and a
    single-process run), ``train.lock.<i>`` for process ``i`` of a multi-process run, so the
    processes of one run sharing a workdir do not exclude each other while a second run does.

    ``fcntl.flock``: the kernel releases it when the process dies, so a killed run never blocks.
    """
    index = jax.process_index()
    path = os.path.join(workdir, LOCK_FILE if index == 0 else f"{LOCK_FILE}.{index}")
    try:
        return FileLock(path).acquire()
    except LockHeldError as err:
        raise checkpointing.CheckpointError(
            f"workdir {workdir!r} is in use by another train.py ({err.holder}); wait for it to finish "
            "or use another --workdir") from None
    except OSError as err:
        raise checkpointing.CheckpointError(f"cannot lock workdir {workdir!r} ({path}): {err.strerror}") from err


def _truncate_metrics(path: str, step: int) -> None:
    """Drops the rows of ``metrics.jsonl`` after ``step`` (written before a crash, by steps that
    are about to be trained again), so a resumed run does not repeat them."""
    if not os.path.exists(path):
        return
    with open(path) as handle:
        lines = handle.readlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) > step:
                continue
        except (ValueError, KeyError, TypeError):
            if not line.endswith("\n"):
                continue  # a half-written last row
        kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        images.atomic_write(path, lambda f: f.write("".join(kept).encode()), ".jsonl")


def _check_resume_compatible(stored: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                             workdir: str) -> None:
    """A workdir may only be resumed with the same model, data shape, diffusion, seed and batch."""
    checks = {
        "model": (create_model(stored), create_model(config)),
        "diffusion": (stored.diffusion.to_dict(), config.diffusion.to_dict()),
        "data.name": (stored.data.name, config.data.name),
        "data.image_size": (stored.data.image_size, config.data.image_size),
        "data.channels": (stored.data.channels, config.data.channels),
        "training.seed": (stored.training.seed, config.training.seed),
        "training.batch_size": (stored.training.batch_size, config.training.batch_size),
    }
    for key, (old, new) in checks.items():
        if old != new:
            raise checkpointing.CheckpointError(
                f"workdir {workdir!r} holds a run with a different config.{key} ({old} there, {new} now); "
                "use a new workdir or the same config")


class _Writer:
    """Log lines for every process's stderr; JSONL metrics and PNG grids from process 0 only."""

    def __init__(self, workdir: str):
        self.is_lead = jax.process_index() == 0
        self.metrics_path = os.path.join(workdir, METRICS_FILE)
        self.samples_dir = os.path.join(workdir, SAMPLES_SUBDIR)

    def write_metrics(self, record: dict) -> None:
        if self.is_lead:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_grid(self, step: int, samples: np.ndarray, image_size: int) -> str | None:
        if not self.is_lead:
            return None
        if not np.all(np.isfinite(samples)):  # a picture is not worth stopping a run for
            logger.warning("EMA samples at step %d contain NaN/inf; drawn as black", step)
            samples = np.nan_to_num(samples, nan=-1.0, posinf=1.0, neginf=-1.0)
        path = os.path.join(self.samples_dir, f"step_{step:07d}.png")
        upscale = max(1, 32 // image_size)
        images.save_png(path, images.make_grid(images.to_uint8(samples), upscale=upscale))
        return path


def _flush_metrics(pending: list[tuple[int, dict]], last_saved_step: int | None) -> tuple[float, float]:
    """Fetches queued step metrics; raises NonFiniteLossError at the first non-finite one.

    Returns the mean loss and mean grad norm of the queued steps.
    """
    host = [(step, {k: float(_host_value(v)) for k, v in metrics.items()}) for step, metrics in pending]
    for step, values in host:
        if not values["finite"]:
            kept = (f"the last good checkpoint (step {last_saved_step}) is intact"
                    if last_saved_step is not None else "no checkpoint was written")
            raise NonFiniteLossError(
                f"loss became {values['loss']} (grad norm {values['grad_norm']}) at step {step}: "
                f"training stopped; {kept}. Try a lower optim.learning_rate or check the data")
    losses = [values["loss"] for _, values in host]
    norms = [values["grad_norm"] for _, values in host]
    return float(np.mean(losses)), float(np.mean(norms))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       batches: Iterator[np.ndarray] | None = None) -> TrainState:
    """Trains (or resumes) the run in ``workdir`` up to ``config.training.num_train_steps``.

    Args:
      config: a run config (validated here, before anything is read or traced).
      workdir: checkpoints, ``metrics.jsonl`` and ``samples/step_*.png`` go here. If it holds a
        checkpoint, training resumes from the latest complete one.
      batches: optional iterator of this process's local batches starting at the resume step
        (for tests); default: :func:`input_pipeline.train_batches`.

    Returns:
      The final TrainState (replicated over the mesh).

    Raises:
      ConfigError / DatasetNotPreparedError / CheckpointError: user errors (all ``ValueError``).
      NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is left intact.
    """
    config_utils.validate_config(config)
    if not os.fspath(workdir):
        raise checkpointing.CheckpointError("--workdir is empty; name a directory for the run")
    workdir = os.path.abspath(os.fspath(workdir))
    _check_workdir(workdir)
    lock = lock_workdir(workdir)
    try:
        return _train_locked(config, workdir, batches)
    finally:
        lock.release()


def _train_locked(config: ml_collections.ConfigDict, workdir: str,
                  batches: Iterator[np.ndarray] | None) -> TrainState:
    training = config.training
    num_devices = jax.device_count()
    if training.batch_size % num_devices:
        raise config_utils.ConfigError(
            f"config.training.batch_size: {training.batch_size} is not divisible by the {num_devices} devices")

    mesh = global_data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    writer = _Writer(workdir)

    if batches is None:  # a bad split or crop: refused now, not from inside the data iterator later
        input_pipeline.check_crop_fits(input_pipeline.open_source(config, config.data.train_split), config)
    abstract_state = abstract_train_state(config, replicated)
    manager = checkpointing.make_manager(workdir, keep=training.keep_checkpoints)
    try:
        resumed = checkpointing.restore_latest_verified(
            manager, abstract_state, check_config=lambda stored: _check_resume_compatible(stored, config, workdir))
        latest = None
        if resumed is not None:
            state, progress, latest = resumed
            start_step = int(progress["data_position"])
            logger.info("Resumed from checkpoint %d in %s", latest, manager.directory)
            if writer.is_lead:
                _truncate_metrics(writer.metrics_path, latest)
        else:
            state = jitted_init(config, replicated)()
            start_step = 0
        last_saved_step = latest

        if start_step >= training.num_train_steps:
            logger.info("Nothing to do: step %d >= num_train_steps %d", start_step, training.num_train_steps)
            return state

        if batches is None:
            batches = input_pipeline.train_batches(config, start_step=start_step,
                                                   process_index=jax.process_index(),
                                                   process_count=jax.process_count())
        train_step = jitted_train_step(config, replicated, data_sharding)
        grid = _GridSampler(config, replicated) if training.num_grid_samples > 0 else None
        schedule = learning_rate_schedule(config)
        num_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract_state.params))
        logger.info("Training %s: %d params, %d devices, %d processes, steps %d -> %d", config.data.name,
                     num_params, num_devices, jax.process_count(), start_step, training.num_train_steps)

        pending: list[tuple[int, dict]] = []
        window_start, window_step = time.perf_counter(), start_step
        for step in range(start_step, training.num_train_steps):
            local_batch = next(batches)
            batch = jax.tree.map(lambda a: jax.make_array_from_process_local_data(data_sharding, a), local_batch)
            state, metrics = train_step(state, batch)
            pending.append((step, metrics))
            done = step + 1
            is_last = done == training.num_train_steps
            if done % training.log_every_steps == 0 or done % training.checkpoint_every_steps == 0 or is_last:
                loss, grad_norm = _flush_metrics(pending, last_saved_step)
                now = time.perf_counter()
                steps_per_sec = (done - window_step) / max(now - window_start, 1e-9)
                record = {"step": done, "loss": loss, "grad_norm": grad_norm, "learning_rate": float(schedule(step)),
                          "steps_per_sec": steps_per_sec,
                          "images_per_sec": steps_per_sec * training.batch_size, "time": time.time()}
                writer.write_metrics(record)
                logger.info("step %d/%d  loss %.5f  grad_norm %.3f  %.2f steps/s  %.1f images/s", done,
                             training.num_train_steps, loss, grad_norm, steps_per_sec, record["images_per_sec"])
                pending.clear()
                window_start, window_step = time.perf_counter(), done
            if done % training.checkpoint_every_steps == 0 or is_last:
                checkpointing.save_checkpoint(manager, state, config)  # state checked finite just above
                last_saved_step = done
            if grid is not None and (done % training.sample_every_steps == 0 or is_last):
                path = writer.write_grid(done, grid(state.ema_params), config.data.image_size)
                if path:
                    logger.info("Wrote EMA samples to %s", path)
        return state
    finally:
        try:
            checkpointing.wait_for_saves(manager)  # a save in flight completes; a non-finite state is never saved
        finally:
            manager.close()


# The jitted functions are cached per (config, shardings) so that several runs in one process
# (tests, notebooks) reuse their compilations; the config travels as its JSON text (hashable).
def _step_cache_key(config: ml_collections.ConfigDict) -> str:
    """The config's JSON with the keys that init and the train step do NOT depend on reset.

    Run-length keys (steps, logging and checkpoint intervals, grids) and the sampling section do
    not change the compiled step, so runs that differ only there share one compilation.
    """
    key = config_utils.config_from_json(config_utils.config_to_json(config))
    for name in ("num_train_steps", "log_every_steps", "checkpoint_every_steps", "sample_every_steps",
                 "num_grid_samples", "keep_checkpoints"):
        key.training[name] = 1
    key.sampling = config_utils.default_config().sampling
    return config_utils.config_to_json(key)


@functools.lru_cache(maxsize=8)
def _cached_init(config_json: str, replicated: NamedSharding) -> Callable[[], TrainState]:
    config = config_utils.config_from_json(config_json)
    return jax.jit(functools.partial(create_train_state, config), out_shardings=replicated)


@functools.lru_cache(maxsize=8)
def _cached_train_step(config_json: str, replicated: NamedSharding, data_sharding: NamedSharding):
    config = config_utils.config_from_json(config_json)
    return jax.jit(make_train_step(config), in_shardings=(replicated, data_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def jitted_init(config: ml_collections.ConfigDict, replicated: NamedSharding) -> Callable[[], TrainState]:
    """``init() -> TrainState`` compiled with its output on ``replicated``; cached per config."""
    return _cached_init(_step_cache_key(config), replicated)


def jitted_train_step(config: ml_collections.ConfigDict, replicated: NamedSharding,
                      data_sharding: NamedSharding) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict]]:
    """:func:`make_train_step` compiled for a replicated state and a ``data_sharding`` batch (the
    state is donated); cached per config, so runs differing only in run length share it."""
    return _cached_train_step(_step_cache_key(config), replicated, data_sharding)


class _GridSampler:
    """Draws the same ``num_grid_samples`` x_T through DDIM (``config.sampling``) for every grid."""

    def __init__(self, config: ml_collections.ConfigDict, replicated: NamedSharding):
        # One function object per architecture: ``sample`` compiles once per run (and per process).
        self.eps_fn = eps_fn_for(create_model(config))
        size, channels = config.data.image_size, config.data.channels
        x_T = jax.random.normal(jax.random.PRNGKey(config.training.seed + 1),
                                (config.training.num_grid_samples, size, size, channels))
        self.x_T = jax.device_put(np.asarray(x_T), replicated)
        self.alphas_cumprod = jax.device_put(np.asarray(make_alphas_cumprod(config.diffusion)), replicated)
        self.seq = timestep_sequence(config.sampling.num_steps, config.diffusion.num_timesteps,
                                     kind=config.sampling.skip, alphas_cumprod=make_alphas_cumprod(config.diffusion))
        self.solver = config.sampling.solver
        self.eta = config.sampling.eta
        self.key = jax.device_put(np.asarray(jax.random.PRNGKey(config.training.seed + 2)), replicated)
        self.clip_x0 = config.sampling.clip_x0
        self.rederive_eps = config.sampling.rederive_eps
        # Class-conditional runs: grid image i is of class i mod K (plain conditional, no guidance).
        num_classes = config.model.num_classes
        self.labels = ((jax.device_put(np.arange(config.training.num_grid_samples, dtype=np.int32) % num_classes,
                                       replicated),) if num_classes else ())

    def __call__(self, ema_params: Any) -> np.ndarray:
        x0 = sample(self.eps_fn, self.x_T, self.seq, self.alphas_cumprod, self.eta,
                    self.key if self.eta > 0 else None, eps_fn_args=(ema_params, *self.labels),
                    clip_x0=self.clip_x0, rederive_eps=self.rederive_eps, solver=self.solver)
        return _host_value(x0)
