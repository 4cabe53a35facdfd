"""What ``evaluate.py`` does, from its options: check everything, then sample and measure each cell.

Order: the options that need no model (N, batch size, seeds, guidance, ``--out``), then the model
and its classifier (``--classifier``: loaded once; each cell of the classifier-scale axis guides
with it at its own scale, a traced argument, so the scales share one compilation), the cells and the
metric setup (weights, reference statistics: every missing input named), then the lock on
``<out>/evaluate.lock`` (a second ``evaluate.py`` on the same ``--out`` is refused in one line), and
only then sampling. A cell whose identity is already in ``table.json`` is skipped; each measured
cell is merged into ``table.json`` at once (atomic read-merge-write), and after the first one the
plan's remaining time is estimated from the images/s measured.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

from ddim_jax.evaluation.cells import (
    Cell,
    identity_hash,
    image_identity,
    make_cells,
    sample_file_name,
)
from ddim_jax.evaluation.measuring import MetricSetup, measure, prepare_metrics
from ddim_jax.evaluation.reports import TABLE_FILE, merge_records, read_table, write_reports
from ddim_jax.generation.adm_loading import ClassifierGuidance
from ddim_jax.generation.loading import LoadedModel, load_checked_classifier, load_pretrained, load_run
from ddim_jax.generation.modes import run_samples
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.generation.shards import validate_seed
from ddim_jax.guidance import labels_for
from ddim_jax.io.locks import FileLock, LockHeldError
from ddim_jax.models.precision import PrecisionError, warn_if_bf16_on_cpu, with_precision
from ddim_jax.parallel.processes import is_lead_process

# Images per cell when --num is not given. Inception metrics: the paper's 50,000. Digits: 500, the
# N of the digits tables in docs/evaluation.md: there S = 10 and S = 20 differ by about three times
# the spread between seeds, and the default 4 cells take minutes on a CPU, not half an hour.
DEFAULT_NUM = {"inception": 50_000, "digits": 500}
LOCK_FILE = "evaluate.lock"


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """``evaluate.py``'s flags, parsed (axes as lists; ``None``: the default)."""

    workdir: str = "runs/digits"
    pretrained: str | None = None
    steps: Sequence[int] = (10, 20, 50, 100)
    etas: Sequence[float] = (0.0,)
    sigma_hat: bool = False
    skips: Sequence[str] | None = None
    solvers: Sequence[str] = ("ddim",)
    num: int | None = None
    seeds: Sequence[int] = (0,)
    metrics: Sequence[str] | None = None
    inception: str | None = None
    ref_stats: str | None = None
    resize: str = "pytorch-fid"
    out: str | None = None
    batch_size: int | None = None
    clip: bool = False
    ema: bool = True
    progress: bool = True
    precision: str | None = None
    guidances: Sequence[float] | None = None
    classifier: str | None = None
    classifier_scales: Sequence[float] | None = None


def out_dir_for(options: EvaluateOptions) -> str:
    """``--out``, else ``<workdir>/eval`` (``eval/<name>`` for a pretrained model); refused when it
    is a file or lies under one."""
    if options.out:
        out = options.out
    elif options.pretrained:
        out = os.path.join("eval", os.path.basename(os.path.normpath(options.pretrained)))
    else:
        out = os.path.join(options.workdir, "eval")
    path = os.path.abspath(out)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "" if path == os.path.abspath(out) else f" lies under {path}, which"
        raise SampleError(f"--out {out}{where} is a file, not a directory")
    return out


def check_options(options: EvaluateOptions) -> None:
    """The checks that need no model (one-line :class:`SampleError`)."""
    if options.num is not None and options.num < 2:
        raise SampleError(f"--num must be at least 2 (a covariance needs two images), got {options.num}")
    if options.batch_size is not None and options.batch_size < 1:
        raise SampleError(f"--batch_size must be at least 1, got {options.batch_size}")
    for seed in options.seeds:
        validate_seed(seed)
    if options.classifier_scales and options.classifier is None:
        raise SampleError("--classifier_scale needs --classifier DIR (a converted ADM classifier)")
    out_dir_for(options)


