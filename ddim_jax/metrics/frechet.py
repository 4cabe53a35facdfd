"""Gaussian feature statistics, the Fréchet distance, and pytorch-fid's ``.npz`` statistics files.

FID (Heusel et al., NeurIPS 2017) fits a Gaussian to each set of features and reports

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

computed exactly as ``pytorch_fid.fid_score.calculate_frechet_distance`` does (Dougal Sutherland's
stable version): ``scipy.linalg.sqrtm`` of ``S_1 S_2`` without its singular-matrix warning (pytorch-fid
passes ``disp=False``); if that is not finite, ``eps`` is added to both diagonals and the root is
taken again; an imaginary part on the diagonal above 1e-3 is an error, a smaller one is dropped.
Inputs that are not Gaussian statistics (non-finite values, a covariance that is not symmetric or not
positive semi-definite) are refused first: ``sqrtm`` would return a meaningless number for them, or
hang on NaN. Statistics files are pytorch-fid's ``.npz`` (``mu`` [D], ``sigma`` [D, D]), so
published reference statistics work unchanged.
"""

from __future__ import annotations

import os
import warnings
import zipfile

import numpy as np
from scipy import linalg

from ddim_jax.errors import UserError
from ddim_jax.io.atomic import save_npz

__all__ = ["check_gaussian", "feature_statistics", "frechet_distance", "save_statistics", "load_statistics",
           "StatisticsFileError"]


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


# Relative tolerance of the symmetry and positive-semi-definiteness checks: far above the rounding of
# a float64 (or float32-stored) covariance, far below any real asymmetry or negative variance.
_COVARIANCE_RTOL = 1e-6


def check_gaussian(name: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``mu`` [D] and ``sigma`` [D, D] are finite and
    ``sigma`` is symmetric and positive semi-definite (within :data:`_COVARIANCE_RTOL`)."""
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D]")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{name}: mu or sigma holds NaN or infinite values")
    scale = max(float(np.max(np.abs(sigma), initial=0.0)), np.finfo(np.float64).tiny)
    if np.max(np.abs(sigma - sigma.T), initial=0.0) > _COVARIANCE_RTOL * scale:
        raise ValueError(f"{name}: sigma is not symmetric, so it is not a covariance")
    lowest = float(np.linalg.eigvalsh(sigma)[0]) if sigma.size else 0.0
    if lowest < -_COVARIANCE_RTOL * scale:
        raise ValueError(f"{name}: sigma is not positive semi-definite (eigenvalue {lowest:.3g}), "
                         "so it is not a covariance")


def _sqrtm(matrix: np.ndarray, notes: list[str] | None) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its singular-matrix warning (pytorch-fid passes ``disp=False``):
    a singular product is expected when some feature is constant over the images. The warning
    becomes a line of ``notes``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(matrix)
    if notes is not None and any(issubclass(w.category, linalg.LinAlgWarning) for w in caught):
        notes.append("singular covariance product (a feature constant over the images); square root taken "
                     "as pytorch-fid does")
    return root


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, notes: list[str] | None = None) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); pytorch-fid's formula.

    Args:
      mu1, mu2: [D] means; sigma1, sigma2: [D, D] covariances (float64 recommended).
      eps: added to both diagonals when ``sqrtm(sigma1 @ sigma2)`` is not finite (singular product).
      notes: if given, a line is appended when the product is singular (and when ``eps`` was added).

    Returns:
      The squared distance as a Python float (what papers call FID when the features are Inception's).

    Raises:
      ValueError: non-finite values, or a sigma that is not symmetric positive semi-definite.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mu1 and mu2 must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    expected = (mu1.shape[0], mu1.shape[0])
    if sigma1.shape != expected or sigma2.shape != expected:
        raise ValueError(f"sigma1 and sigma2 must be {expected}, got {sigma1.shape} and {sigma2.shape}")
    check_gaussian("frechet_distance (first)", mu1, sigma1)
    check_gaussian("frechet_distance (second)", mu2, sigma2)
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2), notes)
    if not np.isfinite(covmean).all():
        if notes is not None:
            notes.append(f"square root not finite; {eps} added to both diagonals (pytorch-fid)")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset), notes)
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
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic == b"\x93NUMPY":
        raise StatisticsFileError(f"{path} is a single .npy array, not an .npz with 'mu' and 'sigma'")
    if not zipfile.is_zipfile(path):
        raise StatisticsFileError(f"{path} is not an .npz file (not a zip archive); "
                                  "expected pytorch-fid's .npz with 'mu' and 'sigma'")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("mu", "sigma") if key not in data.files]
            if missing:
                present = ", ".join(data.files) or "nothing"
                raise StatisticsFileError(f"{path} lacks {', '.join(missing)} (has: {present})")
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except StatisticsFileError:
        raise
    except Exception as err:  # zipfile / pickle-refusal / format errors
        raise StatisticsFileError(f"cannot read {path} as an .npz of statistics ({type(err).__name__}: {err})") from err
    try:
        check_gaussian(path, mu, sigma)
    except ValueError as err:
        raise StatisticsFileError(str(err)) from None
    return mu, sigma
