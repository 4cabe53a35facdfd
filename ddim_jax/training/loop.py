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

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

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


def _unet_fields(config: ml_collections.ConfigDict) -> dict:
    """The UNet that ``config`` builds, as ``{field: value}`` (its defaults filled in)."""
    model = create_model(config)
    return {field.name: getattr(model, field.name) for field in dataclasses.fields(model)
            if field.name not in ("parent", "name")}


def _check_resume_compatible(stored: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                             workdir: str) -> None:
    """A workdir may only be resumed with the same model, data shape, diffusion, seed and batch;
    the refusal names the first field that differs (``config.model.dtype``, not two UNet reprs)."""
    sections = {"model": (_unet_fields(stored), _unet_fields(config)),
                "diffusion": (stored.diffusion.to_dict(), config.diffusion.to_dict())}
    checks = {f"{section}.{key}": (old.get(key), new.get(key))
              for section, (old, new) in sections.items() for key in sorted(set(old) | set(new))}
    for key in ("data.name", "data.image_size", "data.channels", "training.seed", "training.batch_size"):
        section, name = key.split(".")
        checks[key] = (stored[section][name], config[section][name])
    for key, (old, new) in checks.items():
        if old != new:
            raise checkpoints.CheckpointError(
                f"workdir {workdir!r} holds a run with a different config.{key} ({old!r} there, {new!r} now); "
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
    writer = RunWriter(workdir)
    if batches is None:  # a bad split or crop: refused now, not from inside the data iterator later
        input_pipeline.check_crop_fits(input_pipeline.open_source(config, config.data.train_split), config)
    abstract_state = abstract_train_state(config, replicated)
    manager = checkpoints.make_manager(workdir, keep=training.keep_checkpoints)
    try:
        state, start_step, last_saved_step = _restore_or_init(manager, abstract_state, config, workdir, writer,
                                                              replicated)
        if start_step >= training.num_train_steps:
            logger.info("Nothing to do: step %d >= num_train_steps %d", start_step, training.num_train_steps)
            return state
        if batches is None:
            batches = input_pipeline.train_batches(config, start_step=start_step,
                                                   process_index=jax.process_index(),
                                                   process_count=jax.process_count())
        num_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract_state.params))
        logger.info("Training %s: %d params, %d devices, %d processes, steps %d -> %d", config.data.name,
                    num_params, num_devices, jax.process_count(), start_step, training.num_train_steps)
        return _run_steps(config, state, batches, start_step, last_saved_step, manager, writer, mesh)
    finally:
        try:
            checkpoints.wait_for_saves(manager)  # a save in flight completes; a non-finite state is never saved
        finally:
            manager.close()


def _restore_or_init(manager: Any, abstract_state: TrainState, config: ml_collections.ConfigDict, workdir: str,
                     writer: RunWriter, replicated: NamedSharding) -> tuple[TrainState, int, int | None]:
    """``(state, start step, last saved step)``: the newest checkpoint that verifies, else a fresh state."""
    resumed = checkpoints.restore_latest_verified(
        manager, abstract_state, check_config=lambda stored: _check_resume_compatible(stored, config, workdir))
    if resumed is None:
        return jitted_init(config, replicated)(), 0, None
    state, progress, latest = resumed
    logger.info("Resumed from checkpoint %d in %s", latest, manager.directory)
    if writer.is_lead:
        truncate_metrics(writer.metrics_path, latest)
    return state, int(progress["data_position"]), latest


def _run_steps(config: ml_collections.ConfigDict, state: TrainState, batches: Iterator[np.ndarray], start_step: int,
               last_saved_step: int | None, manager: Any, writer: RunWriter, mesh: Any) -> TrainState:
    """Steps ``start_step .. num_train_steps - 1``: metrics every ``log_every_steps``, checkpoints and
    EMA grids on their intervals and at the end. Metrics are fetched only when logged (no host sync
    per step)."""
    training = config.training
    replicated = NamedSharding(mesh, PartitionSpec())
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    train_step = jitted_train_step(config, replicated, data_sharding)
    grid = GridSampler(config, replicated) if training.num_grid_samples > 0 else None
    schedule = learning_rate_schedule(config)
    pending: list[tuple[int, dict]] = []
    window = (time.perf_counter(), start_step)
    for step in range(start_step, training.num_train_steps):
        batch = jax.tree.map(lambda a: jax.make_array_from_process_local_data(data_sharding, a), next(batches))
        state, metrics = train_step(state, batch)
        pending.append((step, metrics))
        done = step + 1
        is_last = done == training.num_train_steps
        if done % training.log_every_steps == 0 or done % training.checkpoint_every_steps == 0 or is_last:
            _log_window(writer, pending, last_saved_step, window, done, float(schedule(step)), config)
            pending.clear()
            window = (time.perf_counter(), done)
        if done % training.checkpoint_every_steps == 0 or is_last:
            checkpoints.save_checkpoint(manager, state, config)  # state checked finite just above
            last_saved_step = done
        if grid is not None and (done % training.sample_every_steps == 0 or is_last):
            path = writer.write_grid(done, grid(state.ema_params), config.data.image_size)
            if path:
                logger.info("Wrote EMA samples to %s", path)
    return state


def _log_window(writer: RunWriter, pending: list[tuple[int, dict]], last_saved_step: int | None,
                window: tuple[float, int], done: int, learning_rate: float, config: ml_collections.ConfigDict) -> None:
    """Fetches the queued steps' metrics (stopping at a non-finite one) and writes one metrics row."""
    loss, grad_norm = _flush_metrics(pending, last_saved_step)
    window_start, window_step = window
    steps_per_sec = (done - window_step) / max(time.perf_counter() - window_start, 1e-9)
    record = {"step": done, "loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate,
              "steps_per_sec": steps_per_sec, "images_per_sec": steps_per_sec * config.training.batch_size,
              "time": time.time()}
    writer.write_metrics(record)
    logger.info("step %d/%d  loss %.5f  grad_norm %.3f  %.2f steps/s  %.1f images/s", done,
                config.training.num_train_steps, loss, grad_norm, steps_per_sec, record["images_per_sec"])
