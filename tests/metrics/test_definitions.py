"""The metric definitions against a reference implementation (torch-fidelity, test-only) on the same
features, and the refusals of inputs a metric cannot measure (Fréchet distance, statistics files).
"""

import numpy as np
import pytest
import torch

from ddim_jax.metrics import (
    StatisticsFileError,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_statistics,
    precision_recall,
)
from ddim_jax.metrics import frechet as frechet_module

torch_fidelity = pytest.importorskip("torch_fidelity")
from torch_fidelity import metric_isc, metric_kid, metric_prc  # noqa: E402


def _features(seed, n, d=16, shift=0.0):
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_kid_matches_torch_fidelity_and_refuses_subsets_larger_than_a_set():
    fake, real = _features(0, 60), _features(1, 80, shift=0.3)
    ours = kernel_inception_distance(fake, real, num_subsets=7, subset_size=40, seed=5)
    theirs = metric_kid.kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=7,
                                               kid_subset_size=40, rng_seed=5, verbose=False)
    np.testing.assert_allclose(ours, (theirs["kernel_inception_distance_mean"],
                                      theirs["kernel_inception_distance_std"]), rtol=1e-10)
    # N at or below the subset size: every subset would be the whole set (a std of 0); refused.
    with pytest.raises(ValueError, match="subset"):
        kernel_inception_distance(fake, real, subset_size=1000)


@pytest.mark.parametrize("n", [30, 25])
def test_inception_score_matches_torch_fidelity_on_contiguous_splits(n):
    """The original's split boundaries i * N // 10 (torch-fidelity with shuffle=False), also when
    10 does not divide N."""
    logits = 3.0 * _features(2, n, d=12)
    ours = inception_score(logits)
    theirs = metric_isc.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    np.testing.assert_allclose(ours, (theirs["inception_score_mean"], theirs["inception_score_std"]), rtol=1e-10)
    with pytest.raises(ValueError, match="10"):
        inception_score(logits[:9])


def test_precision_recall_matches_torch_fidelity():
    fake, real = _features(3, 50), _features(4, 50, shift=0.5)
    ours = precision_recall(real, fake, k=3, block_size=16)
    theirs = metric_prc.prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
                                               prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    assert ours == pytest.approx((theirs["precision"], theirs["recall"]), abs=1e-6)   # theirs: a float32 mean


@pytest.mark.parametrize("sigma, message", [
    (np.diag([1.0, -1.0, 1.0]), "positive semi-definite"),
    (np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), "symmetric"),
    (np.full((3, 3), np.nan), "NaN or infinite"),
])
def test_frechet_distance_refuses_what_is_not_a_covariance(sigma, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(np.zeros(3), sigma, np.zeros(3), np.eye(3))


def test_frechet_eps_fallback_offsets_both_covariances(monkeypatch):
    """Force the branch: the first square root is not finite, the second must be of
    (sigma1 + eps I)(sigma2 + eps I) (pytorch-fid), not with one covariance offset."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    sigma1, sigma2 = a @ a.T, b @ b.T
    seen, real_sqrtm = [], frechet_module.linalg.sqrtm

    def fake_sqrtm(matrix, *args, **kwargs):
        seen.append(np.array(matrix))
        if len(seen) == 1:
            return np.full_like(matrix, np.nan)
        return real_sqrtm(matrix, *args, **kwargs)

    monkeypatch.setattr(frechet_module.linalg, "sqrtm", fake_sqrtm)
    eps = 1e-3
    value = frechet_distance(np.zeros(3), sigma1, np.ones(3), sigma2, eps=eps)
    offset = eps * np.eye(3)
    np.testing.assert_allclose(seen[1], (sigma1 + offset) @ (sigma2 + offset), rtol=1e-12)
    root = real_sqrtm((sigma1 + offset) @ (sigma2 + offset))
    expected = 3.0 + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root)
    assert value == pytest.approx(expected, rel=1e-9)


def test_frechet_singular_product_is_quiet_and_finite():
    """A feature that is exactly 0 on every image (a ReLU unit the samples never turn on, as in the
    digits classifier) makes the product exactly singular: no LinAlgWarning, as pytorch-fid (which
    calls sqrtm with disp=False), and the value is the closed form."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = frechet_distance(np.zeros(3), np.diag([4.0, 1.0, 0.0]), np.zeros(3), np.eye(3))
    assert value == pytest.approx((2 - 1) ** 2 + (1 - 1) ** 2 + (0 - 1) ** 2, abs=1e-6)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays, message", [
    (dict(mu=np.zeros(3), sigma=np.full((3, 3), np.nan)), "NaN or infinite"),
    (dict(mu=np.array([0.0, np.inf, 0.0]), sigma=np.eye(3)), "NaN or infinite"),
    (dict(mu=np.zeros(3), sigma=np.diag([1.0, -1.0, 1.0])), "positive semi-definite"),
    (dict(mu=np.zeros(2), sigma=np.array([[1.0, 0.9], [0.1, 1.0]])), "symmetric"),
])
def test_load_statistics_refuses_bad_values(tmp_path, arrays, message):
    with pytest.raises(StatisticsFileError, match=message):
        load_statistics(_write(tmp_path / "s.npz", **arrays))


def test_load_statistics_names_the_file_kind(tmp_path):
    npy = tmp_path / "mu.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(StatisticsFileError, match="single .npy array"):
        load_statistics(str(npy))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(StatisticsFileError) as info:
        load_statistics(str(garbage))
    assert "pickled" not in str(info.value) and "not an .npz" in str(info.value)
