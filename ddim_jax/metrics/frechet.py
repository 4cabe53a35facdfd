"""Gaussian feature statistics, the Fréchet distance, and pytorch-fid's ``.npz`` statistics files.

FID (Heusel et al., NeurIPS 2017) fits a Gaussian to each set of features and reports

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

computed exactly as ``pytorch_fid.fid_score.calculate_frechet_distance`` does (Dougal Sutherland's
stable version): ``scipy.linalg.sqrtm`` of ``S_1 S_2``; if that is not finite, ``eps`` is added to
both diagonals and the root is taken again; an imaginary part on the diagonal above 1e-3 is an error,
a smaller one is dropped. Statistics files are pytorch-fid's ``.npz`` (``mu`` [D], ``sigma`` [D, D]),
so published reference statistics work unchanged.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from scipy import linalg

from ddim_jax.errors import UserError
from ddim_jax.io.atomic import save_npz

__all__ = ["feature_statistics", "frechet_distance", "save_statistics", "load_statistics", "StatisticsFileError"]


class StatisticsFileError(UserError, ValueError):
    """A statistics file that is missing or not in pytorch-fid's ``.npz`` format."""


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features, as pytorch-fid: ``np.mean(axis=0)``, ``np.cov(rowvar=False)``.

    Args:
      feats: [N, D] (N >= 2), any float dtype.

    Returns:
      float64 ``mu`` [D] and ``sigma`` [D, D] (unbiased, divided by N - 1).
    """
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"feats must be [N, D] with N >= 2, got shape {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError("feats contain NaN or infinite values")
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); pytorch-fid's formula.

    Args:
      mu1, mu2: [D] means; sigma1, sigma2: [D, D] covariances (float64 recommended).
      eps: added to both diagonals when ``sqrtm(sigma1 @ sigma2)`` is not finite (singular product).

    Returns:
      The squared distance as a Python float (what papers call FID when the features are Inception's).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mu1 and mu2 must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    expected = (mu1.shape[0], mu1.shape[0])
    if sigma1.shape != expected or sigma2.shape != expected:
        raise ValueError(f"sigma1 and sigma2 must be {expected}, got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: singular product; adding {eps} to the diagonal of the covariances",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray,
                    features: np.ndarray | None = None) -> None:
    """Atomically writes pytorch-fid's ``.npz``: ``mu`` float64 [D], ``sigma`` float64 [D, D], and
    optionally the ``features`` float32 [N, D] themselves (KID and precision/recall need them)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"save_statistics: need mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    extra = {}
    if features is not None:
        extra["features"] = np.asarray(features, np.float32)
        if extra["features"].ndim != 2 or extra["features"].shape[1] != mu.shape[0]:
            raise ValueError(f"save_statistics: features must be [N, {mu.shape[0]}], got {extra['features'].shape}")
    save_npz(path, mu=mu, sigma=sigma, **extra)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``mu`` and ``sigma`` from a pytorch-fid ``.npz`` (never unpickles).

    Raises:
      StatisticsFileError: missing file, not an ``.npz``, missing keys or inconsistent shapes
        (a one-line message).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise StatisticsFileError(f"statistics file not found: {path} "
                                  "(make one with: python -m ddim_jax.metrics stats ... --out FILE.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise StatisticsFileError(f"{path} is a single .npy array, not an .npz with 'mu' and 'sigma'")
            missing = [key for key in ("mu", "sigma") if key not in data.files]
            if missing:
                present = ", ".join(data.files) or "nothing"
                raise StatisticsFileError(f"{path} lacks {', '.join(missing)} (has: {present})")
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except StatisticsFileError:
        raise
    except Exception as err:  # zipfile / pickle-refusal / format errors
        raise StatisticsFileError(f"cannot read {path} as an .npz of statistics ({type(err).__name__}: {err})") from err
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise StatisticsFileError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D]")
    return mu, sigma
