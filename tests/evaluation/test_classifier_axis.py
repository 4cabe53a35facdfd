"""evaluate.py's classifier-scale axis (``--classifier DIR --classifier_scale 0,1,...``).

On ``configs/tiny.py`` with random params (``tiny_run``) guided by a random noisy classifier of the
ADM architecture made for 8x8 one-channel digits, so that the digits metric (and its accuracy)
runs offline. Converted classifier directories always take RGB (guided-diffusion's
``create_classifier`` has no channel flag), so the directory loader is replaced by one returning
this classifier; everything after it (finite weights, class count, the axis, identities, resume,
the table) is the code ``evaluate.py`` runs.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddim_jax import evaluation
from ddim_jax.evaluation import cells as cells_module
from ddim_jax.generation import loading
from ddim_jax.generation.adm_loading import ClassifierGuidance
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.guidance import classifier_cond_fn
from ddim_jax.io.checksums import tree_checksum
from ddim_jax.models.adm import ADMClassifier
from ddim_jax.models.adm_calls import ADMLogitsFn
from ddim_jax.models.adm_config import adm_classifier_kwargs

NUM_CLASSES = 10
NUM = 20


def _classifier_model():
    kwargs = adm_classifier_kwargs(dict(image_size=8, classifier_width=32, classifier_depth=1,
                                        classifier_attention_resolutions="4", classifier_channel_mult="1,2",
                                        classifier_num_head_channels=16, num_classes=NUM_CLASSES))
    return ADMClassifier(**dict(kwargs, in_channels=1))


@pytest.fixture(scope="module")
def digits_classifier():
    """A random 8x8x1 noisy classifier (every parameter perturbed, so no branch is zero)."""
    model = _classifier_model()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                                               jnp.zeros((1,), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: (rng.standard_normal(leaf.shape) / np.sqrt(max(1, np.prod(leaf.shape[:-1])))
                                        ).astype(np.float32), shapes)
    return ClassifierGuidance(classifier_cond_fn(ADMLogitsFn(model)), params, 1.0, NUM_CLASSES,
                              path="digits-classifier", fingerprint=tree_checksum(params))


@pytest.fixture()
def classifier_dir(monkeypatch, digits_classifier):
    """``--classifier digits-classifier`` loads :func:`digits_classifier` (its diffusion steps checked)."""
    def load(path, scale, num_timesteps):
        assert path == "digits-classifier" and num_timesteps == 1000
        return digits_classifier.at_scale(scale)

    monkeypatch.setattr(loading, "load_classifier", load)
    return "digits-classifier"


def test_cells_and_identities_of_the_axis(tiny_run, digits_classifier):
    loaded = loading.load_run(tiny_run)
    grid = evaluation.make_cells(steps=[2], etas=[0], skips=["uniform"], solvers=["ddim"], seeds=[0],
                                 sigma_hat=False, clip_x0=False, num_timesteps=1000, classifier_scales=[0, 2.5])
    assert [cell.name for cell in grid] == ["uniform_ddim_S2_eta0_cs0_seed0", "uniform_ddim_S2_eta0_cs2.5_seed0"]
    identities = [evaluation.image_identity(loaded, cell, num=NUM, ema=True, classifier=digits_classifier)
                  for cell in grid]
    assert identities[0]["classifier_scale"] == 0 and identities[1]["classifier_scale"] == 2.5
    assert identities[0]["classifier_sha256"] == digits_classifier.fingerprint
    assert all(identity["labels"] == "i mod K" for identity in identities)
    assert cells_module.identity_hash(identities[0]) != cells_module.identity_hash(identities[1])
    # An unguided cell's identity has no classifier keys: records of earlier releases stay valid.
    plain = evaluation.make_cells(steps=[2], etas=[0], skips=["uniform"], solvers=["ddim"], seeds=[0],
                                  sigma_hat=False, clip_x0=False, num_timesteps=1000)[0]
    assert not {"classifier_scale", "classifier_sha256"} & set(
        evaluation.image_identity(loaded, plain, num=NUM, ema=True))
    with pytest.raises(ValueError, match="needs the classifier"):
        evaluation.image_identity(loaded, grid[0], num=NUM, ema=True)
    with pytest.raises(SampleError, match="finite numbers >= 0"):
        evaluation.make_cells(steps=[2], etas=[0], skips=["uniform"], solvers=["ddim"], seeds=[0], sigma_hat=False,
                              clip_x0=False, num_timesteps=1000, classifier_scales=[-1.0])


def test_classifier_scale_axis_end_to_end_with_resume(tiny_run, tmp_path, classifier_dir, digits_classifier, capsys):
    out = tmp_path / "eval"
    options = evaluation.EvaluateOptions(workdir=tiny_run, steps=[3], classifier=classifier_dir,
                                         classifier_scales=[0, 30], num=NUM, batch_size=NUM, metrics=["digits"],
                                         out=str(out), progress=False)
    records = evaluation.run(options)
    assert [record["classifier_scale"] for record in records] == [0.0, 30.0]
    labels = np.arange(NUM) % NUM_CLASSES
    images = {}
    for record in records:
        assert 0.0 <= record["accuracy"] <= 1.0 and record["fd_digits"] > 0
        with np.load(record["samples"]) as data:
            np.testing.assert_array_equal(data["labels"], labels)
            images[record["classifier_scale"]] = data["images"]
    # Scale 0 is the unguided sampler (same keys, the gradient times 0), up to uint8 rounding.
    unguided = evaluation.run(evaluation.EvaluateOptions(workdir=tiny_run, steps=[3], num=NUM, batch_size=NUM,
                                                         metrics=["digits"], out=str(tmp_path / "plain"),
                                                         progress=False))
    with np.load(unguided[0]["samples"]) as data:
        assert np.abs(data["images"].astype(int) - images[0.0].astype(int)).max() <= 1
    # The scale reaches the sampler (its direction and size against guided-diffusion's are checked
    # in tests/test_adm_sampling.py).
    moved = np.abs(images[30.0].astype(int) - images[0.0].astype(int)).mean()
    assert moved > 1.0, moved
    table = (out / "table.md").read_text()
    assert "| solver | eta | classifier | S = 3 |" in table and "| ddim | 0 | 30 |" in table
    assert f"classifier params {digits_classifier.fingerprint[:8]}" in table
    capsys.readouterr()
    again = evaluation.run(options)   # the same identities: nothing sampled again
    assert "skipped" in capsys.readouterr().out and len(again) == 2
    assert len(json.loads((out / "table.json").read_text())) == 2


def test_classifier_with_another_class_set_is_refused(tiny_run, digits_classifier, monkeypatch):
    loaded = loading.load_run(tiny_run)
    conditional = dataclasses.replace(loaded, model=loaded.model.clone(num_classes=4))
    monkeypatch.setattr(loading, "load_classifier", lambda path, scale, steps: digits_classifier)
    with pytest.raises(SampleError, match="has 10 classes, the class-conditional model 4"):
        loading.load_checked_classifier(conditional, "digits-classifier")
    assert loading.load_checked_classifier(loaded, "digits-classifier") is digits_classifier


def test_batched_sampler_refuses_missing_or_out_of_range_classifier_labels(tiny_run, digits_classifier):
    from ddim_jax.generation.batching import BatchedSampler

    sampler = BatchedSampler(loading.load_run(tiny_run).with_classifier(digits_classifier), batch_size=2)
    with pytest.raises(ValueError, match="needs labels"):
        sampler._classifier(None)
    with pytest.raises(ValueError, match=r"in 0\.\.9"):
        sampler._classifier(np.array([3, 10]))
    assert set(sampler._classifier(np.array([0, 9]))) == {"cond_fn", "cond_fn_args"}
