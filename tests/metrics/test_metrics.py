"""Tests for ddim_jax.metrics: FID Inception parity with pytorch-fid, FID/KID/IS/PR, stats files, CLI.

pytorch-fid's real ``InceptionV3`` is built with random weights and random BatchNorm statistics
(``load_state_dict_from_url`` is monkeypatched, nothing is downloaded), the same state dict is saved
as safetensors and loaded with ``load_inception``, and the two networks are compared on uint8 images.
KID, IS and precision/recall are compared with plain NumPy / scikit-learn versions written here.
"""

import os
import warnings

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file
from scipy.stats import entropy
from sklearn.neighbors import NearestNeighbors

from benchmarks.torch_reference import random_fid_inception_state
from ddim_jax.metrics import (
    InceptionWeightsError,
    StatisticsFileError,
    feature_statistics,
    frechet_distance,
    inception_features,
    inception_outputs,
    inception_score,
    kernel_inception_distance,
    load_inception,
    load_statistics,
    precision_recall,
    save_statistics,
    unbiased_logits,
)
from ddim_jax.metrics.cli import main

torch = pytest.importorskip("torch")
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
pytorch_fid_score = pytest.importorskip("pytorch_fid.fid_score")


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """(pytorch-fid InceptionV3 in eval mode, its fc layer, our Inception, the .safetensors path, the state dict)."""
    state = random_fid_inception_state()
    patch = pytest.MonkeyPatch()
    patch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state)
    try:
        reference = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    finally:
        patch.undo()
    fc = torch.nn.Linear(2048, 1008)  # the wrapper drops Inception3.fc; rebuild it from the same state dict
    fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    path = str(tmp_path_factory.mktemp("inception") / "pt_inception.safetensors")
    save_file({k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    return reference, fc, load_inception(path), path, state


def _reference_features(reference, images_uint8):
    with torch.no_grad():
        x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
        return reference(x)[0][:, :, 0, 0].numpy()


def _rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("size, channels", [(32, 3), (64, 1), (299, 3)])
def test_features_and_logits_match_pytorch_fid(networks, size, channels):
    reference, fc, inception, _, _ = networks
    images = np.random.default_rng(size).integers(0, 256, (2, size, size, channels), dtype=np.uint8)
    expected = _reference_features(reference, np.repeat(images, 3 // channels, axis=-1))
    outputs = inception_outputs(images, inception, progress=False)
    assert outputs.features.shape == (2, 2048) and outputs.features.dtype == np.float32
    assert _rel_err(outputs.features, expected) <= 1e-4
    with torch.no_grad():
        expected_logits = fc(torch.from_numpy(expected)).numpy()
    assert outputs.logits.shape == (2, 1008)
    assert _rel_err(outputs.logits, expected_logits) <= 1e-4
    unbiased = unbiased_logits(outputs.features, inception)
    np.testing.assert_allclose(unbiased, expected_logits - fc.bias.detach().numpy(), rtol=0,
                               atol=1e-4 * np.abs(expected_logits).max())


def _clean_fid_resize(image):
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
        (299, 299), resample=Image.BICUBIC)) for c in range(3)]
    return np.clip(np.stack(channels, -1), 0, 255)


def test_clean_fid_mode_is_pil_bicubic_then_the_same_network(networks):
    reference, _, inception, _, _ = networks
    images = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    resized = np.stack([_clean_fid_resize(image) for image in images])
    with torch.no_grad():  # input already 299 x 299: pytorch-fid's interpolate is the identity
        expected = reference(torch.from_numpy(resized).permute(0, 3, 1, 2) / 255.0)[0][:, :, 0, 0].numpy()
    ours = inception_features(images, inception, resize="clean-fid", progress=False)
    assert _rel_err(ours, expected) <= 1e-4
    assert _rel_err(inception_features(images, inception, progress=False), expected) > 1e-3  # modes differ


def test_batching_pads_the_last_batch_without_changing_features(networks):
    inception = networks[2]
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    padded = inception_features(images, inception, batch_size=2, progress=False)  # [0, 1], [2, pad]
    first = inception_features(images[:2], inception, batch_size=2, progress=False)
    last = inception_features(images[[2, 0]], inception, batch_size=2, progress=False)
    np.testing.assert_allclose(padded, np.concatenate([first, last[:1]]), rtol=0, atol=1e-5 * np.abs(first).max())
    # sequences of images (TFDS sources, PNG directories) are covered by the stats CLI test


def test_bad_images_are_refused_by_name(networks):
    inception = networks[2]
    with pytest.raises(ValueError, match="images_uint8 must be uint8"):
        inception_features(np.zeros((2, 32, 32, 3), np.float32), inception, progress=False)
    with pytest.raises(ValueError, match=r"images_uint8 must have shape \[N, H, W, C\]"):
        inception_features(np.zeros((2, 32, 32, 2), np.uint8), inception, progress=False)
    with pytest.raises(ValueError, match="images_uint8 must have shape"):
        inception_features(np.zeros((32, 32, 3), np.uint8), inception, progress=False)
    with pytest.raises(ValueError, match="resize must be one of"):
        inception_features(np.zeros((2, 32, 32, 3), np.uint8), inception, resize="lanczos", progress=False)


def test_load_inception_refuses_missing_unexpected_and_misshaped_tensors(networks, tmp_path):
    state = {k: v.numpy() for k, v in networks[4].items()}
    state.pop("Mixed_6b.branch7x7_2.bn.running_var")
    state["Mixed_5b.extra.weight"] = np.zeros(3, np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(InceptionWeightsError) as info:
        load_inception(path)
    message = str(info.value)
    assert "Mixed_6b.branch7x7_2.bn.running_var" in message and "Mixed_5b.extra.weight" in message
    assert "fc.bias (1000,) (expected (1008,))" in message
    assert "num_batches_tracked" not in message  # ignored, as torchvision's BatchNorm buffers


def test_missing_weights_file_is_one_line_saying_where_and_how(tmp_path):
    missing = tmp_path / "pt_inception.safetensors"
    with pytest.raises(InceptionWeightsError) as info:
        load_inception(missing)
    message = str(info.value)
    assert "\n" not in message
    for needle in ("pt_inception-2015-12-05-6726825d.pth", "github.com/mseitzer/pytorch-fid",
                   "python -m ddim_jax.metrics convert-inception", str(missing)):
        assert needle in message


def test_convert_inception_cli_round_trips_the_pth(networks, tmp_path, capsys):
    pth, out = tmp_path / "pt_inception.pth", tmp_path / "sub" / "pt_inception.safetensors"
    torch.save(networks[4], pth)
    assert main(["convert-inception", str(pth), str(out)]) == 0
    converted = load_inception(out)
    np.testing.assert_array_equal(converted.variables["params"]["fc"]["kernel"], networks[4]["fc.weight"].numpy().T)
    np.testing.assert_array_equal(converted.variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                  networks[4]["Mixed_7c.branch_pool.bn.running_var"].numpy())
    assert [p for p in os.listdir(out.parent) if p.startswith(".tmp")] == []


def test_frechet_distance_matches_pytorch_fid_including_a_singular_covariance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(0.3, 1.2, size=(200, 16))
    stats_a, stats_b = feature_statistics(a), feature_statistics(b)
    assert stats_a[0].dtype == np.float64 and stats_a[1].shape == (16, 16)
    np.testing.assert_allclose(stats_a[1], np.cov(a, rowvar=False), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pytorch-fid passes sqrtm's deprecated disp
        expected = pytorch_fid_score.calculate_frechet_distance(*stats_a, *stats_b)
        assert frechet_distance(*stats_a, *stats_b) == pytest.approx(expected, rel=1e-9)
        assert frechet_distance(*stats_a, *stats_a) == pytest.approx(0.0, abs=1e-6)
        # N < D: rank-deficient covariances (the 50-image / 2048-d case of a quick FID)
        small_a, small_b = feature_statistics(a[:8]), feature_statistics(b[:10])
        expected = pytorch_fid_score.calculate_frechet_distance(*small_a, *small_b)
        assert frechet_distance(*small_a, *small_b) == pytest.approx(expected, rel=1e-6)
        # an exactly constant feature: sqrtm of the product fails and both add eps to the diagonal
        a_const, b_const = a[:8].copy(), b[:10].copy()
        a_const[:, 0] = b_const[:, 0] = 1.0
        const_a, const_b = feature_statistics(a_const), feature_statistics(b_const)
        expected = pytorch_fid_score.calculate_frechet_distance(*const_a, *const_b)
        assert frechet_distance(*const_a, *const_b) == pytest.approx(expected, rel=1e-6)


def _kid_reference(a, b, num_subsets, subset_size, seed):
    """MMD^2_u with k(x, y) = (x.y / d + 1)^3, by explicit loops over pairs; subsets drawn as
    torch-fidelity draws them."""
    rng = np.random.RandomState(seed)
    d, m = a.shape[1], subset_size
    values = []
    for _ in range(num_subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        k = lambda u, v: (float(np.dot(u, v)) / d + 1.0) ** 3  # noqa: E731
        same = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
        cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
        values.append(same / (m * (m - 1)) - 2.0 * cross / m**2)
    return np.mean(values), np.std(values)


def test_kid_matches_a_loop_implementation():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 8)), rng.normal(0.5, 1.0, size=(30, 8))
    ours = kernel_inception_distance(a, b, num_subsets=3, subset_size=12, seed=4)
    np.testing.assert_allclose(ours, _kid_reference(a, b, 3, 12, 4), rtol=1e-10)
    full = kernel_inception_distance(a, b, num_subsets=1, subset_size=30)   # all of b
    np.testing.assert_allclose(full, _kid_reference(a, b, 1, 30, 2020), rtol=1e-10)
    same_distribution = kernel_inception_distance(a[:20], a[20:], num_subsets=1, subset_size=20)[0]
    assert abs(same_distribution) < 0.2 * full[0]


def test_inception_score_matches_scipy_entropy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, size=(103, 17))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for i in range(10):   # the original code's split boundaries i * N // 10
        part = probs[i * 103 // 10:(i + 1) * 103 // 10]
        py = part.mean(0)
        scores.append(np.exp(np.mean([entropy(p, py) for p in part])))
    np.testing.assert_allclose(inception_score(logits), (np.mean(scores), np.std(scores)), rtol=1e-10)
    assert inception_score(np.zeros((20, 1008)), num_splits=2)[0] == pytest.approx(1.0)


def test_precision_recall_matches_sklearn_neighbours():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(60, 5)), rng.normal(0.7, 1.3, size=(45, 5))

    def manifold_coverage(support, queries, k=3):
        radii = NearestNeighbors(n_neighbors=k + 1).fit(support).kneighbors(support)[0][:, -1]
        dist = np.linalg.norm(queries[:, None, :] - support[None, :, :], axis=-1)
        return np.mean(np.any(dist <= radii[None, :], axis=1))

    expected = (manifold_coverage(real, fake), manifold_coverage(fake, real))
    assert 0.1 < expected[0] < 0.95 and 0.1 < expected[1] < 0.95  # a non-trivial case
    assert precision_recall(real, fake, k=3, block_size=7) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, fake, k=3) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, real) == (1.0, 1.0)


