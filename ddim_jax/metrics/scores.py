"""KID, Inception Score and improved precision/recall on Inception features (host-side NumPy).

- :func:`kernel_inception_distance`: Bińkowski et al., "Demystifying MMD GANs", ICLR 2018. The
  unbiased MMD^2 estimate with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged
  over ``num_subsets`` random subsets of ``subset_size`` features of each set, drawn as torch-fidelity
  draws them (same defaults: 100 subsets of 1,000, seed 2020). A subset larger than either set is
  refused, as torch-fidelity does: capping it would make every subset the whole set (a std of 0).
- :func:`inception_score`: Salimans et al., "Improved Techniques for Training GANs", NeurIPS 2016.
  ``exp(E_x KL(p(y|x) || p(y)))`` per split, mean and std over ``num_splits`` contiguous splits
  (split i holds rows ``i N // num_splits .. (i + 1) N // num_splits - 1``, the original code's rule);
  ``p(y|x)`` is the softmax over all 1008 outputs of the FID Inception's ``fc``. The original
  TensorFlow code (and torch-fidelity's default ``logits_unbiased``) multiplies the pool features by
  the ``fc`` weight *without its bias*: pass ``unbiased_logits(features, inception)`` to match them.
- :func:`precision_recall`: Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing
  Generative Models", NeurIPS 2019. Each set's manifold is the union of balls around its points with
  radius the distance to the k-th nearest other point of the set; precision is the fraction of fake
  points inside the real manifold, recall the fraction of real points inside the fake one. Distances
  are computed in row blocks, so an [N, M] matrix never sits in memory at once.
"""

from __future__ import annotations

import numpy as np

from ddim_jax.metrics.inception import Inception

__all__ = ["kernel_inception_distance", "inception_score", "unbiased_logits", "precision_recall"]


def _check_features(name: str, feats: np.ndarray, min_rows: int = 2) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < min_rows:
        raise ValueError(f"{name} must be [N, D] with N >= {min_rows}, got shape {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return feats


def kernel_inception_distance(feats_a: np.ndarray, feats_b: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """Unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``: mean and std over subsets.

    Args:
      feats_a, feats_b: [N_a, D] (generated) and [N_b, D] (real) features.
      num_subsets: number of random subsets.
      subset_size: features per subset and set; at most ``min(N_a, N_b)`` (else ``ValueError``).
      seed: subsets are drawn with ``np.random.RandomState(seed)``: for each subset,
        ``rng.choice(N_a, m, replace=False)`` then ``rng.choice(N_b, m, replace=False)`` (torch-fidelity).

    Returns:
      ``(mean, std)`` of the per-subset estimates (std with ``ddof=0``).
    """
    a = _check_features("feats_a", feats_a)
    b = _check_features("feats_b", feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a and feats_b differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
    if subset_size > min(len(a), len(b)):
        raise ValueError(f"KID subset size {subset_size} is larger than a set ({len(a)} and {len(b)} features): "
                         "every subset would be the whole set; pass a smaller subset_size")
    dim, m = a.shape[1], subset_size
    rng = np.random.RandomState(seed)
    estimates = np.empty(num_subsets)
    for s in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx = (x @ x.T / dim + 1.0) ** 3
        k_yy = (y @ y.T / dim + 1.0) ** 3
        k_xy = (x @ y.T / dim + 1.0) ** 3
        off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates[s] = off_diagonal - 2.0 * k_xy.mean()
    return float(estimates.mean()), float(estimates.std())


def unbiased_logits(features: np.ndarray, inception: Inception) -> np.ndarray:
    """``features @ fc.weight.T`` without the bias: [N, 2048] -> [N, 1008], the original IS logits."""
    return np.asarray(features, np.float64) @ np.asarray(inception.fc_kernel, np.float64)


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score from logits [N, K] (K = 1008 for the FID Inception): mean and std over splits.

    The N rows are cut into ``num_splits`` contiguous parts, part i being rows
    ``i N // num_splits .. (i + 1) N // num_splits - 1`` (the original code; torch-fidelity with
    ``shuffle=False``); per part ``exp(mean_i sum_y p(y|x_i) (log p(y|x_i) - log p(y)))`` with
    ``p(y)`` the part's mean. The std uses ``ddof=0``. Needs ``N >= num_splits``.
    """
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    logits = _check_features("logits", logits, min_rows=num_splits)
    count = len(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    scores = []
    for index in range(num_splits):
        part = log_p[index * count // num_splits:(index + 1) * count // num_splits]
        log_py = np.log(np.exp(part).mean(axis=0, keepdims=True))
        kl = (np.exp(part) * (part - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _block_distances(rows: np.ndarray, cols: np.ndarray, cols_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(rows), len(cols)] from ||x||^2 + ||y||^2 - 2 x.y (clamped at 0)."""
    sq = _sq_norms(rows)[:, None] + cols_sq[None, :] - 2.0 * rows @ cols.T
    return np.sqrt(np.maximum(sq, 0.0))


def _knn_radii(feats: np.ndarray, k: int, block: int) -> np.ndarray:
    """Distance of each point to its k-th nearest *other* point of the same set, [N]."""
    sq = _sq_norms(feats)
    radii = np.empty(len(feats))
    for start in range(0, len(feats), block):
        dist = _block_distances(feats[start:start + block], feats, sq)
        # column k of the sorted row: index 0 is the point itself (distance 0)
        radii[start:start + block] = np.partition(dist, k, axis=1)[:, k]
    return radii


def _coverage(queries: np.ndarray, support: np.ndarray, radii: np.ndarray, block: int) -> float:
    """Fraction of ``queries`` within ``radii[j]`` of some ``support[j]``."""
    sq = _sq_norms(support)
    inside = 0
    for start in range(0, len(queries), block):
        dist = _block_distances(queries[start:start + block], support, sq)
        inside += int(np.any(dist <= radii[None, :], axis=1).sum())
    return inside / len(queries)


def precision_recall(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3,
                     block_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN radii.

    Args:
      real_feats: [N, D]; fake_feats: [M, D] (both need more than ``k`` rows).
      k: the neighbour whose distance is a point's radius (3 in the paper).
      block_size: rows of each distance block; memory is about ``block_size * max(N, M) * 8`` bytes.

    Returns:
      ``(precision, recall)`` in [0, 1].
    """
    real = _check_features("real_feats", real_feats, min_rows=k + 1)
    fake = _check_features("fake_feats", fake_feats, min_rows=k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_feats and fake_feats differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1 or block_size < 1:
        raise ValueError(f"need k >= 1 and block_size >= 1, got {k} and {block_size}")
    real_radii = _knn_radii(real, k, block_size)
    fake_radii = _knn_radii(fake, k, block_size)
    precision = _coverage(fake, real, real_radii, block_size)
    recall = _coverage(real, fake, fake_radii, block_size)
    return precision, recall
