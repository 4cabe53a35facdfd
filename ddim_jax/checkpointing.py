"""Orbax checkpoints of a training run, and the two entry points that sampling code uses.

A workdir holds ``checkpoints/<step>/`` written by an ``orbax.checkpoint.CheckpointManager`` with
five items:

- ``params``, ``ema_params``: the model parameters and their exponential moving average;
- ``train_extra``: the optimizer state, the step counter and the base PRNG key;
- ``progress``: JSON ``{"step": s, "data_position": s}`` (global batches consumed);
- ``config``: the run config as JSON.

Orbax writes each checkpoint into ``<step>.orbax-checkpoint-tmp`` and renames it when complete, so
a save interrupted at any moment (even by SIGKILL) is never listed as a step: the latest complete
checkpoint is what a restart resumes from.

Public entry points:

- :func:`load_for_sampling` -- ``(config, params, step)`` of the latest good checkpoint;
- :func:`export_workdir` -- turn any params (e.g. converted pretrained weights) into a step-0
  checkpoint that ``train.py`` resumes from and :func:`load_for_sampling` reads.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ddim_jax import config_utils
from ddim_jax.models import abstract_params, create_model
from ddim_jax.train_state import TrainState, image_shape, state_from_params

__all__ = [
    "CheckpointError",
    "checkpoint_dir",
    "make_manager",
    "save_checkpoint",
    "restore_checkpoint",
    "read_config",
    "load_for_sampling",
    "export_workdir",
]

CHECKPOINT_SUBDIR = "checkpoints"
_STATE_ITEMS = ("params", "ema_params", "train_extra")


class CheckpointError(ValueError):
    """A workdir has no usable checkpoint, cannot be written, or does not match the config."""


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    """Absolute path of the checkpoint directory of ``workdir`` (orbax needs absolute paths)."""
    return os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_SUBDIR)


def make_manager(workdir: str | os.PathLike, *, keep: int = 3, read_only: bool = False,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """An orbax ``CheckpointManager`` on ``<workdir>/checkpoints`` keeping the last ``keep`` steps."""
    directory = checkpoint_dir(workdir)
    if read_only and not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoints in {os.fspath(workdir)!r} ({directory} does not exist); "
                              "train first (train.py) or create one with export_workdir")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,  # leftovers of saves killed half-way
    )
    return ocp.CheckpointManager(
        directory, options=options,
        item_names=_STATE_ITEMS + ("progress", "config"),
    )


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, config: ml_collections.ConfigDict) -> int:
    """Saves a ``TrainState`` (asynchronously when the manager is async). Returns the step.

    The caller must have checked that the state is finite: nothing here looks at the values.
    """
    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        ema_params=ocp.args.StandardSave(state.ema_params),
        train_extra=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step, "rng": state.rng}),
        progress=ocp.args.JsonSave({"step": step, "data_position": step}),
        config=ocp.args.JsonSave(config.to_dict()),
    ))
    return step


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None):
    """Restores a full training state onto the shardings of ``abstract_state``.

    Args:
      manager: from :func:`make_manager`.
      abstract_state: a ``TrainState`` of ``jax.ShapeDtypeStruct`` (with ``sharding``) leaves.
      step: which step; default the latest complete one.

    Returns:
      ``(state, progress)`` with ``progress = {"step": s, "data_position": s}``.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no complete checkpoint in {manager.directory}")
    extra_target = {"opt_state": abstract_state.opt_state, "step": abstract_state.step, "rng": abstract_state.rng}
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state.params),
        ema_params=ocp.args.StandardRestore(abstract_state.ema_params),
        train_extra=ocp.args.StandardRestore(extra_target),
        progress=ocp.args.JsonRestore(),
    ))
    extra = restored["train_extra"]
    state = abstract_state.replace(params=restored["params"], ema_params=restored["ema_params"],
                                   opt_state=extra["opt_state"], step=extra["step"], rng=extra["rng"])
    return state, dict(restored["progress"])


def read_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
    """The run config stored with checkpoint ``step`` (validated)."""
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return config_utils.validate_config(config_utils.config_from_json(restored["config"]))


def load_for_sampling(workdir: str | os.PathLike, use_ema: bool = True):
    """Loads the latest complete checkpoint of a workdir for sampling.

    Args:
      workdir: a training workdir (or one written by :func:`export_workdir`).
      use_ema: return the EMA params (what the paper samples from) instead of the raw params.

    Returns:
      ``(config, params, step)``: the validated run config, the UNet params (a nested dict of
      arrays, for ``model.apply({"params": params}, x, t)``) and the checkpoint's step.

    Raises:
      CheckpointError: (a ``ValueError``) with a one-line message when the workdir is missing,
        has no complete checkpoint, or the checkpoint cannot be read.
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoints in {os.fspath(workdir)!r}: {directory} does not exist")
    manager = make_manager(workdir, read_only=True, async_save=False)
    try:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {directory} (only partial or no saves)")
        item = "ema_params" if use_ema else "params"
        try:
            config = read_config(manager, step)
            # An explicit sharding on this host's first device: the checkpoint may come from a run
            # with another topology (several devices or processes).
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                                  abstract_params(create_model(config), image_shape(config)))
            restored = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
        except CheckpointError:
            raise
        except Exception as err:  # re-raised as a one-line user error, with the cause chained
            raise CheckpointError(f"could not load {item} of checkpoint {step} in {directory}: "
                                  f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        return config, restored[item], step
    finally:
        manager.close()


def _check_params_match(config: ml_collections.ConfigDict, params: Any) -> None:
    expected = jax.tree_util.tree_flatten_with_path(abstract_params(create_model(config), image_shape(config)))[0]
    got = jax.tree_util.tree_flatten_with_path(params)[0]
    expected_map = {jax.tree_util.keystr(path): leaf.shape for path, leaf in expected}
    got_map = {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in got}
    for path in sorted(set(expected_map) | set(got_map)):
        if expected_map.get(path) != got_map.get(path):
            raise CheckpointError(f"params do not match the config's UNet at {path}: expected shape "
                                  f"{expected_map.get(path)}, got {got_map.get(path)}")


def export_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict, params: Any) -> None:
    """Writes ``params`` (as both params and EMA params) and ``config`` as a step-0 checkpoint.

    ``python train.py --config <same config> --workdir <workdir>`` then resumes (fine-tunes) from
    it with a fresh optimizer state, and :func:`load_for_sampling` reads it.

    Raises:
      CheckpointError: the workdir already holds checkpoints, or ``params`` does not fit the UNet
        that ``config`` describes.
      ConfigError: ``config`` is invalid.
    """
    config_utils.validate_config(config)
    _check_params_match(config, params)
    directory = checkpoint_dir(workdir)
    if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
        raise CheckpointError(f"{directory} already holds checkpoints; export into an empty workdir")
    params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), params)
    if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params)):
        raise CheckpointError("refusing to export params with NaN or infinite values")
    state = state_from_params(config, params)
    manager = make_manager(workdir, keep=config.training.keep_checkpoints, async_save=False)
    try:
        save_checkpoint(manager, state, config)
        manager.wait_until_finished()
    finally:
        manager.close()
