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

import logging
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ddim_jax.errors import UserError
from ddim_jax.io.checksums import host_array
from ddim_jax.models import create_model
from ddim_jax.parallel.meshes import global_data_mesh
from ddim_jax.training import checkpoints, input_pipeline, schema
from ddim_jax.training.objective import jitted_init, jitted_train_step
from ddim_jax.training.preview import GridSampler
from ddim_jax.training.run_directory import RunWriter, check_workdir, lock_workdir, truncate_metrics
from ddim_jax.training.train_state import (
    TrainState,
    abstract_train_state,
    learning_rate_schedule,
)

__all__ = ["NonFiniteLossError", "train_and_evaluate"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss (or gradient norm) became NaN or infinite; training stopped."""


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
            raise checkpoints.CheckpointError(
                f"workdir {workdir!r} holds a run with a different config.{key} ({old} there, {new} now); "
                "use a new workdir or the same config")


def _flush_metrics(pending: list[tuple[int, dict]], last_saved_step: int | None) -> tuple[float, float]:
    """Fetches queued step metrics; raises NonFiniteLossError at the first non-finite one.

    Returns the mean loss and mean grad norm of the queued steps.
    """
    host = [(step, {k: float(host_array(v)) for k, v in metrics.items()}) for step, metrics in pending]
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
    schema.validate_config(config)
    workdir = check_workdir(workdir)
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
        raise schema.ConfigError(
            f"config.training.batch_size: {training.batch_size} is not divisible by the {num_devices} devices")

    mesh = global_data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    writer = RunWriter(workdir)

    if batches is None:  # a bad split or crop: refused now, not from inside the data iterator later
        input_pipeline.check_crop_fits(input_pipeline.open_source(config, config.data.train_split), config)
    abstract_state = abstract_train_state(config, replicated)
    manager = checkpoints.make_manager(workdir, keep=training.keep_checkpoints)
    try:
        resumed = checkpoints.restore_latest_verified(
            manager, abstract_state, check_config=lambda stored: _check_resume_compatible(stored, config, workdir))
        latest = None
        if resumed is not None:
            state, progress, latest = resumed
            start_step = int(progress["data_position"])
            logger.info("Resumed from checkpoint %d in %s", latest, manager.directory)
            if writer.is_lead:
                truncate_metrics(writer.metrics_path, latest)
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
        grid = GridSampler(config, replicated) if training.num_grid_samples > 0 else None
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
                checkpoints.save_checkpoint(manager, state, config)  # state checked finite just above
                last_saved_step = done
            if grid is not None and (done % training.sample_every_steps == 0 or is_last):
                path = writer.write_grid(done, grid(state.ema_params), config.data.image_size)
                if path:
                    logger.info("Wrote EMA samples to %s", path)
        return state
    finally:
        try:
            checkpoints.wait_for_saves(manager)  # a save in flight completes; a non-finite state is never saved
        finally:
            manager.close()
