"""Sampling from a trained run or a published checkpoint: the logic behind ``sample.py``.

``run(SampleOptions(...))`` validates the options (before anything is loaded), loads the model
(``ddim_jax/generation/loading.py``), fills what the options leave open from the run's ``config.sampling``
(steps, eta, skip, clipping, batch size and, for the ``samples`` mode, the number of images), and
runs one of the four modes of ``ddim_jax/generation/modes.py``. Every user error is a
:class:`~ddim_jax.generation.sampler_spec.SampleError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import jax

from ddim_jax.generation.loading import LoadedModel, load_checked_classifier, load_pretrained, load_run
from ddim_jax.generation.modes import run_consistency, run_interpolate, run_reconstruct, run_samples
from ddim_jax.generation.sampler_spec import SampleError, SamplerSpec, check_skip, validate_spec
from ddim_jax.guidance import parse_label
from ddim_jax.io.locks import FileLock, LockHeldError
from ddim_jax.models.precision import PRECISIONS, warn_if_bf16_on_cpu, with_precision
from ddim_jax.parallel.processes import is_lead_process
from ddim_jax.solvers import solver_problem
from ddim_jax.validation import eta_problem

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
    solver: str | None = None
    progress: bool = True
    # Class-conditional models only: "all" (image i of class i mod K; the default), a class number, or
    # None; and the classifier-free guidance scale (default 1: plain conditional).
    label: str | int | None = None
    guidance: float | None = None
    precision: str | None = None  # "fp32" | "bf16": the network's compute dtype (None: the run's)
    # Classifier guidance (a converted ADM classifier directory) and its scale.
    classifier: str | None = None
    classifier_scale: float | None = None


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
    if options.mode != "samples" and options.solver not in (None, "ddim"):
        raise SampleError(f"--mode={options.mode} decodes with DDIM; --solver is for --mode=samples")
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
    if options.eta is not None and eta_problem(options.eta) is not None:
        raise SampleError(f"--eta {eta_problem(options.eta)}")
    if options.steps is not None and options.steps < 1:
        raise SampleError(f"--steps must be at least 1, got {options.steps}")
    if options.guidance is not None and not (math.isfinite(options.guidance) and options.guidance >= 0):
        raise SampleError(f"--guidance must be a finite number >= 0 (0 = unconditional, 1 = conditional), "
                          f"got {options.guidance}")
    if options.precision is not None and options.precision not in PRECISIONS:
        raise SampleError(f"--precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}")
    if options.skip is not None:
        check_skip(options.skip)
    if options.classifier_scale is not None and not (math.isfinite(options.classifier_scale)
                                                     and options.classifier_scale >= 0):
        raise SampleError(f"--classifier-scale must be a finite number >= 0, got {options.classifier_scale}")
    if options.classifier_scale is not None and options.classifier is None:
        raise SampleError("--classifier-scale needs --classifier DIR (a converted ADM classifier)")
    if options.classifier is not None and options.mode != "samples":
        raise SampleError(f"--classifier guides --mode=samples; --mode={options.mode} decodes without it")


def check_output_path(out: str) -> str | None:
    """Refuse an ``--out`` that cannot be written (a directory, a path under a file, an unwritable
    or read-only directory), before anything is loaded or sampled. Creates missing directories and
    returns the directory it created (None when it existed), for the header line to say so."""
    if os.path.isdir(out):
        raise SampleError(f"--out {out} is a directory; give a file name ending in .png or .npz")
    directory = os.path.dirname(os.path.abspath(out))
    ancestor = directory
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise SampleError(f"--out {out} cannot be written: {ancestor} is a file, not a directory")
    created = None if os.path.isdir(directory) else os.path.dirname(out) or directory
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as err:
        raise SampleError(f"--out {out} cannot be written: {err.strerror or err} ({directory})") from None
    return created


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
    ``reconstruct`` never clips (see :func:`ddim_jax.generation.modes.run_reconstruct`).
    """
    defaults = loaded.defaults
    config_eta = float(defaults.get("eta", 0.0)) if options.mode == "samples" and not options.sigma_hat else 0.0
    spec = SamplerSpec(
        steps=int(_given(options.steps, defaults.get("num_steps", DEFAULT_STEPS))),
        eta=float(_given(options.eta, config_eta)),
        sigma_hat=bool(options.sigma_hat),
        skip=str(_given(options.skip, defaults.get("skip", "uniform"))),
        clip_x0=bool(_given(options.clip_x0, defaults.get("clip_x0", True))) and options.mode != "reconstruct",
        solver=str(_given(options.solver, defaults.get("solver", "ddim"))) if options.mode == "samples" else "ddim",
    )
    validate_spec(spec, loaded.num_timesteps)
    problem = solver_problem(spec.solver, clip_x0=spec.clip_x0, rederive_eps=loaded.rederive_eps)
    if problem is not None:  # this model's config keeps its own eps (sampling.rederive_eps=False)
        raise SampleError(f"--solver={spec.solver}: {problem} (add --no-clip or use another solver)")
    return spec