def _load(options: EvaluateOptions) -> tuple[LoadedModel, ClassifierGuidance | None]:
    """The model (unguided) and, with ``--classifier``, the classifier (at scale 1; each cell sets its own)."""
    loaded = (load_pretrained(options.pretrained) if options.pretrained
              else load_run(options.workdir, use_ema=options.ema))
    try:
        loaded = dataclasses.replace(loaded, model=with_precision(loaded.model, options.precision))
    except PrecisionError as error:
        raise SampleError(str(error)) from None
    warn_if_bf16_on_cpu(getattr(loaded.model, "dtype", "float32"), "evaluate.py")
    classifier = None if options.classifier is None else load_checked_classifier(loaded, options.classifier)
    return loaded, classifier


def _cells(options: EvaluateOptions, loaded: LoadedModel, classifier: ClassifierGuidance | None) -> list[Cell]:
    if options.guidances and not loaded.model_takes_labels:
        raise SampleError(f"--guidance needs a class-conditional model; {loaded.description} is unconditional")
    if options.guidances and not loaded.null_class and any(scale != 1 for scale in options.guidances):
        raise SampleError(f"--guidance (classifier-free) needs a null class; {loaded.description} has none "
                          "(use --classifier and --classifier_scale for classifier guidance)")
    guidances = list(options.guidances or [1.0]) if loaded.model_takes_labels else [None]
    scales = [None] if classifier is None else list(options.classifier_scales or [1.0])
    return make_cells(steps=options.steps, etas=options.etas,
                      skips=options.skips or [str(loaded.defaults.get("skip", "uniform"))],
                      solvers=options.solvers, seeds=options.seeds, sigma_hat=options.sigma_hat,
                      clip_x0=options.clip, num_timesteps=loaded.num_timesteps, guidances=guidances,
                      classifier_scales=scales)


def _setup(options: EvaluateOptions, loaded: LoadedModel) -> tuple[MetricSetup, int]:
    dataset = loaded.config.data.name if loaded.config is not None else None
    metrics = list(options.metrics or (["digits"] if dataset == "digits" else ["fid"]))
    num = options.num or DEFAULT_NUM["digits" if metrics == ["digits"] else "inception"]
    setup = prepare_metrics(metrics, image_shape=loaded.image_shape, inception_weights=options.inception,
                            ref_stats=options.ref_stats, resize=options.resize, num=num)
    return setup, num


def _lock(out_dir: str) -> FileLock:
    os.makedirs(out_dir, exist_ok=True)
    try:
        return FileLock(os.path.join(out_dir, LOCK_FILE)).acquire()
    except LockHeldError as err:
        raise SampleError(f"--out {out_dir} is being written by another evaluate.py ({err.holder}); wait for it "
                          "or choose another --out") from None
    except OSError as err:
        raise SampleError(f"--out {out_dir} cannot be locked: {err.strerror}") from None


def evaluate_cell(loaded: LoadedModel, cell: Cell, setup: MetricSetup, *, num: int, batch_size: int, out_dir: str,
                  ema: bool | None = None, progress: bool = True,
                  classifier: ClassifierGuidance | None = None) -> dict[str, Any] | None:
    """Samples ``num`` images for ``cell`` into ``<out_dir>/samples/<cell>_<hash>.npz`` and measures
    them. ``loaded`` is the unguided model; a cell with a classifier scale is guided by
    ``classifier`` at that scale. Returns the cell's record on process 0 (``None`` on the other
    processes)."""
    images_identity = image_identity(loaded, cell, num=num, ema=ema,
                                     classifier=None if cell.classifier_scale is None else classifier)
    out = os.path.join(out_dir, "samples", sample_file_name(cell, images_identity))
    if cell.classifier_scale is not None:
        loaded = loaded.with_classifier(classifier.at_scale(cell.classifier_scale))
    conditioning = {} if not cell.labelled else {"label": "all", "guidance": 1.0 if cell.guidance is None
                                                 else cell.guidance}
    start = time.perf_counter()
    images = run_samples(loaded, cell.spec, num=num, batch_size=batch_size, seed=cell.seed, out=out,
                         progress=progress, **conditioning)
    seconds = time.perf_counter() - start
    if images is None:
        return None
    identity = {**images_identity, **setup.identity}
    record: dict[str, Any] = {**identity, "identity": identity, "identity_sha256": identity_hash(identity),
                              "samples": out, "sample_seconds": seconds,
                              "images_per_second": num / max(seconds, 1e-9)}
    labels = labels_for(num, "all", loaded.num_classes) if cell.labelled else None
    record.update(measure(images, setup, labels))
    return record


