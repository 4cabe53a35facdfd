"""Configs, validation, the training loss, non-finite handling, images, and train.py's errors."""

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import configs  # noqa: F401  (the package; modules are imported by name below)
import configs.celeba64
import configs.cifar10
import configs.tiny
from ddim_jax.io import atomic, images
from ddim_jax.training import checkpoints, loop, objective, run_directory, schema, train_state
from ddim_jax.training.schema import ConfigError, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_NAMES = ("cifar10", "celeba64", "mnist", "digits", "tiny")




# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_file_validates(name):
    validate_config(importlib.import_module(f"configs.{name}").get_config())


def test_cifar10_config_is_the_papers_recipe():
    config = configs.cifar10.get_config()
    assert (config.model.ch, tuple(config.model.ch_mult), config.model.num_res_blocks) == (128, (1, 2, 2, 2), 2)
    assert tuple(config.model.attn_resolutions) == (16,) and config.model.dropout == 0.1
    assert (config.optim.learning_rate, config.optim.grad_clip_norm, config.optim.warmup_steps) == (2e-4, 1.0, 5000)
    assert (config.training.batch_size, config.training.ema_decay) == (128, 0.9999)
    assert config.data.random_flip and config.diffusion.beta_schedule == "linear"
    diffusion = config.diffusion
    assert (diffusion.beta_start, diffusion.beta_end, diffusion.num_timesteps) == (1e-4, 0.02, 1000)


@pytest.mark.parametrize("section, key, value, match", [
    ("data", "name", "imagenet", r"config\.data\.name: unknown dataset 'imagenet'"),
    ("data", "image_size", 30, r"config\.data\.image_size: 30 is not divisible by the UNet's downsampling factor 8"),
    ("data", "channels", 1, r"config\.data\.channels: dataset 'cifar10' has 3"),
    ("diffusion", "beta_schedule", "linaer", r"config\.diffusion\.beta_schedule: unknown schedule 'linaer'"),
    ("optim", "learning_rate", -1e-4, r"config\.optim\.learning_rate: must be a positive"),
    ("optim", "grad_clip_norm", 0.0, r"config\.optim\.grad_clip_norm: must be positive"),
    ("optim", "learning_rate", "2e-4", r"config\.optim\.learning_rate: must be a number"),
    ("training", "ema_decay", 1.0, r"config\.training\.ema_decay: must be in \[0, 1\)"),
    ("model", "num_groups", 48, r"config\.model\.num_groups: 48 groups do not divide 128"),
    ("model", "attn_resolutions", (12,), r"config\.model\.attn_resolutions: 12 is not one of"),
    ("sampling", "skip", "cubic", r"config\.sampling\.skip: unknown spacing 'cubic'"),
    ("sampling", "eta", 1.5, r"config\.sampling\.eta: must be in \[0, 1\]"),
    ("sampling", "solver", "euler", r"config\.sampling\.solver: unknown solver 'euler'"),
    ("sampling", "rederive_eps", "no", r"config\.sampling\.rederive_eps: must be a bool"),
])
def test_bad_values_raise_a_value_error_naming_the_key(section, key, value, match):
    raw = schema.default_config().to_dict()
    raw[section][key] = value  # through a dict: ConfigDict itself would refuse a wrong type
    config = ml_collections.ConfigDict(raw)
    with pytest.raises(ConfigError, match=match) as info:
        validate_config(config)
    assert isinstance(info.value, ValueError)


def test_missing_and_unknown_keys_fail_loudly():
    config = schema.default_config()
    del config.optim["grad_clip_norm"]
    with pytest.raises(ConfigError, match=r"config\.optim\.grad_clip_norm: missing key"):
        validate_config(config)
    config = schema.default_config()
    config.optim.grad_clip = 1.0  # a typo must not silently turn clipping off
    with pytest.raises(ConfigError, match=r"config\.optim\.grad_clip: unknown key"):
        validate_config(config)
    config = schema.default_config()
    del config["sampling"]
    with pytest.raises(ConfigError, match=r"config\.sampling: missing section"):
        validate_config(config)
    config = schema.default_config()
    config.model.attn_head_dim = 64  # an optional key of converted checkpoints is accepted
    validate_config(config)