def resolve_num(options: SampleOptions, loaded: LoadedModel) -> int:
    """Images (rows for ``interpolate``): ``--num``, else ``sampling.num_samples`` of the run's config for
    the ``samples`` mode, else the mode's default."""
    if options.num is not None:
        return options.num
    if options.mode == "samples" and "num_samples" in loaded.defaults:
        return int(loaded.defaults["num_samples"])
    return DEFAULT_NUM[options.mode]


def resolve_conditioning(options: SampleOptions, loaded: LoadedModel) -> tuple[str | int | None, float]:
    """``(label, guidance)``: ``(None, 1.0)`` for an unconditional model (which refuses both flags);
    for a class-conditional one ``--label`` (default ``"all"``; ``reconstruct``: the real labels,
    None) and ``--guidance`` (default 1)."""
    if not loaded.num_classes:
        if options.label is not None or options.guidance is not None:
            raise SampleError(f"--label / --guidance need a class-conditional model; {loaded.description} is "
                              "unconditional (config.model.num_classes=0)")
        return None, 1.0
    if not loaded.null_class and options.guidance not in (None, 1):
        raise SampleError(f"--guidance (classifier-free) needs a null class; {loaded.description} has none "
                          "(use --classifier for classifier guidance)")
    default = None if options.mode == "reconstruct" else "all"
    try:
        label = parse_label(default if options.label is None else options.label, loaded.num_classes)
    except ValueError as error:
        raise SampleError(str(error)) from None
    return label, float(1.0 if options.guidance is None else options.guidance)


def default_out(options: SampleOptions, spec: SamplerSpec) -> str:
    """Where ``--out`` defaults to, under ``<workdir>/samples/`` (``samples/<name>/`` for ``--pretrained``):

    ``<mode>_<skip>_S<steps>_eta<eta>[_<solver>]_seed<seed>.png`` (``sigmahat`` instead of
    ``eta<eta>`` with ``--sigma_hat``; the solver only when it is not ddim), or
    ``<mode>_<skip>_seed<seed>.png`` for the modes that take a list of step counts
    (``reconstruct``, ``consistency``); ``_label<L>`` / ``_g<s>`` go before ``_seed`` when
    ``--label`` / ``--guidance`` are given.
    """
    if options.pretrained:
        directory = os.path.join("samples", re.sub(r"[^A-Za-z0-9._-]+", "_", options.pretrained.strip("/")))
    else:
        directory = os.path.join(options.workdir, "samples")
    # Class-conditional runs: the --label / --guidance asked for, so other scales do not overwrite it.
    conditioning = ("" if options.label is None else f"_label{options.label}") + (
        "" if options.guidance is None else f"_g{options.guidance:g}")
    if options.mode in DEFAULT_STEP_COUNTS:   # these modes use a list of step counts, and eta = 0
        return os.path.join(directory, f"{options.mode}_{spec.skip}{conditioning}_seed{options.seed}.png")
    variance = "sigmahat" if spec.sigma_hat else f"eta{spec.eta:g}"
    solver = "" if spec.solver == "ddim" else f"_{spec.solver}"
    return os.path.join(directory, f"{options.mode}_{spec.skip}_S{spec.steps}_{variance}{solver}{conditioning}"
                                   f"_seed{options.seed}.png")


