"""Sample-quality metrics: FID, KID, Inception Score, precision/recall, and the offline digits yardstick.

Public API::

    from ddim_jax.metrics import load_inception, inception_features, feature_statistics, frechet_distance
    inception = load_inception("pt_inception.safetensors")      # torchvision Inception3 names
    feats = inception_features(images_uint8, inception)          # float32 [N, 2048]; resize="pytorch-fid"
    mu, sigma = feature_statistics(feats)                          # float64 [2048], [2048, 2048]
    fid = frechet_distance(mu1, sigma1, mu2, sigma2)               # float, pytorch-fid's formula

    outputs = inception_outputs(images_uint8, inception)          # .features [N, 2048], .logits [N, 1008]
    kid_mean, kid_std = kernel_inception_distance(feats_a, feats_b)
    is_mean, is_std = inception_score(unbiased_logits(outputs.features, inception))
    precision, recall = precision_recall(real_feats, fake_feats, k=3)
    save_statistics("ref.npz", mu, sigma); mu, sigma = load_statistics("ref.npz")   # pytorch-fid .npz

    digits_metrics(images_uint8_8x8)        # {"fd_digits", "confidence"[, "accuracy"]} for the digits default

CLI: ``python -m ddim_jax.metrics {convert-inception, train-digits-classifier, stats} ...``.
"""

from ddim_jax.metrics.digits import (
    digits_features,
    digits_metrics,
    digits_reference_statistics,
    load_digits_classifier,
)
from ddim_jax.metrics.features import RESIZE_MODES, InceptionOutputs, inception_features, inception_outputs
from ddim_jax.metrics.frechet import (
    StatisticsFileError,
    feature_statistics,
    frechet_distance,
    load_statistics,
    save_statistics,
)
from ddim_jax.metrics.inception import (
    Inception,
    InceptionWeightsError,
    convert_inception_checkpoint,
    inception_from_state_dict,
    load_inception,
)
from ddim_jax.metrics.scores import inception_score, kernel_inception_distance, precision_recall, unbiased_logits

__all__ = [
    "RESIZE_MODES",
    "Inception",
    "InceptionOutputs",
    "InceptionWeightsError",
    "StatisticsFileError",
    "convert_inception_checkpoint",
    "digits_features",
    "digits_metrics",
    "digits_reference_statistics",
    "feature_statistics",
    "frechet_distance",
    "inception_features",
    "inception_from_state_dict",
    "inception_outputs",
    "inception_score",
    "kernel_inception_distance",
    "load_digits_classifier",
    "load_inception",
    "load_statistics",
    "precision_recall",
    "save_statistics",
    "unbiased_logits",
]