def _plan_line(pending: Sequence[Cell], seconds: float, num: int) -> str:
    """The time left, from the first cell's: sampling costs about S network calls per image (the
    first cell's time also holds its compilation, so this errs high)."""
    left = seconds * sum(cell.spec.steps for cell in pending[1:]) / pending[0].spec.steps
    return (f"plan: {len(pending)} cell(s) x {num} images; the first (S = {pending[0].spec.steps}) took "
            f"{seconds:.0f} s ({num / max(seconds, 1e-9):.1f} img/s), so the {len(pending) - 1} left need about "
            f"{left / 60:.1f} min (time taken as proportional to S)")


def _pending(cells: Sequence[Cell], loaded: LoadedModel, setup: MetricSetup, num: int, ema: bool | None,
             known: set, lead: bool, classifier: ClassifierGuidance | None = None) -> list[Cell]:
    """The cells whose identity is not in ``table.json`` yet (the others are reported as skipped)."""
    pending = []
    for cell in cells:
        images = image_identity(loaded, cell, num=num, ema=ema,
                                classifier=None if cell.classifier_scale is None else classifier)
        if identity_hash({**images, **setup.identity}) in known:
            if lead:
                print(f"{cell.name}: already in {TABLE_FILE} (same identity), skipped")
        else:
            pending.append(cell)
    return pending


def run(options: EvaluateOptions) -> list[dict[str, Any]]:
    """Everything ``evaluate.py`` does; returns the records of ``table.json`` (process 0)."""
    check_options(options)
    out_dir = out_dir_for(options)
    loaded, classifier = _load(options)
    cells = _cells(options, loaded, classifier)
    setup, num = _setup(options, loaded)
    batch_size = options.batch_size or int(loaded.defaults.get("batch_size", 64))
    ema = None if options.pretrained else options.ema
    lead = is_lead_process()
    lock = _lock(out_dir) if lead else None
    try:
        records = read_table(out_dir)   # every process: all must skip the same cells (shards sync)
        if lead:
            guided = "" if classifier is None else f" guided by classifier {classifier.path}"
            print(f"evaluate: {loaded.description}{guided}; {len(cells)} cell(s) x {num} images; "
                  f"metrics {','.join(setup.metrics)}; out {out_dir}")
        pending = _pending(cells, loaded, setup, num, ema, {r.get("identity_sha256") for r in records}, lead,
                           classifier)
        for index, cell in enumerate(pending):
            start = time.perf_counter()
            record = evaluate_cell(loaded, cell, setup, num=num, batch_size=batch_size, out_dir=out_dir, ema=ema,
                                   progress=options.progress and lead, classifier=classifier)
            if record is None:
                continue
            records = merge_records(out_dir, [record])
            write_reports(records, out_dir, setup.plotted_keys())
            values = ", ".join(f"{key}={record[key]:.4g}" for key in setup.keys() if key in record)
            print(f"{cell.name}: {values} ({record['images_per_second']:.1f} img/s)")
            if index == 0 and len(pending) > 1:
                print(_plan_line(pending, time.perf_counter() - start, num), flush=True)
        if lead:
            print("wrote " + ", ".join(write_reports(records, out_dir, setup.plotted_keys())))
        return records
    finally:
        if lock is not None:
            lock.release()