def test_statistics_npz_round_trip_and_errors(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    path = tmp_path / "ref.npz"
    save_statistics(path, mu, sigma)
    with np.load(path) as data:  # pytorch-fid's format: exactly mu and sigma
        assert sorted(data.files) == ["mu", "sigma"] and data["sigma"].dtype == np.float64
    loaded = load_statistics(path)
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)
    np.savez(tmp_path / "wrong.npz", mean=mu)
    np.savez(tmp_path / "pickled.npz", mu=np.array([{"a": 1}], dtype=object), sigma=sigma)
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=np.eye(4))
    (tmp_path / "junk.npz").write_text("not a zip")
    for name, needle in [("missing.npz", "not found"), ("wrong.npz", r"lacks mu, sigma \(has: mean\)"),
                         ("pickled.npz", "cannot read"), ("shape.npz", r"are not \[D\] and \[D, D\]"),
                         ("junk.npz", "not an .npz file")]:
        with pytest.raises(StatisticsFileError, match=needle) as info:
            load_statistics(tmp_path / name)
        assert "\n" not in str(info.value)


def test_stats_cli_from_npz_and_png_directory(networks, tmp_path, capsys):
    inception, weights = networks[2], networks[3]
    images = np.random.default_rng(7).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", images=images)
    (tmp_path / "pngs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "pngs" / f"{i:03d}.png")
    common = ["--weights", weights, "--batch-size", "2", "--no-progress"]  # the shape other tests compiled
    assert main(["stats", "--npz", str(tmp_path / "images.npz"), "--out", str(tmp_path / "a.npz"), *common]) == 0
    assert main(["stats", "--images", str(tmp_path / "pngs"), "--out", str(tmp_path / "b.npz"), *common]) == 0
    expected = feature_statistics(inception_features(images, inception, batch_size=2, progress=False))
    for name in ("a.npz", "b.npz"):
        mu, sigma = load_statistics(tmp_path / name)
        np.testing.assert_allclose(mu, expected[0], rtol=1e-6)
        np.testing.assert_allclose(sigma, expected[1], rtol=1e-5, atol=1e-8)
    assert "statistics of 2 images" in capsys.readouterr().out


def test_cli_user_errors_are_one_line_with_status_1(networks, tmp_path, capsys):
    weights = networks[3]
    np.savez(tmp_path / "noimages.npz", x=np.zeros(3))
    cases = [
        ([], "required: command"),
        (["stats", "--npz", "x.npz", "--out", "o.npz"], "required: --weights"),
        (["stats", "--npz", str(tmp_path / "none.npz"), "--weights", weights, "--out", "o.npz"], "no such file"),
        (["stats", "--npz", str(tmp_path / "noimages.npz"), "--weights", weights, "--out", "o.npz"],
         "has no 'images' array"),
        (["stats", "--images", str(tmp_path / "nodir"), "--weights", weights, "--out", "o.npz"], "not a directory"),
        (["stats", "--npz", "x.npz", "--weights", str(tmp_path / "w.safetensors"), "--out", "o.npz"],
         "pt_inception-2015-12-05-6726825d.pth"),
        (["stats", "--dataset", "cifar10", "--data-dir", str(tmp_path / "tfds"), "--weights", weights,
          "--out", "o.npz"], "tfds build cifar10"),
        (["convert-inception", str(tmp_path / "none.pth"), "o.safetensors"], "no such checkpoint"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m ddim_jax.metrics: error: ") and needle in err, \
            (argv, err)


def test_downsizing_resize_has_no_antialiasing_as_pytorch_fid():
    """A 512 x 512 image (larger than 299: where antialiasing would change the result) resized as
    pytorch-fid's F.interpolate(bilinear, align_corners=False)."""
    from ddim_jax.metrics.features import preprocess_for_inception

    image = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    ours = np.asarray(preprocess_for_inception(image))
    x = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255.0
    theirs = 2 * torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_inception_weights_must_be_floating_point(networks, tmp_path):
    state = {k: v.numpy() for k, v in networks[4].items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = state["fc.weight"].astype(np.int32)
    path = tmp_path / "int.safetensors"
    save_file(state, str(path))
    with pytest.raises(InceptionWeightsError, match="not floating-point: fc.weight"):
        load_inception(path)


def test_convert_inception_refuses_text_and_non_tensors_in_one_line(tmp_path, capsys):
    text = tmp_path / "text.pth"
    text.write_text("hello, not a checkpoint\n")
    lists = tmp_path / "lists.pth"
    torch.save({"a": [1, 2], "b": torch.zeros(2)}, lists)
    for path, needle in ((text, "is not a PyTorch checkpoint"), (lists, "not a state dict of tensors")):
        with pytest.raises(SystemExit) as exit_info:
            main(["convert-inception", str(path), str(tmp_path / "o.safetensors")])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m ddim_jax.metrics: error: ") and needle in err, err
