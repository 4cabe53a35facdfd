"""A run's working directory: its lock, ``metrics.jsonl`` and the EMA sample grids."""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from ddim_jax.io import atomic, images
from ddim_jax.io.locks import FileLock, LockHeldError
from ddim_jax.parallel.processes import is_lead_process
from ddim_jax.training import checkpoints

METRICS_FILE = "metrics.jsonl"
SAMPLES_SUBDIR = "samples"
LOCK_FILE = "train.lock"

logger = logging.getLogger(__name__)


def require_workdir_name(workdir: str | os.PathLike) -> str:
    """The workdir as an absolute path; an empty name (which would mean the current directory) is refused."""
    if not os.fspath(workdir):
        raise checkpoints.CheckpointError("--workdir is empty; name a directory for the run")
    return os.path.abspath(os.fspath(workdir))


def check_workdir(workdir: str | os.PathLike) -> str:
    """Creates the workdir if needed and checks that it is writable; returns its absolute path."""
    workdir = require_workdir_name(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise checkpoints.CheckpointError(f"cannot create workdir {workdir!r}: {err.strerror}") from err
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise checkpoints.CheckpointError(f"workdir {workdir!r} is not writable")
    return workdir


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
        raise checkpoints.CheckpointError(
            f"workdir {workdir!r} is in use by another train.py ({err.holder}); wait for it to finish "
            "or use another --workdir") from None
    except OSError as err:
        raise checkpoints.CheckpointError(f"cannot lock workdir {workdir!r} ({path}): {err.strerror}") from err


def truncate_metrics(path: str, step: int) -> None:
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
        atomic.atomic_write(path, lambda f: f.write("".join(kept).encode()), ".jsonl")


class RunWriter:
    """Log lines for every process's stderr; JSONL metrics and PNG grids from process 0 only."""

    def __init__(self, workdir: str):
        self.is_lead = is_lead_process()
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
        atomic.save_png(path, images.make_grid(images.to_uint8(samples), upscale=upscale))
        return path