def test_config_json_round_trip_keeps_tuples():
    config = configs.celeba64.get_config()
    restored = schema.config_from_json(schema.config_to_json(config))
    assert restored.model.ch_mult == (1, 2, 2, 2, 4) and restored.data.crop == (57, 25, 128, 128)
    assert restored.data.data_dir is None
    validate_config(restored)


# ----------------------------------------------------------------------------- images

def test_to_uint8_make_grid_and_atomic_writers(tmp_path):
    x = np.array([-1.0, -0.5, 0.0, 1.0, 2.0]).reshape(1, 1, 5, 1)
    np.testing.assert_array_equal(images.to_uint8(x).ravel(), [0, 64, 128, 255, 255])
    with pytest.raises(ValueError, match="NaN"):
        images.to_uint8(np.full((1, 2, 2, 1), np.nan))
    batch = np.stack([np.full((3, 4, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = images.make_grid(batch, ncols=3)
    assert grid.shape == (2 * (3 + 2) + 2, 3 * (4 + 2) + 2, 3)
    assert grid[2, 2, 0] == 10 and grid[2 + 5, 2 + 6, 0] == 50 and grid[0, 0, 0] == 0
    assert grid[7, 14, 0] == 0  # the missing sixth tile stays black
    assert images.make_grid(batch, upscale=2).shape == (2 * (6 + 2) + 2, 3 * (8 + 2) + 2, 3)
    path = tmp_path / "sub" / "grid.png"
    atomic.save_png(path, grid)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
    atomic.save_npz(tmp_path / "a.npz", x=x)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["x"], x)
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "sub"]  # no temp files left behind
    umask = os.umask(0o022)
    try:
        atomic.save_png(tmp_path / "mode.png", grid)
        assert (os.stat(tmp_path / "mode.png").st_mode & 0o777) == 0o644  # not mkstemp's 0600
    finally:
        os.umask(umask)
    with pytest.raises(ValueError, match="uint8"):
        images.make_grid(batch.astype(np.float32))


# ----------------------------------------------------------------------------- training

def test_l_simple_is_the_mean_squared_noise_error_of_eq4():
    """With a model that returns the exact noise from x_t and x0, the loss is 0; with zeros, it is E[eps^2]."""
    alphas_cumprod = jnp.linspace(0.99, 0.01, 10)
    x0 = jax.random.uniform(jax.random.PRNGKey(1), (64, 4, 4, 1), minval=-1, maxval=1)
    key = jax.random.PRNGKey(2)

    def oracle(x_t, t, params, dropout_key):
        a = alphas_cumprod[t][:, None, None, None]
        return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)

    assert float(objective.l_simple_loss(None, oracle, x0, key, alphas_cumprod)) < 1e-10
    zero_loss = float(objective.l_simple_loss(None, lambda x, t, p, k: jnp.zeros_like(x), x0, key, alphas_cumprod))
    assert 0.85 < zero_loss < 1.15  # E[eps^2] = 1 over 1,024 draws


def test_l_simple_draws_every_training_timestep_uniformly():
    """t ~ U{0..T-1}: t = 0 included (a draw from 1..T-1 would never train the last denoising step)."""
    num_timesteps, batch = 5, 20_000
    alphas_cumprod = jnp.linspace(0.99, 0.5, num_timesteps)
    seen = []

    def recording_model(x_t, t, params, dropout_key):
        seen.append(np.asarray(t))
        return jnp.zeros_like(x_t)

    objective.l_simple_loss(None, recording_model, jnp.zeros((batch, 1, 1, 1)), jax.random.PRNGKey(0), alphas_cumprod)
    counts = np.bincount(np.concatenate(seen), minlength=num_timesteps)
    assert counts.size == num_timesteps and counts.sum() == batch
    expected = batch / num_timesteps
    chi_square = float(np.sum((counts - expected) ** 2 / expected))
    assert chi_square < 18.5, counts  # the 99.9% quantile of chi-square with 4 degrees of freedom


def test_ema_update_matches_a_hand_computation_inside_the_train_step():
    """ema' = decay * ema + (1 - decay) * new_params, checked on a real train step."""
    config = configs.tiny.get_config()
    config.training.ema_decay = 0.75
    config.optim.warmup_steps = 0  # a non-zero first step, so params move
    state = train_state.create_train_state(config)
    shifted = jax.tree.map(lambda leaf: leaf + 1.0, state.params)   # make ema and params differ
    state = state.replace(ema_params=shifted)
    batch = jax.random.uniform(jax.random.PRNGKey(3), (8, 8, 8, 1), minval=-1, maxval=1)
    new_state, _ = jax.jit(objective.make_train_step(config))(state, batch)
    for ema, old_ema, new in zip(jax.tree.leaves(new_state.ema_params), jax.tree.leaves(shifted),
                                 jax.tree.leaves(new_state.params), strict=True):
        np.testing.assert_allclose(ema, 0.75 * np.asarray(old_ema) + 0.25 * np.asarray(new), rtol=1e-6, atol=1e-6)
    assert int(new_state.step) == 1
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new_state.params),
                                                     jax.tree.leaves(state.params), strict=True))


