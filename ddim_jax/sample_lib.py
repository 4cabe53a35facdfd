"""Sampling from a trained run or a published checkpoint: the logic behind ``sample.py``.

``run(SampleOptions(...))`` validates the options (before anything is loaded), loads the model
(``ddim_jax/loading.py``), fills what the options leave open from the run's ``config.sampling``
(steps, eta, skip, clipping, batch size and, for the ``samples`` mode, the number of images), and
runs one of the four modes of ``ddim_jax/sample_modes.py``. Every user error is a
:class:`~ddim_jax.sample_spec.SampleError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import jax

from ddim_jax.integrity import FileLock, LockHeldError
from ddim_jax.loading import LoadedModel, load_pretrained, load_run
from ddim_jax.sample_modes import run_consistency, run_interpolate, run_reconstruct, run_samples
from ddim_jax.sample_spec import SKIP_KINDS, SampleError, SamplerSpec, validate_spec

MODES = ("samples", "interpolate", "reconstruct", "consistency")
OUTPUT_SUFFIXES = (".png", ".npz")
DEFAULT_NUM = {"samples": 64, "interpolate": 4, "reconstruct": 8, "consistency": 8}
DEFAULT_STEP_COUNTS = {"reconstruct": (10, 20, 50, 100), "consistency": (10, 20, 50, 100, 1000)}
# Used where neither the options nor the model's config say (pretrained checkpoints).
DEFAULT_STEPS = 20
DEFAULT_BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """Everything ``sample.py`` takes, as values (``None`` = the run's config or the mode default)."""

    workdir: str | None = "runs/digits"
    pretrained: str | None = None
    mode: str = "samples"
    steps: int | None = None
    eta: float | None = None
    sigma_hat: bool = False
    skip: str | None = None
    num: int | None = None
    batch_size: int | None = None
    seed: int = 0
    out: str | None = None
    use_ema: bool = True
    clip_x0: bool | None = None
    step_counts: Sequence[int] | None = None
    progress: bool = True


def _validate_options(options: SampleOptions) -> None:
    """Checks that need no model (run before anything is loaded)."""
    if options.mode not in MODES:
        raise SampleError(f"unknown --mode={options.mode!r}; choose one of {', '.join(MODES)}")
    if options.num is not None and options.num < 1:
        raise SampleError(f"--num must be at least 1, got {options.num}")
    if options.batch_size is not None and options.batch_size < 1:
        raise SampleError(f"--batch_size must be at least 1, got {options.batch_size}")
    if options.out is not None and not options.out.endswith(OUTPUT_SUFFIXES):
        raise SampleError(f"--out must end in .png (a grid) or .npz (uint8 images), got {options.out!r}")
    if options.mode != "samples" and (options.eta not in (None, 0) or options.sigma_hat):
        raise SampleError(
            f"--mode={options.mode} decodes with DDIM (eta=0); drop --eta / --sigma_hat"
        )
    if options.step_counts is not None:
        if not options.step_counts:
            raise SampleError("--step_counts is empty")
        for count in options.step_counts:
            if count < 1:
                raise SampleError(f"--step_counts must all be at least 1, got {count}")
    if options.mode in DEFAULT_STEP_COUNTS and options.steps is not None:
        raise SampleError(f"--mode={options.mode} decodes at each of --step_counts (e.g. --step_counts=10,50); "
                          "drop --steps")
    if options.mode == "reconstruct" and options.clip_x0:
        raise SampleError("--mode=reconstruct decodes without clipping, as the encoder runs (the pair is only "
                          "inverse that way); drop --clip")
    if options.eta is not None and not 0.0 <= options.eta <= 1.0:
        raise SampleError(f"--eta must be in [0, 1] (0 = DDIM, 1 = DDPM), got {options.eta}")
    if options.steps is not None and options.steps < 1:
        raise SampleError(f"--steps must be at least 1, got {options.steps}")
    if options.skip is not None and options.skip not in SKIP_KINDS:
        raise SampleError(f"unknown --skip={options.skip!r}; choose one of {', '.join(SKIP_KINDS)}")


def check_output_path(out: str) -> None:
    """Refuse an ``--out`` that cannot be written (a directory, a path under a file, an unwritable
    or read-only directory), before anything is loaded or sampled. Creates missing directories."""
    if os.path.isdir(out):
        raise SampleError(f"--out {out} is a directory; give a file name ending in .png or .npz")
    directory = os.path.dirname(os.path.abspath(out))
    ancestor = directory
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise SampleError(f"--out {out} cannot be written: {ancestor} is a file, not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as err:
        raise SampleError(f"--out {out} cannot be written: {err.strerror or err} ({directory})") from None


def lock_output(out: str) -> FileLock:
    """An exclusive lock on ``<out>.lock`` for as long as ``out`` (and its shards) are written."""
    try:
        return FileLock(out + ".lock").acquire()
    except LockHeldError as err:
        raise SampleError(f"--out {out} is being written by another sample.py ({err.holder}); wait for it "
                          "or choose another --out") from None
    except OSError as err:
        raise SampleError(f"--out {out} cannot be locked ({out}.lock): {err.strerror}") from None


def resolve_step_counts(
    requested: Sequence[int] | None, mode: str, num_timesteps: int
) -> tuple[int, ...]:
    """Step counts for ``reconstruct`` / ``consistency``.

    The defaults (10, 20, 50, 100[, 1000]) are clipped to T and de-duplicated; counts the user
    asked for must each be in 1..T.
    """
    if requested is None:
        return tuple(sorted({min(count, num_timesteps) for count in DEFAULT_STEP_COUNTS[mode]}))
    for count in requested:
        if not 1 <= count <= num_timesteps:
            raise SampleError(
                f"--step_counts value {count} is outside 1..T={num_timesteps} for this model"
            )
    return tuple(dict.fromkeys(int(count) for count in requested))


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def resolve_spec(options: SampleOptions, loaded: LoadedModel) -> SamplerSpec:
    """The sampler settings: the options where given, else the run's ``config.sampling``.

    Only the ``samples`` mode takes eta from the config; the other modes decode with DDIM, and
    ``reconstruct`` never clips (see :func:`ddim_jax.sample_modes.run_reconstruct`).
    """
    defaults = loaded.defaults
    config_eta = float(defaults.get("eta", 0.0)) if options.mode == "samples" and not options.sigma_hat else 0.0
    spec = SamplerSpec(
        steps=int(_given(options.steps, defaults.get("num_steps", DEFAULT_STEPS))),
        eta=float(_given(options.eta, config_eta)),
        sigma_hat=bool(options.sigma_hat),
        skip=str(_given(options.skip, defaults.get("skip", "uniform"))),
        clip_x0=bool(_given(options.clip_x0, defaults.get("clip_x0", True))) and options.mode != "reconstruct",
    )
    validate_spec(spec, loaded.num_timesteps)
    return spec


def resolve_num(options: SampleOptions, loaded: LoadedModel) -> int:
    """Images (rows for ``interpolate``): ``--num``, else ``sampling.num_samples`` of the run's config for
    the ``samples`` mode, else the mode's default."""
    if options.num is not None:
        return options.num
    if options.mode == "samples" and "num_samples" in loaded.defaults:
        return int(loaded.defaults["num_samples"])
    return DEFAULT_NUM[options.mode]


def default_out(options: SampleOptions, spec: SamplerSpec) -> str:
    """Where ``--out`` defaults to, under ``<workdir>/samples/`` (``samples/<name>/`` for ``--pretrained``):

    ``<mode>_<skip>_S<steps>_eta<eta>_seed<seed>.png`` (``sigmahat`` instead of ``eta<eta>`` with
    ``--sigma_hat``), or ``<mode>_<skip>_seed<seed>.png`` for the modes that take a list of step
    counts (``reconstruct``, ``consistency``).
    """
    if options.pretrained:
        directory = os.path.join("samples", re.sub(r"[^A-Za-z0-9._-]+", "_", options.pretrained.strip("/")))
    else:
        directory = os.path.join(options.workdir, "samples")
    if options.mode in DEFAULT_STEP_COUNTS:   # these modes use a list of step counts, and eta = 0
        return os.path.join(directory, f"{options.mode}_{spec.skip}_seed{options.seed}.png")
    variance = "sigmahat" if spec.sigma_hat else f"eta{spec.eta:g}"
    return os.path.join(directory, f"{options.mode}_{spec.skip}_S{spec.steps}_{variance}_seed{options.seed}.png")


def run(options: SampleOptions) -> Any:
    """Validate ``options``, load the model, run the mode; returns the mode's result.

    Raises:
      SampleError: for every user error (one-line message), before any sampling starts.
    """
    _validate_options(options)
    if options.out is not None:
        check_output_path(options.out)
    if jax.process_count() > 1:
        raise SampleError("sample.py runs in one process (it uses all of that host's devices); "
                          f"got {jax.process_count()} processes")
    if options.pretrained:
        loaded = load_pretrained(options.pretrained, with_run_config=options.mode == "reconstruct")
    else:
        loaded = load_run(options.workdir, use_ema=options.use_ema)
    spec = resolve_spec(options, loaded)
    num = resolve_num(options, loaded)
    batch_size = options.batch_size or int(loaded.defaults.get("batch_size", DEFAULT_BATCH_SIZE))
    out = options.out or default_out(options, spec)
    check_output_path(out)
    lock = lock_output(out)
    try:
        return _run_mode(options, loaded, spec, num, batch_size, out)
    finally:
        lock.release()


def _run_mode(options: SampleOptions, loaded: LoadedModel, spec: SamplerSpec, num: int, batch_size: int,
              out: str) -> Any:
    print(f"{options.mode}: {loaded.description}; S={spec.steps} skip={spec.skip} "
          f"{'sigma_hat' if spec.sigma_hat else f'eta={spec.eta:g}'} clip_x0={spec.clip_x0} "
          f"seed={options.seed} on {jax.local_device_count()} device(s)")
    common = dict(num=num, batch_size=batch_size, seed=options.seed, out=out, progress=options.progress)
    if options.mode == "samples":
        return run_samples(loaded, spec, **common)
    if options.mode == "interpolate":
        return run_interpolate(loaded, spec, **common)
    step_counts = resolve_step_counts(options.step_counts, options.mode, loaded.num_timesteps)
    if options.mode == "reconstruct":
        return run_reconstruct(loaded, spec, step_counts=step_counts, **common)
    return run_consistency(loaded, spec, step_counts=step_counts, **common)
