"""Orbax checkpoints of a training run, and the two entry points that sampling code uses.

A workdir holds ``checkpoints/<step>/`` written by an ``orbax.checkpoint.CheckpointManager`` with
five items:

- ``params``, ``ema_params``: the model parameters and their exponential moving average;
- ``train_extra``: the optimizer state, the step counter and the base PRNG key;
- ``progress``: JSON ``{"step": s, "data_position": s, "checksums": {...}}`` (global batches
  consumed, and a sha256 of each of the three trees above, of the config and of the record
  ``{"step", "data_position"}`` itself, computed on the host from the state being saved before the
  asynchronous save starts);
- ``config``: the run config as JSON.

Every restore recomputes the checksums of what it read and compares them (orbax does not checksum
data), and checks that the recorded step is the directory's and, for training, that step and data
position are the restored state's step: a flipped byte, an edited config or progress record, a
truncated file or a missing item makes that step unusable (:class:`CorruptCheckpointError`), and
:func:`restore_latest_verified` / :func:`load_for_sampling` fall back to the newest step that
verifies, saying so in one line. Training moves a bad step aside (``<step>.corrupt``) before it
continues, so orbax's ``max_to_keep`` never counts it and never deletes the good step for it.

Orbax writes each checkpoint into ``<step>.orbax-checkpoint-tmp`` and renames it when complete, so
a save interrupted at any moment (even by SIGKILL) is never listed as a step; a step left
half-written by a file system without atomic renames fails its checksums. Sampling code uses
:func:`load_for_sampling` and :func:`export_workdir` (params, e.g. converted pretrained weights, as
a step-0 checkpoint that ``train.py`` resumes from).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ddim_jax.errors import UserError
from ddim_jax.io.atomic import os_error_in_chain
from ddim_jax.io.checksums import host_array, json_checksum, tree_checksum
from ddim_jax.models import abstract_params, create_model
from ddim_jax.parallel.processes import is_lead_process
from ddim_jax.training import checkpoint_noise, schema
from ddim_jax.training.train_state import TrainState, image_shape, state_from_params

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "checkpoint_dir",
    "make_manager",
    "save_checkpoint",
    "restore_checkpoint",
    "restore_latest_verified",
    "read_config",
    "load_for_sampling",
    "export_workdir",
]

logger = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
_STATE_ITEMS = ("params", "ema_params", "train_extra")
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(UserError, ValueError):
    """A workdir has no usable checkpoint, cannot be written, or does not match the config."""


class CorruptCheckpointError(CheckpointError):
    """One step does not verify (a checksum, an unreadable or missing item, a step that disagrees
    with its directory or its state): the fallback skips it for an older step."""


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
    checkpoint_noise.install()
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
    trees = {"params": state.params, "ema_params": state.ema_params, "train_extra": _extra_tree(state)}
    # Checksums of the values being saved, computed now: the save below runs in the background.
    checksums = {name: tree_checksum(tree) for name, tree in trees.items()}
    record, stored_config = {"step": step, "data_position": step}, config.to_dict()
    checksums.update(config=json_checksum(stored_config), progress=json_checksum(record))
    try:
        manager.save(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardSave(tree) for name, tree in trees.items()},
            progress=ocp.args.JsonSave({**record, "checksums": checksums}),
            config=ocp.args.JsonSave(stored_config),
        ))
    except Exception as err:
        raise_if_os_error(err, f"could not write checkpoint {step} in {manager.directory}")
        raise
    return step


def raise_if_os_error(err: BaseException, what: str) -> None:
    """Re-raises an error caused by the file system (disk full, read-only, ...) as a one-line
    :class:`CheckpointError`; returns for anything else (a bug, to be shown with its traceback)."""
    os_error = os_error_in_chain(err)
    if os_error is not None:
        raise CheckpointError(f"{what}: {os_error.strerror or os_error} (errno {os_error.errno})") from err


def wait_for_saves(manager: ocp.CheckpointManager) -> None:
    """``manager.wait_until_finished()`` with a file-system failure of the background save (disk
    full, ...) as a one-line :class:`CheckpointError`."""
    try:
        manager.wait_until_finished()
    except Exception as err:
        raise_if_os_error(err, f"could not finish writing a checkpoint in {manager.directory}")
        raise


def _extra_tree(state: Any) -> dict:
    return {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def _verify(name: str, value: Any, progress: dict, step: int, checksum: Callable[[Any], str] = tree_checksum) -> None:
    """Compare a restored tree (or JSON value, with ``json_checksum``) with the checksum saved with
    it. Checkpoints from before checksums existed have none, and are accepted as they are."""
    expected = progress["checksums"].get(name)
    if expected is None:
        return
    try:
        matches = checksum(value) == expected
    except (TypeError, ValueError):   # an edited JSON value that is not plain JSON (NaN, ...)
        matches = False
    if not matches:
        raise CorruptCheckpointError(f"checkpoint {step}: {name} does not match its checksum (the data is corrupted "
                                     "or was edited)")


def _read_record(manager: ocp.CheckpointManager, step: int) -> tuple[ml_collections.ConfigDict, dict]:
    """``(config, progress)`` of ``step``, verified: the progress record and the config match their
    checksums (when the checkpoint has them) and the recorded step is the directory's."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                                 progress=ocp.args.JsonRestore()))
        progress = dict(restored["progress"])
        progress["checksums"] = dict(progress.get("checksums") or {})
        record = {"step": progress["step"], "data_position": progress["data_position"]}
    except Exception as err:  # an item missing or garbled, a record without its fields
        raise CorruptCheckpointError(f"could not read the config and progress of checkpoint {step} "
                                     f"({_one_line(err)})") from err
    _verify("progress", record, progress, step, json_checksum)
    _verify("config", restored["config"], progress, step, json_checksum)
    if record["step"] != step:
        raise CorruptCheckpointError(f"checkpoint {step}: its progress record says step {record['step']}, which "
                                     "does not agree with the directory's step")
    try:
        return schema.validate_config(schema.config_from_json(restored["config"])), progress
    except Exception as err:
        raise CorruptCheckpointError(f"could not read the config of checkpoint {step} ({_one_line(err)})") from err


