"""Measuring a cell's images: a registry of metrics, each declaring what it needs and what it writes.

Every :class:`Metric` names its inputs (the FID Inception weights, reference statistics, reference
features, labels, a fixed image shape, a least number of images) and the record keys it fills; a
metric set is checked as a whole before any sampling (:func:`prepare_metrics`: one line naming
every missing input), then each metric's ``compute`` reads what it needs from a
:class:`Measurement`. Adding a metric is one :func:`register` call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.generation.shards import file_sha256
from ddim_jax.metrics import (
    digits_metrics,
    feature_statistics,
    frechet_distance,
    inception_outputs,
    inception_score,
    kernel_inception_distance,
    load_inception,
    load_statistics,
    precision_recall,
    unbiased_logits,
)
from ddim_jax.metrics.inception import FEATURE_DIM

KID_SUBSET_SIZE = 1000          # torch-fidelity's and the KID paper's default
IS_SPLITS = 10
PR_NEIGHBOURS = 3
PR_FEATURES = "inception-pool3"  # Kynkäänniemi et al. use VGG-16 fc2; we use the FID Inception's pool features
REFERENCE_SUBSET_SEED = 0


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric of the registry: what it needs, the record keys it writes, and how it computes them."""

    name: str
    keys: tuple[str, ...]
    compute: Callable[[Measurement], dict[str, float]]
    needs_inception: bool = False
    needs_reference_stats: bool = False
    needs_reference_features: bool = False
    uses_labels: bool = False
    image_shape: tuple[int, int, int] | None = None
    min_images: int = 2
    plotted_keys: tuple[str, ...] | None = None   # default: the keys without a ``_std`` suffix


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    REGISTRY[metric.name] = metric
    return metric


@dataclasses.dataclass
class MetricSetup:
    """What measuring needs, loaded (and checked) before any sampling starts. ``identity`` is
    everything that determines the numbers besides the images (it goes into each record's identity)."""

    metrics: tuple[str, ...]
    inception: Any = None
    reference_mu: np.ndarray | None = None
    reference_sigma: np.ndarray | None = None
    reference_features: np.ndarray | None = None
    resize: str = "pytorch-fid"
    batch_size: int = 200
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)

    def keys(self) -> list[str]:
        """The record keys the metrics write, in registry order."""
        return [key for name in self.metrics for key in REGISTRY[name].keys]

    def plotted_keys(self) -> list[str]:
        """The keys that get a table and a plot (not the ``_std`` companions)."""
        return [key for name in self.metrics for key in plotted_keys(name)]


def plotted_keys(name: str) -> tuple[str, ...]:
    metric = REGISTRY[name]
    if metric.plotted_keys is not None:
        return metric.plotted_keys
    return tuple(key for key in metric.keys if not key.endswith("_std"))


@dataclasses.dataclass
class Measurement:
    """One cell's images [N, H, W, C] uint8 and (for guided cells) labels; the Inception outputs are
    computed once, on first use."""

    images: np.ndarray
    setup: MetricSetup
    labels: np.ndarray | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @functools.cached_property
    def inception(self):
        return inception_outputs(self.images, self.setup.inception, resize=self.setup.resize,
                                 batch_size=self.setup.batch_size, progress=False)

    def reference_subset(self) -> np.ndarray:
        """As many reference features as there are images (a seeded subset), the equal-size sets
        precision / recall are defined on (Kynkäänniemi et al.; torch-fidelity)."""
        features = self.setup.reference_features
        count = min(len(features), len(self.images))
        chosen = np.random.RandomState(REFERENCE_SUBSET_SEED).choice(len(features), count, replace=False)
        return features[np.sort(chosen)]


