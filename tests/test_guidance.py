"""Class-conditional UNet, label dropout, classifier-free guidance in every solver, and sample.py's
``--label`` / ``--guidance`` on a tiny conditional run (configs/tiny_cond.py, 8x8 digits)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import configs.tiny
import configs.tiny_cond
from ddim_jax.generation import modes, program, sampler_spec
from ddim_jax.guidance import guided_eps_fn, labels_for
from ddim_jax.io.images import GRID_PADDING
from ddim_jax.models import UNet, abstract_params, create_model, eps_fn_for
from ddim_jax.sampling import encode, sample
from ddim_jax.schedules import make_alphas_cumprod, timestep_sequence
from ddim_jax.solvers import needs_key
from ddim_jax.training import input_pipeline, loop, objective
from ddim_jax.training.checkpoints import export_workdir
from ddim_jax.training.schema import ConfigError, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = (8, 8, 1)
K = 10


def _random_params(model, seed=0):
    """Random params of every leaf (not the near-zero output of a fresh init): conditional and
    unconditional estimates then differ clearly."""
    shapes = abstract_params(model, IMAGE)
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        noise = rng.standard_normal(spec.shape).astype(np.float32)
        name = path[-1].key
        if name == "kernel":
            return noise / np.sqrt(np.prod(spec.shape[:-1]))
        if name == "embedding":
            return noise
        return (1.0 if name == "scale" else 0.0) + 0.1 * noise

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def cond():
    config = configs.tiny_cond.get_config()
    model = create_model(config)
    return config, model, _random_params(model)


# ----------------------------------------------------------------------------- model and config

def test_num_classes_zero_is_todays_model_and_k_adds_one_table_of_k_plus_one_rows():
    base = create_model(configs.tiny.get_config())
    assert base.num_classes == 0
    plain = abstract_params(base, IMAGE)
    conditional = abstract_params(base.clone(num_classes=K), IMAGE)
    assert "class_embedding" not in plain
    assert jax.tree.structure(plain) == jax.tree.structure({k: v for k, v in conditional.items()
                                                           if k != "class_embedding"})
    assert conditional["class_embedding"]["embedding"].shape == (K + 1, 4 * base.ch)


def test_labels_change_the_output_and_none_is_the_null_class(cond):
    _, model, params = cond
    x = jax.random.normal(jax.random.PRNGKey(0), (4,) + IMAGE)
    t = jnp.array([10, 200, 500, 900], jnp.int32)
    out_a = model.apply({"params": params}, x, t, jnp.zeros(4, jnp.int32))
    out_b = model.apply({"params": params}, x, t, jnp.ones(4, jnp.int32))
    assert float(jnp.max(jnp.abs(out_a - out_b))) > 1e-3
    np.testing.assert_array_equal(model.apply({"params": params}, x, t),
                                  model.apply({"params": params}, x, t, jnp.full(4, K, jnp.int32)))
    with pytest.raises(ValueError, match="unconditional UNet"):
        model.clone(num_classes=0).apply({"params": {k: v for k, v in params.items() if k != "class_embedding"}},
                                         x, t, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="labels must be integers"):
        model.apply({"params": params}, x, t, jnp.zeros(4, jnp.float32))


@pytest.mark.parametrize("key, value, match", [
    ("label_dropout", 1.0, r"config\.training\.label_dropout: must be in \[0, 1\)"),
    ("label_dropout", -0.1, r"config\.training\.label_dropout"),
])
def test_label_dropout_is_validated(key, value, match):
    config = configs.tiny_cond.get_config()
    config.training[key] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_num_classes_must_match_the_dataset():
    config = configs.tiny_cond.get_config()
    config.model.num_classes = 7
    with pytest.raises(ConfigError, match=r"config\.model\.num_classes: dataset 'digits' has 10 classes"):
        validate_config(config)
    for name in ("digits_cond", "mnist_cond", "cifar10_cond", "tiny_cond"):
        validate_config(__import__(f"configs.{name}", fromlist=["get_config"]).get_config())


# ----------------------------------------------------------------------------- training

def test_label_dropout_rate_and_determinism():
    labels = jnp.asarray(np.arange(40_000) % K, jnp.int32)
    key = jax.random.PRNGKey(3)
    for rate in (0.1, 0.3):
        dropped = np.asarray(objective.drop_labels(key, labels, rate, K))
        is_null = dropped == K
        # 40k Bernoulli draws: std of the fraction ~0.0015 at 0.1; a rate of 0 or 2x is far outside.
        assert abs(is_null.mean() - rate) < 0.01, is_null.mean()
        np.testing.assert_array_equal(dropped[~is_null], np.asarray(labels)[~is_null])
        np.testing.assert_array_equal(dropped, np.asarray(objective.drop_labels(key, labels, rate, K)))
    assert not np.array_equal(objective.drop_labels(key, labels, 0.1, K),
                              objective.drop_labels(jax.random.PRNGKey(4), labels, 0.1, K))


def test_the_loss_sees_dropped_labels_at_the_configured_rate():
    """Through l_simple_loss itself: the labels that reach the network are dropped at the rate."""
    seen = []

    def apply_fn(x_t, t, params, dropout_key, labels):
        seen.append(labels)
        return jnp.zeros_like(x_t)

    x0 = jnp.zeros((20_000, 1, 1, 1))
    labels = jnp.zeros(20_000, jnp.int32)
    objective.l_simple_loss(None, apply_fn, x0, jax.random.PRNGKey(0), make_alphas_cumprod(
        configs.tiny.get_config().diffusion), labels, label_dropout=0.2, null_label=K)
    assert abs(float(jnp.mean(seen[0] == K)) - 0.2) < 0.015


def test_pipeline_yields_images_with_their_digit_labels():
    from sklearn.datasets import load_digits

    config = configs.tiny_cond.get_config()
    config.data.random_flip = False
    images, labels = input_pipeline.train_dataset(config)[0]
    plain = input_pipeline.train_dataset(configs.tiny.get_config())[0]
    assert images.shape == (8,) + IMAGE and labels.shape == (8,) and labels.dtype == np.int32
    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.float32) / 127.5 - 1.0
    for image, label in zip(images, labels):
        index = int(np.argmin(np.abs(pixels - image[..., 0]).sum(axis=(1, 2))))
        assert digits.target[index] == label
    assert isinstance(plain, np.ndarray)  # unconditional configs: images only, as before
    eval_images, eval_labels = input_pipeline.load_eval_images(config, 5, with_labels=True)
    np.testing.assert_array_equal(eval_images, input_pipeline.load_eval_images(config, 5))
    assert eval_labels.shape == (5,)


def test_tiny_conditional_training_runs(tmp_path):
    config = configs.tiny_cond.get_config()
    config.training.num_train_steps = 4
    config.training.sample_every_steps = 4
    loop.train_and_evaluate(config, str(tmp_path))
    assert os.path.exists(tmp_path / "samples" / "step_0000004.png")
    with open(tmp_path / "metrics.jsonl") as f:
        assert all(np.isfinite(__import__("json").loads(line)["loss"]) for line in f)


# ----------------------------------------------------------------------------- guidance

def test_scale_zero_is_unconditional_and_one_is_conditional_exactly(cond):
    _, model, params = cond
    eps_fn = eps_fn_for(model)
    guided = guided_eps_fn(eps_fn, K)
    x = jax.random.normal(jax.random.PRNGKey(1), (3,) + IMAGE)
    t = jnp.array([5, 400, 999], jnp.int32)
    labels = jnp.array([1, 4, 7], jnp.int32)
    both = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), params, jnp.concatenate([labels, jnp.full(3, K)]))
    cond_eps, uncond_eps = both[:3], both[3:]
    assert float(jnp.max(jnp.abs(cond_eps - uncond_eps))) > 1e-3  # the test can tell them apart
    np.testing.assert_array_equal(guided(x, t, params, labels, 0.0), uncond_eps)
    np.testing.assert_array_equal(guided(x, t, params, labels, 1.0), cond_eps)
    # ... and they are the separate conditional and unconditional calls (up to batch-size rounding).
    np.testing.assert_allclose(guided(x, t, params, labels, 0.0), eps_fn(x, t, params, jnp.full(3, K)), atol=1e-5)
    np.testing.assert_allclose(guided(x, t, params, labels, 1.0), eps_fn(x, t, params, labels), atol=1e-5)
    np.testing.assert_allclose(guided(x, t, params, labels, 3.0), uncond_eps + 3.0 * (cond_eps - uncond_eps),
                               rtol=1e-5, atol=1e-5)


def test_one_batched_network_call_per_step_and_no_retrace_for_new_scale_or_labels():
    traces, calls = [], []

    def counting_eps(x, t, weight, labels):
        traces.append(x.shape[0])  # trace time
        jax.debug.callback(lambda: calls.append(1))  # run time: one per network evaluation
        return jnp.tanh(weight * x + labels.astype(x.dtype)[:, None, None, None] / 10)

    guided = guided_eps_fn(counting_eps, K)
    alphas_cumprod = make_alphas_cumprod(configs.tiny.get_config().diffusion)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (3,) + IMAGE)
    seq = timestep_sequence(6, 1000)
    labels = jnp.array([0, 1, 2], jnp.int32)
    sample(guided, x_T, seq, alphas_cumprod, eps_fn_args=(0.5, labels, 2.0))
    jax.effects_barrier()
    assert traces == [6] and len(calls) == 6  # one call on 2B images per step
    sample(guided, x_T, seq, alphas_cumprod, eps_fn_args=(0.5, jnp.array([3, 3, 9], jnp.int32), 4.5))
    sample(guided, x_T, seq, alphas_cumprod, eps_fn_args=(0.7, labels, 0.0))
    jax.effects_barrier()
    assert traces == [6] and len(calls) == 18
    for solver in ("dpmpp_2m", "dpmpp_3m", "plms", "unipc"):
        calls.clear()
        sample(guided, x_T, seq, alphas_cumprod, eps_fn_args=(0.5, labels, 2.0), solver=solver)
        jax.effects_barrier()
        assert len(calls) == 6 + (solver == "plms"), solver  # the solver's NFE, each one batched call
    assert set(traces) == {6}
    encode(guided, x_T, seq, alphas_cumprod, eps_fn_args=(0.5, labels, 2.0))


# One solver of each class of the registry (the contract test runs guidance through all of them).
@pytest.mark.parametrize("solver", ("ddim", "dpmpp_3m", "plms", "unipc_3", "heun", "dpmpp_2m_sde", "ddim_eta1"))
def test_every_solver_samples_guided_and_scale_one_is_conditional_sampling(cond, solver):
    config, model, params = cond
    eta = 1.0 if solver == "ddim_eta1" else 0.0
    solver = "ddim" if solver == "ddim_eta1" else solver
    key = jax.random.PRNGKey(5) if needs_key(solver, eta=eta) else None
    alphas_cumprod = make_alphas_cumprod(config.diffusion)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (2,) + IMAGE)
    seq = timestep_sequence(4, 1000)
    labels = jnp.asarray(labels_for(2, "all", K))
    guided = guided_eps_fn(eps_fn_for(model), K)
    run = lambda fn, *args: sample(fn, x_T, seq, alphas_cumprod, eta, key, eps_fn_args=(params, *args),  # noqa: E731
                                   solver=solver, clip_x0=True)
    conditional = run(eps_fn_for(model), labels)
    np.testing.assert_allclose(run(guided, labels, 1.0), conditional, atol=1e-4)
    strong = run(guided, labels, 3.0)
    assert np.all(np.isfinite(strong)) and float(jnp.max(jnp.abs(strong - conditional))) > 1e-3


def test_labels_for():
    np.testing.assert_array_equal(labels_for(5, "all", 3, start=4), [1, 2, 0, 1, 2])
    np.testing.assert_array_equal(labels_for(3, 2, 3), [2, 2, 2])
    np.testing.assert_array_equal(labels_for(2, "null", 3), [3, 3])
    with pytest.raises(ValueError, match="not a class"):
        labels_for(2, 3, 3)


# ----------------------------------------------------------------------------- sample.py

@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cond):
    config, _, params = cond
    path = str(tmp_path_factory.mktemp("tiny_cond_run"))
    export_workdir(path, config, params)
    return path


def _options(workdir, out, **overrides):
    values = dict(workdir=workdir, out=str(out), steps=3, num=20, batch_size=8, progress=False)
    values.update(overrides)
    return program.SampleOptions(**values)


def test_label_all_grid_has_one_class_per_row(workdir, tmp_path):
    images = program.run(_options(workdir, tmp_path / "g.png", label="all", guidance=2.0))
    upscale = modes.GRID_MIN_IMAGE_SIZE // IMAGE[0]
    cell = IMAGE[0] * upscale + GRID_PADDING
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape[:2] == (K * cell + GRID_PADDING, 2 * cell + GRID_PADDING)  # 10 rows of 2
    # Row c holds images c and c + 10 (both of class c).
    row3 = grid[3 * cell + GRID_PADDING: 4 * cell, GRID_PADDING: cell - GRID_PADDING + GRID_PADDING]
    expected = np.repeat(np.repeat(images[3, ..., 0], upscale, 0), upscale, 1)
    np.testing.assert_array_equal(row3.reshape(expected.shape), expected)
    arranged, ncols = modes.class_rows(images, labels_for(20, "all", K), K)
    assert ncols == 2 and np.array_equal(arranged[7], images[13])
    # A fixed label differs from "all"; the shards of one setting are not reused by another.
    same = program.run(_options(workdir, tmp_path / "one.npz", label="3", guidance=2.0))
    assert np.array_equal(same[3], images[3]) and not np.array_equal(same[0], images[0])


def test_other_modes_take_labels(workdir, tmp_path, capsys):
    program.run(_options(workdir, tmp_path / "i.png", mode="interpolate", num=2, label="all", guidance=2.0))
    program.run(_options(workdir, tmp_path / "c.png", mode="consistency", num=2, steps=None, step_counts=(3,),
                            label=5))
    mse = program.run(_options(workdir, tmp_path / "r.png", mode="reconstruct", num=2, steps=None,
                                  step_counts=(3,)))
    assert "label=real guidance=1" in capsys.readouterr().out and np.isfinite(mse[3])


@pytest.mark.parametrize("overrides, message", [
    (dict(label="10"), "--label 10 is not a class of this model (0..9)"),
    (dict(label="seven"), "--label must be a class number or 'all'"),
    (dict(guidance=-1.0), "--guidance must be a finite number >= 0"),
])
def test_bad_label_and_guidance_are_one_line_errors(workdir, tmp_path, overrides, message):
    with pytest.raises(sampler_spec.SampleError) as error:
        program.run(_options(workdir, tmp_path / "x.png", **overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unconditional_run_refuses_label_with_one_line_exit_1(tmp_path):
    config = configs.tiny.get_config()
    export_workdir(str(tmp_path / "run"), config, _random_params(create_model(config)))
    for flag in ("--label=3", "--guidance=2"):
        result = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), f"--workdir={tmp_path / 'run'}",
                                 flag, f"--out={tmp_path / 'x.png'}"], cwd=REPO, capture_output=True, text=True,
                                timeout=240)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("sample.py: error: --label / --guidance need a class-conditional model")
        assert not any(line.startswith("Traceback") for line in lines)


def test_unet_dataclass_field():
    assert UNet().num_classes == 0


@pytest.mark.parametrize("name", ["mnist_cond", "cifar10_cond"])
def test_tfds_pipelines_yield_the_label_feature(name):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = __import__(f"configs.{name}", fromlist=["get_config"]).get_config()
    config.training.batch_size = 4
    config.data.num_workers = 0  # mock data is patched into this process only
    with tfds.testing.mock_data(num_examples=10):
        images, labels = next(input_pipeline.train_batches(config))
        raw = input_pipeline.open_source(config, "train")
        pairs = [raw[i] for i in range(len(raw))]
        plain = input_pipeline.open_source(config, "train", with_labels=False)[0]
    expected = [int(label) for _, label in pairs]
    assert images.shape[0] == 4 and labels.shape == (4,) and labels.dtype == np.int32
    assert set(labels.tolist()) <= set(expected) and all(0 <= v < K for v in expected)
    np.testing.assert_array_equal(plain, pairs[0][0])  # the same record, with or without its label