def test_warmup_schedule_is_linear_then_constant():
    config = configs.tiny.get_config()
    config.optim.warmup_steps = 4
    schedule = train_state.learning_rate_schedule(config)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 2, 4, 100)], [0.0, 1.5e-3, 3e-3, 3e-3], rtol=1e-6)


def _read_metrics(workdir):
    with open(os.path.join(workdir, run_directory.METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def test_loss_decreases_on_tiny_digits_and_the_run_leaves_its_artifacts(tmp_path):
    config = configs.tiny.get_config()
    config.training.num_train_steps = 40
    config.training.log_every_steps = 8
    config.training.checkpoint_every_steps = 20
    config.training.sample_every_steps = 40
    loop.train_and_evaluate(config, str(tmp_path))
    records = _read_metrics(tmp_path)
    assert [record["step"] for record in records] == [8, 16, 20, 24, 32, 40]  # log and checkpoint steps
    losses = [record["loss"] for record in records]
    # The zero-initialised output layer starts at E[eps^2] ~ 1; 40 Adam steps must cut it clearly.
    assert 0.8 < losses[0] < 1.2
    assert losses[-1] < 0.7 * losses[0], losses
    assert os.path.exists(tmp_path / "samples" / "step_0000040.png")
    config_back, params, step = checkpoints.load_for_sampling(str(tmp_path))
    assert step == 40 and config_back.training.num_train_steps == 40
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    config = configs.tiny.get_config()
    config.training.num_train_steps = 4
    loop.train_and_evaluate(config, str(tmp_path))
    _, good_params, step = checkpoints.load_for_sampling(str(tmp_path), use_ema=False)
    assert step == 4

    config.training.num_train_steps = 10
    nan_batches = iter([np.full((8, 8, 8, 1), np.nan, np.float32)] * 10)
    message = r"at step 4: training stopped; the last good checkpoint \(step 4\)"
    with pytest.raises(loop.NonFiniteLossError, match=message):
        loop.train_and_evaluate(config, str(tmp_path), batches=nan_batches)
    _, params, step = checkpoints.load_for_sampling(str(tmp_path), use_ema=False)
    assert step == 4
    for kept, restored in zip(jax.tree.leaves(good_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(kept, restored)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_resuming_with_a_different_model_is_refused(tmp_path):
    config = configs.tiny.get_config()
    config.training.num_train_steps = 0
    checkpoints.export_workdir(str(tmp_path), config, _tiny_params(config))
    config.model.ch = 16
    with pytest.raises(checkpoints.CheckpointError, match="different config.model"):
        loop.train_and_evaluate(config, str(tmp_path))


def _tiny_params(config):
    shapes = jax.eval_shape(lambda: train_state.create_train_state(config).params)
    return jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), shapes)


# ----------------------------------------------------------------------------- train.py errors

def _run_train_py(*args, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("override, message", [
    ("--config.training.bogus=1", "unknown config key in override --config.training.bogus"),
    ("--config.optim.learning_rate=abc", "could not convert string to float"),
    ("--config.optim.learning_rate=-1", "config.optim.learning_rate: must be a positive"),
    ("--config.data.name=imagenet", "config.data.name: unknown dataset 'imagenet'"),
])
def test_train_py_user_errors_are_one_line_with_nonzero_exit(tmp_path, override, message):
    result = _run_train_py("--config", "configs/tiny.py", "--workdir", str(tmp_path / "run"), override)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("train.py: error:")
    assert "Traceback" not in result.stderr


def test_train_py_refuses_an_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run_train_py("--config", "configs/tiny.py", "--workdir", str(blocker / "run"))
    assert result.returncode == 1 and "cannot create workdir" in result.stderr
    assert "Traceback" not in result.stderr