def run(options: SampleOptions) -> Any:
    """Validate ``options``, load the model, run the mode; returns the mode's result.

    Raises:
      SampleError: for every user error (one-line message), before any sampling starts.
    """
    _validate_options(options)
    created = None if options.out is None else check_output_path(options.out)
    if jax.process_count() > 1 and options.mode != "samples":
        raise SampleError(f"--mode={options.mode} runs in one process; only --mode=samples spreads over "
                          f"{jax.process_count()} processes")
    if options.pretrained:
        loaded = load_pretrained(options.pretrained, with_run_config=options.mode == "reconstruct")
    else:
        loaded = load_run(options.workdir, use_ema=options.use_ema)
    loaded = dataclasses.replace(loaded, model=with_precision(loaded.model, options.precision))
    warn_if_bf16_on_cpu(getattr(loaded.model, "dtype", "float32"), "sample.py")
    if options.classifier is not None:
        scale = 1.0 if options.classifier_scale is None else options.classifier_scale
        loaded = loaded.with_classifier(load_checked_classifier(loaded, options.classifier, scale))
    spec = resolve_spec(options, loaded)
    label, guidance = resolve_conditioning(options, loaded)
    num = resolve_num(options, loaded)
    batch_size = options.batch_size or int(loaded.defaults.get("batch_size", DEFAULT_BATCH_SIZE))
    out = options.out or default_out(options, spec)
    created = check_output_path(out) or created
    # One lock for the output: under jax.distributed only process 0 holds it (all share the --out).
    lock = lock_output(out) if is_lead_process() else None
    try:
        return _run_mode(options, loaded, spec, num, batch_size, out, label, guidance, created)
    finally:
        if lock is not None:
            lock.release()


def _header(options: SampleOptions, loaded: LoadedModel, spec: SamplerSpec, steps: str, label: str | int | None,
            guidance: float, out: str, created: str | None) -> str:
    """The first output line: what runs, with which settings, where it writes."""
    conditioning = f" label={'real' if label is None else label} guidance={guidance:g}" if loaded.num_classes else ""
    if loaded.classifier is not None:
        conditioning += f" {loaded.classifier.description}"
    return (f"{options.mode}: {loaded.description}; S={steps} skip={spec.skip} solver={spec.solver} "
            f"{'sigma_hat' if spec.sigma_hat else f'eta={spec.eta:g}'} clip_x0={spec.clip_x0} seed={options.seed}"
            f"{conditioning} on {jax.local_device_count()} device(s) x {jax.process_count()} process(es); "
            f"out {out}" + (f" (created the directory {created})" if created else ""))


def _run_mode(options: SampleOptions, loaded: LoadedModel, spec: SamplerSpec, num: int, batch_size: int,
              out: str, label: str | int | None, guidance: float, created: str | None = None) -> Any:
    step_counts = None
    if options.mode in DEFAULT_STEP_COUNTS:   # reconstruct / consistency: one column per step count
        step_counts = resolve_step_counts(options.step_counts, options.mode, loaded.num_timesteps)
    if is_lead_process():
        steps = str(spec.steps) if step_counts is None else ",".join(str(count) for count in step_counts)
        print(_header(options, loaded, spec, steps, label, guidance, out, created))
    common = dict(num=num, batch_size=batch_size, seed=options.seed, out=out, progress=options.progress)
    if loaded.num_classes:
        common.update(label=label, guidance=guidance)
    if options.mode == "samples":
        return run_samples(loaded, spec, **common)
    if options.mode == "interpolate":
        return run_interpolate(loaded, spec, **common)
    if options.mode == "reconstruct":
        return run_reconstruct(loaded, spec, step_counts=step_counts, **common)
    return run_consistency(loaded, spec, step_counts=step_counts, **common)