def _restore_state(manager: ocp.CheckpointManager, abstract_state: Any, step: int, progress: dict):
    """The train state of ``step``, its trees verified against ``progress`` and its step and data
    position against the record."""
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state.params),
        ema_params=ocp.args.StandardRestore(abstract_state.ema_params),
        train_extra=ocp.args.StandardRestore(_extra_tree(abstract_state)),
    ))
    for name in _STATE_ITEMS:
        _verify(name, restored[name], progress, step)
    extra = restored["train_extra"]
    state_step = int(host_array(extra["step"]))
    if not progress["step"] == progress["data_position"] == state_step:
        raise CorruptCheckpointError(
            f"checkpoint {step}: the progress record (step {progress['step']}, data position "
            f"{progress['data_position']}) does not agree with the restored state (step {state_step})")
    return abstract_state.replace(params=restored["params"], ema_params=restored["ema_params"],
                                  opt_state=extra["opt_state"], step=extra["step"], rng=extra["rng"])


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None):
    """Restores a full training state onto the shardings of ``abstract_state``.

    Args:
      manager: from :func:`make_manager`.
      abstract_state: a ``TrainState`` of ``jax.ShapeDtypeStruct`` (with ``sharding``) leaves.
      step: which step; default the latest complete one.

    Returns:
      ``(state, progress)`` with ``progress = {"step": s, "data_position": s, "checksums": {...}}``.

    Raises:
      CorruptCheckpointError: a tree, the config or the progress record does not match its stored
        checksum, or step and data position disagree with the directory or the restored state.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no complete checkpoint in {manager.directory}")
    _, progress = _read_record(manager, step)
    return _restore_state(manager, abstract_state, step, progress), progress


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first[:limit]}{'...' if len(first) > limit else ''}"


def _newest_verified(manager: ocp.CheckpointManager, load: Callable[[int], Any],
                     on_fallback: Callable[[str], None]) -> tuple[int, Any, dict[int, str]]:
    """``(step, load(step), bad)`` for the newest step whose ``load`` succeeds; ``bad`` maps each
    newer step that failed to its one-line reason. Raises CheckpointError when none loads."""
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {manager.directory} (only partial or no saves)")
    bad: dict[int, str] = {}
    checkpoint_noise.install()   # before the first restore: a failing one emits it while failing
    for step in steps:
        try:
            result = load(step)
        except CorruptCheckpointError as err:
            bad[step] = " ".join(str(err).split())
        except CheckpointError:
            raise  # e.g. the config does not fit this run: not a damaged checkpoint
        except Exception as err:  # unreadable files, a missing item, garbled metadata
            bad[step] = f"checkpoint {step} cannot be read ({_one_line(err)})"
        else:
            if bad:
                reason = " ".join(bad[max(bad)].split())   # one line, whatever the error text holds
                on_fallback(f"checkpoint {max(bad)} is unusable ({reason}); "
                            f"using checkpoint {step}, the newest one that verifies")
            return step, result, bad
    newest = steps[0]
    raise CheckpointError(f"no checkpoint in {manager.directory} verifies; the newest ({newest}): {bad[newest]}")


def restore_latest_verified(manager: ocp.CheckpointManager, abstract_state: Any,
                            check_config: Callable[[ml_collections.ConfigDict], None] | None = None,
                            on_fallback: Callable[[str], None] | None = None):
    """The newest checkpoint that reads and matches its checksums, onto ``abstract_state``.

    Steps that fail (corrupted, truncated, an item missing, garbled metadata) are skipped with one
    ``on_fallback`` line (default: a logged warning); process 0 then renames them to
    ``<step>.corrupt`` so that the steps saved next replace them and ``max_to_keep`` never deletes
    the good step in their favour. ``check_config(stored_config)`` may refuse the run (a different
    model or seed): that error propagates instead of falling back.

    Returns:
      ``(state, progress, step)``, or ``None`` when the workdir has no checkpoint at all.
    """
    if not manager.all_steps():
        return None
    on_fallback = on_fallback or logger.warning

    def load(step):
        stored, progress = _read_record(manager, step)   # verified before check_config judges it
        if check_config is not None:
            check_config(stored)
        return _restore_state(manager, abstract_state, step, progress), progress

    step, (state, progress), bad = _newest_verified(manager, load, on_fallback)
    if bad:
        _set_aside(manager, sorted(bad))
    return state, progress, step


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Renames bad steps to ``<step>.corrupt[.n]`` (process 0) and makes every process forget them."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("ddim_jax: checkpoints verified")
    if is_lead_process():
        directory = os.fspath(manager.directory)
        for step in steps:
            target = os.path.join(directory, f"{step}{CORRUPT_SUFFIX}")
            suffix = 0
            while os.path.exists(target):
                suffix += 1
                target = os.path.join(directory, f"{step}{CORRUPT_SUFFIX}.{suffix}")
            os.rename(os.path.join(directory, str(step)), target)
            logger.warning("moved the unusable checkpoint %d aside to %s", step, target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("ddim_jax: bad checkpoints moved aside")
    manager.reload()


def read_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
    """The run config stored with checkpoint ``step``, verified against its checksum and validated."""
    return _read_record(manager, step)[0]


def load_for_sampling(workdir: str | os.PathLike, use_ema: bool = True,
                      on_fallback: Callable[[str], None] | None = None):
    """Loads the newest checkpoint of a workdir that verifies, for sampling.

    Each step's stored checksum of the params item is checked; a step that is corrupted, truncated
    or incomplete is skipped with one ``on_fallback`` line (default: a logged warning) and the
    next older one is tried. Nothing is renamed or deleted here.

    Args:
      workdir: a training workdir (or one written by :func:`export_workdir`).
      use_ema: return the EMA params (what the paper samples from) instead of the raw params.
      on_fallback: called with a one-line message when the newest step is skipped.

    Returns:
      ``(config, params, step)``: the validated run config, the UNet params (a nested dict of
      arrays, for ``model.apply({"params": params}, x, t)``) and the checkpoint's step.

    Raises:
      CheckpointError: (a ``ValueError``) with a one-line message when the workdir is missing,
        has no complete checkpoint, or no checkpoint reads and verifies.
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoints in {os.fspath(workdir)!r}: {directory} does not exist")
    manager = make_manager(workdir, read_only=True, async_save=False)
    item = "ema_params" if use_ema else "params"

    def load(step):
        config, progress = _read_record(manager, step)
        try:
            # An explicit sharding on this host's first device: the checkpoint may come from a run
            # with another topology (several devices or processes).
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                                  abstract_params(create_model(config), image_shape(config)))
            restored = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
        except Exception as err:  # re-raised as a one-line error, with the cause chained
            raise CorruptCheckpointError(f"could not load {item} of checkpoint {step} ({_one_line(err)})") from err
        _verify(item, restored[item], progress, step)
        return config, restored[item]

    try:
        step, (config, params), _ = _newest_verified(manager, load, on_fallback or logger.warning)
        return config, params, step
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
    schema.validate_config(config)
    _check_params_match(config, params)
    directory = checkpoint_dir(workdir)
    if os.path.exists(os.fspath(workdir)) and not os.path.isdir(os.fspath(workdir)):
        raise CheckpointError(f"workdir {os.fspath(workdir)!r} is a file; export into a new directory")
    if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
        raise CheckpointError(f"{directory} already holds checkpoints; export into an empty workdir")
    params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), params)
    if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params)):
        raise CheckpointError("refusing to export params with NaN or infinite values")
    state = state_from_params(config, params)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create {directory}: {err.strerror}") from err
    manager = make_manager(workdir, keep=config.training.keep_checkpoints, async_save=False)
    try:
        save_checkpoint(manager, state, config)
        wait_for_saves(manager)
    finally:
        manager.close()