def kid_subset_size(num: int, num_reference: int) -> int:
    """torch-fidelity's 1,000 when both sets hold that many; else half the smaller set, so that the
    subsets still vary (a subset of a whole set would give a std of 0)."""
    smaller = min(num, num_reference)
    return KID_SUBSET_SIZE if smaller >= KID_SUBSET_SIZE else max(2, smaller // 2)


def _fid(m: Measurement) -> dict[str, float]:
    mu, sigma = feature_statistics(m.inception.features)
    return {"fid": frechet_distance(mu, sigma, m.setup.reference_mu, m.setup.reference_sigma, notes=m.notes)}


def _kid(m: Measurement) -> dict[str, float]:
    size = kid_subset_size(len(m.images), len(m.setup.reference_features))
    mean, std = kernel_inception_distance(m.inception.features, m.setup.reference_features, subset_size=size)
    return {"kid": mean, "kid_std": std, "kid_subset_size": size}


def _is(m: Measurement) -> dict[str, float]:
    mean, std = inception_score(unbiased_logits(m.inception.features, m.setup.inception), num_splits=IS_SPLITS)
    return {"is": mean, "is_std": std}


def _pr(m: Measurement) -> dict[str, float]:
    reference = m.reference_subset()
    precision, recall = precision_recall(reference, m.inception.features[:len(reference)], k=PR_NEIGHBOURS)
    return {"precision": precision, "recall": recall}


def _digits(m: Measurement) -> dict[str, float]:
    return digits_metrics(m.images, m.labels, notes=m.notes)


register(Metric("fid", ("fid",), _fid, needs_inception=True, needs_reference_stats=True))
register(Metric("kid", ("kid", "kid_std", "kid_subset_size"), _kid, needs_inception=True,
                needs_reference_features=True, min_images=4, plotted_keys=("kid",)))
register(Metric("is", ("is", "is_std"), _is, needs_inception=True, min_images=IS_SPLITS))
register(Metric("pr", ("precision", "recall"), _pr, needs_inception=True, needs_reference_features=True,
                min_images=PR_NEIGHBOURS + 1))
register(Metric("digits", ("fd_digits", "confidence"), _digits, uses_labels=True, image_shape=(8, 8, 1),
                plotted_keys=("fd_digits", "confidence")))


def _check_metric_set(metrics: Sequence[str], image_shape: Sequence[int], num: int | None) -> tuple[str, ...]:
    unknown = [name for name in metrics if name not in REGISTRY]
    if unknown or not metrics:
        raise SampleError(f"unknown --metric {','.join(unknown) or '(none)'}; choose from {', '.join(REGISTRY)}")
    names = tuple(dict.fromkeys(metrics))
    for name in names:
        metric = REGISTRY[name]
        if metric.image_shape is not None and tuple(image_shape) != metric.image_shape:
            shape = "x".join(map(str, metric.image_shape))
            raise SampleError(f"--metric={name} measures {shape} digits; this model makes {tuple(image_shape)} images")
        if num is not None and num < metric.min_images:
            raise SampleError(f"--metric={name} needs --num at least {metric.min_images}, got {num}")
    return names


def _missing_inputs(names: Sequence[str], inception_weights: str | None, ref_stats: str | None) -> None:
    """One line naming every input the metrics need and were not given."""
    missing = []
    needs_stats = [n for n in names if REGISTRY[n].needs_reference_stats or REGISTRY[n].needs_reference_features]
    if needs_stats and not ref_stats:
        missing.append(f"--ref_stats FILE.npz (for {','.join(needs_stats)}: python -m ddim_jax.metrics stats "
                       "--dataset ... --features --out FILE.npz)")
    needs_inception = [n for n in names if REGISTRY[n].needs_inception]
    if needs_inception and not inception_weights:
        missing.append(f"--inception FILE.safetensors (for {','.join(needs_inception)}: the FID Inception "
                       "weights, python -m ddim_jax.metrics convert-inception "
                       "pt_inception-2015-12-05-6726825d.pth FILE)")
    if missing:
        raise SampleError("--metric needs " + " and ".join(missing))


def _load_reference(setup: MetricSetup, names: Sequence[str], ref_stats: str) -> None:
    try:
        setup.reference_mu, setup.reference_sigma = load_statistics(ref_stats)
    except ValueError as error:
        raise SampleError(str(error)) from error
    if setup.reference_mu.shape[0] != FEATURE_DIM:
        raise SampleError(f"{ref_stats} holds {setup.reference_mu.shape[0]}-d statistics; the FID Inception's "
                          f"features are {FEATURE_DIM}-d")
    if any(REGISTRY[name].needs_reference_features for name in names):
        with np.load(ref_stats, allow_pickle=False) as data:
            if "features" not in data.files:
                raise SampleError(f"{ref_stats} has statistics but no 'features', which "
                                  f"{','.join(n for n in names if REGISTRY[n].needs_reference_features)} need "
                                  "(write it with python -m ddim_jax.metrics stats ... --features)")
            features = np.asarray(data["features"], np.float32)
        if features.ndim != 2 or features.shape[1] != FEATURE_DIM or len(features) < 4:
            raise SampleError(f"{ref_stats}: 'features' must be [N >= 4, {FEATURE_DIM}], got {features.shape}")
        if not np.all(np.isfinite(features)):
            raise SampleError(f"{ref_stats}: 'features' hold NaN or infinite values")
        setup.reference_features = features


def prepare_metrics(metrics: Sequence[str], *, image_shape: Sequence[int], inception_weights: str | None,
                    ref_stats: str | None, resize: str = "pytorch-fid", batch_size: int = 200,
                    num: int | None = None) -> MetricSetup:
    """Checks the metric set against the images and N, names every missing input, then loads and
    checks the reference statistics and the Inception weights (one-line :class:`SampleError`)."""
    names = _check_metric_set(metrics, image_shape, num)
    _missing_inputs(names, inception_weights, ref_stats)
    setup = MetricSetup(names, resize=resize, batch_size=batch_size)
    identity: dict[str, Any] = {"metrics": list(names)}
    if any(REGISTRY[n].needs_reference_stats or REGISTRY[n].needs_reference_features for n in names):
        _load_reference(setup, names, ref_stats)
        identity["ref_stats_sha256"] = file_sha256(ref_stats)
    if any(REGISTRY[n].needs_inception for n in names):
        try:
            setup.inception = load_inception(inception_weights)
        except ValueError as error:
            raise SampleError(str(error)) from error
        identity.update(inception_sha256=file_sha256(inception_weights), resize=resize)
    if "pr" in names:
        identity["pr_features"] = PR_FEATURES
    setup.identity = identity
    return setup


def measure(images: np.ndarray, setup: MetricSetup, labels: np.ndarray | None = None) -> dict[str, Any]:
    """The requested metrics of uint8 images ``[N, H, W, C]``: a flat dict of floats, plus
    ``notes`` (a list of lines) when a computation needed a fallback (a singular covariance)."""
    measurement = Measurement(np.asarray(images), setup, labels)
    values: dict[str, Any] = {}
    for name in setup.metrics:
        values.update({key: float(value) for key, value in REGISTRY[name].compute(measurement).items()})
    if measurement.notes:
        values["notes"] = sorted(set(measurement.notes))
    return values
