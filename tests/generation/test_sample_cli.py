"""sample.py / ddim_jax.generation.program end to end on a tiny run made here (configs/tiny.py, 8x8 digits).

The run is a tiny UNet with random params drawn from its parameter shapes (``jax.eval_shape``:
no compile; not the near-zero output of a fresh init), exported with ``export_workdir`` once per
module. Most tests call
``program.run`` in-process (one JAX, shared compilations); a few run the CLI as a subprocess to
check exit codes, one-line messages and the dashed flag spellings.
"""

import dataclasses
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

import configs.tiny
from ddim_jax.cli.flags import normalize_argv
from ddim_jax.generation import batching, loading, modes, program, sampler_spec, shards
from ddim_jax.io import atomic
from ddim_jax.io.images import GRID_PADDING
from ddim_jax.training.checkpoints import export_workdir, load_for_sampling

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = (8, 8, 1)
UPSCALE = modes.GRID_MIN_IMAGE_SIZE // IMAGE[0]


def _tiny_config():
    return configs.tiny.get_config()


def test_the_runs_sampling_config_gives_the_defaults(workdir, tmp_path):
    """Flags left out take config.sampling's num_steps, eta, skip, batch size and num_samples."""
    config = _tiny_config()
    config.sampling.num_steps, config.sampling.eta, config.sampling.skip = 3, 0.5, "trailing"
    config.sampling.num_samples, config.sampling.batch_size = 5, 2
    run_dir = str(tmp_path / "run")
    _, params, _ = load_for_sampling(workdir)
    export_workdir(run_dir, config, params)
    loaded = loading.load_run(run_dir)
    bare = program.SampleOptions(workdir=run_dir, progress=False)
    assert program.resolve_spec(bare, loaded) == sampler_spec.SamplerSpec(steps=3, eta=0.5, skip="trailing",
                                                                            clip_x0=True)
    assert program.resolve_num(bare, loaded) == 5
    # Flags win; eta from the config applies to the samples mode only.
    flags = dataclasses.replace(bare, steps=7, eta=0.0, num=2)
    assert program.resolve_spec(flags, loaded).steps == 7 and program.resolve_spec(flags, loaded).eta == 0
    assert program.resolve_num(flags, loaded) == 2
    assert program.resolve_spec(dataclasses.replace(bare, mode="consistency"), loaded).eta == 0.0
    images = program.run(dataclasses.replace(bare, out=str(tmp_path / "x.npz")))
    assert images.shape == (5,) + IMAGE


def _options(workdir, out=None, **overrides):
    values = dict(workdir=workdir, out=None if out is None else str(out), steps=4, num=6, batch_size=4, progress=False)
    values.update(overrides)
    if values.get("mode") in program.DEFAULT_STEP_COUNTS and "steps" not in overrides:
        values["steps"] = None  # these modes take --step_counts and refuse --steps
    return program.SampleOptions(**values)


def _grid_shape(rows, cols):
    cell = IMAGE[0] * UPSCALE
    return (rows * (cell + GRID_PADDING) + GRID_PADDING, cols * (cell + GRID_PADDING) + GRID_PADDING)


def _run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=240, env=env)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def test_normalize_argv_accepts_dashed_spellings():
    argv = ["sample.py", "--batch-size=8", "--sigma-hat", "--no-ema", "--no_clip", "--out", "my-file.png",
            "--eta", "-1", "--steps=20", "--", "--keep-this"]
    assert normalize_argv(argv, boolean_flags=("ema", "clip", "sigma_hat")) == [
        "sample.py", "--batch_size=8", "--sigma_hat", "--noema", "--noclip", "--out", "my-file.png",
        "--eta", "-1", "--steps=20", "--", "--keep-this"]


@pytest.mark.parametrize("spec, message", [
    (sampler_spec.SamplerSpec(steps=0), "--steps must be at least 1"),
    (sampler_spec.SamplerSpec(steps=1001), "above the model's number of training timesteps T=1000"),
    (sampler_spec.SamplerSpec(skip="cubic"), "unknown --skip='cubic'"),
    (sampler_spec.SamplerSpec(eta=-0.5), "--eta must be in [0, 1]"),
    (sampler_spec.SamplerSpec(eta=1.5), "--eta must be in [0, 1]"),
    (sampler_spec.SamplerSpec(eta=0.5, sigma_hat=True), "--sigma_hat replaces eta"),
    (sampler_spec.SamplerSpec(solver="euler"), "--solver=euler: unknown solver 'euler'"),
    (sampler_spec.SamplerSpec(solver="dpmpp_2m", eta=0.5), "eta > 0 needs solver 'ddim'"),
    (sampler_spec.SamplerSpec(solver="dpmpp_2m_sde", sigma_hat=True), "sigma_hat needs solver 'ddim'"),
])
def test_validate_spec_names_the_problem(spec, message):
    with pytest.raises(sampler_spec.SampleError) as error:
        sampler_spec.validate_spec(spec, num_timesteps=1000)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_step_counts_defaults_clip_to_T_and_requests_are_checked():
    assert program.resolve_step_counts(None, "consistency", 1000) == (10, 20, 50, 100, 1000)
    assert program.resolve_step_counts(None, "consistency", 40) == (10, 20, 40)
    assert program.resolve_step_counts([5, 2, 5], "reconstruct", 40) == (5, 2)
    with pytest.raises(sampler_spec.SampleError, match="outside 1..T=40"):
        program.resolve_step_counts([50], "reconstruct", 40)


def test_image_keys_depend_only_on_seed_and_image_index():
    codes, noises = shards.image_keys(3, 5, 4)                  # images 5..8
    later_codes, _ = shards.image_keys(3, 7, 1)                 # image 7 alone
    np.testing.assert_array_equal(jax.random.key_data(codes[2]), jax.random.key_data(later_codes[0]))
    assert not np.array_equal(jax.random.key_data(codes[0]), jax.random.key_data(codes[1]))
    assert not np.array_equal(jax.random.key_data(codes[0]), jax.random.key_data(noises[0]))
    assert not np.array_equal(jax.random.key_data(codes[0]), jax.random.key_data(shards.image_keys(4, 5, 1)[0][0]))


# ---------------------------------------------------------------------------------------------
# The four modes, in-process
# ---------------------------------------------------------------------------------------------


def test_samples_exact_count_and_determinism(workdir, tmp_path):
    # 6 images with batches of 4: exactly 6 come out, not 8; the shards are gone afterwards.
    first = program.run(_options(workdir, tmp_path / "a.npz", seed=1))
    assert first.shape == (6,) + IMAGE and first.dtype == np.uint8
    with np.load(tmp_path / "a.npz") as saved:
        np.testing.assert_array_equal(saved["images"], first)
    assert not os.path.exists(shards.shard_dir_for(str(tmp_path / "a.npz")))
    again = program.run(_options(workdir, tmp_path / "b.npz", seed=1))
    np.testing.assert_array_equal(again, first)
    other_seed = program.run(_options(workdir, tmp_path / "c.npz", seed=2))
    assert np.mean(np.abs(other_seed.astype(float) - first.astype(float))) > 5.0
    # Fewer images with the same seed and batch are a prefix of the same images.
    prefix = program.run(_options(workdir, tmp_path / "d.npz", seed=1, num=5))
    np.testing.assert_array_equal(prefix, first[:5])


def test_short_last_batch_reuses_the_compiled_sampler(workdir, tmp_path):
    from ddim_jax import sampling

    before = sampling._sample_scan._cache_size()
    images = program.run(_options(workdir, tmp_path / "n.npz", steps=3, num=9))   # 4 + 4 + 1 (padded)
    assert images.shape == (9,) + IMAGE
    assert sampling._sample_scan._cache_size() == before + 1


def test_samples_png_grid_and_large_num_npz(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(modes, "GRID_MAX_IMAGES", 4)
    out = tmp_path / "grid.png"
    images = program.run(_options(workdir, out, num=6))
    grid = np.asarray(Image.open(out))
    assert grid.shape == _grid_shape(2, 2)   # only the first GRID_MAX_IMAGES images on the grid
    with np.load(tmp_path / "grid.npz") as saved:   # all of them beside it
        np.testing.assert_array_equal(saved["images"], images)


def test_eta_one_and_sigma_hat_differ_from_ddim(workdir, tmp_path):
    ddim = program.run(_options(workdir, tmp_path / "ddim.npz", num=4))
    ddpm = program.run(_options(workdir, tmp_path / "ddpm.npz", num=4, eta=1.0))
    ddpm_again = program.run(_options(workdir, tmp_path / "ddpm2.npz", num=4, eta=1.0))
    large = program.run(_options(workdir, tmp_path / "hat.npz", num=4, sigma_hat=True))
    np.testing.assert_array_equal(ddpm, ddpm_again)   # stochastic, but seeded
    assert not np.array_equal(ddim, ddpm)
    assert not np.array_equal(ddpm, large)


def test_resume_after_interrupted_run(workdir, tmp_path, monkeypatch):
    out = str(tmp_path / "resume.npz")
    expected = program.run(_options(workdir, tmp_path / "reference.npz", num=10))

    calls = []
    real_decode = batching.BatchedSampler.decode_batch

    def decode_then_die(self, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt   # the run is killed while sampling its third shard
        calls.append(1)
        return real_decode(self, *args, **kwargs)

    monkeypatch.setattr(batching.BatchedSampler, "decode_batch", decode_then_die)
    with pytest.raises(KeyboardInterrupt):
        program.run(_options(workdir, out, num=10))
    shard_dir = shards.shard_dir_for(out)
    assert sorted(os.listdir(shard_dir)) == ["meta.json", "shard_000000.npz", "shard_000001.npz"]
    assert not os.path.exists(out)

    calls.clear()
    monkeypatch.setattr(batching.BatchedSampler, "decode_batch",
                        lambda self, *a, **k: (calls.append(1), real_decode(self, *a, **k))[1])
    resumed = program.run(_options(workdir, out, num=10))
    assert len(calls) == 1   # only the missing third shard was sampled
    np.testing.assert_array_equal(resumed, expected)


def test_resume_refuses_shards_of_other_settings(workdir, tmp_path):
    out = str(tmp_path / "mixed.npz")
    shard_dir = shards.shard_dir_for(out)
    os.makedirs(shard_dir)
    atomic.save_json(os.path.join(shard_dir, "meta.json"), {"seed": 99})
    with pytest.raises(sampler_spec.SampleError, match="holds shards of a run with other settings"):
        program.run(_options(workdir, out))


def test_interpolate_rows_start_and_end_at_the_pair(workdir, tmp_path):
    out = tmp_path / "interp.png"
    images = program.run(_options(workdir, out, mode="interpolate", num=2))
    points = modes.INTERPOLATION_POINTS
    assert images.shape == (2 * points,) + IMAGE
    assert np.asarray(Image.open(out)).shape == _grid_shape(2, points)
    rows = images.reshape((2, points) + IMAGE).astype(float)
    # Neighbouring interpolants are closer than the two ends of a row.
    step = np.mean(np.abs(rows[:, 1] - rows[:, 0]))
    ends = np.mean(np.abs(rows[:, -1] - rows[:, 0]))
    assert step < ends


def test_reconstruct_writes_originals_beside_reconstructions(workdir, tmp_path, capsys):
    out = tmp_path / "recon.npz"
    mse = program.run(_options(workdir, out, mode="reconstruct", num=4, step_counts=(2, 5)))
    assert list(mse) == [2, 5]
    printed = capsys.readouterr().out
    assert "Reconstruction MSE per dimension" in printed and f"{mse[5]:.6f}" in printed
    with np.load(out) as saved:
        images = saved["images"]
        np.testing.assert_array_equal(saved["step_counts"], [2, 5])
        np.testing.assert_allclose(saved["mse"], [mse[2], mse[5]])
    assert images.shape == (4 * 3,) + IMAGE and images.dtype == np.uint8
    rows = images.reshape((4, 3) + IMAGE).astype(np.float64) / 255.0
    # Column 0 holds the real digits (seeded order), columns 1.. their reconstructions: the
    # reported MSE is the one of these images, up to the uint8 rounding.
    from ddim_jax.training.input_pipeline import load_eval_images
    np.testing.assert_allclose(rows[:, 0], (load_eval_images(_tiny_config(), 4, seed=0) + 1) / 2, atol=1 / 255)
    for column, count in enumerate((2, 5), start=1):
        assert np.mean((rows[:, column] - rows[:, 0]) ** 2) == pytest.approx(mse[count], abs=2e-3)


class _GaussianDataEps(nn.Module):
    """The exact eps-predictor for data ~ N(0, data_var I): E[eps | x_t] = sqrt(1 - a_t) x_t / (a_t data_var + 1 - a_t).

    Its probability-flow ODE is smooth and invertible, so DDIM encode -> decode reconstructs x0 with
    an error that only comes from the discretisation and falls as S grows (paper Table 2).
    """

    data_var: float = 0.25

    @nn.compact
    def __call__(self, x, t):
        alphas_cumprod = self.param("alphas_cumprod", nn.initializers.zeros, (1000,))
        alpha = alphas_cumprod[t][:, None, None, None]
        return jnp.sqrt(1.0 - alpha) * x / (alpha * self.data_var + 1.0 - alpha)


def test_reconstruction_error_falls_with_steps(tmp_path):
    from ddim_jax import alphas_cumprod_from_betas, make_betas

    alphas_cumprod = alphas_cumprod_from_betas(make_betas("linear", num_timesteps=1000, beta_start=1e-4, beta_end=2e-2))
    loaded = loading.LoadedModel(model=_GaussianDataEps(), params={"alphas_cumprod": alphas_cumprod},
                                    alphas_cumprod=alphas_cumprod, image_shape=IMAGE, config=_tiny_config())
    spec = sampler_spec.SamplerSpec(clip_x0=False)
    mse = modes.run_reconstruct(loaded, spec, num=4, batch_size=4, seed=0, out=str(tmp_path / "r.png"),
                                     step_counts=(5, 20, 100), progress=False)
    assert mse[5] > 3 * mse[20] > 9 * mse[100]
    assert mse[100] < 5e-4


def test_consistency_same_code_several_step_counts(workdir, tmp_path):
    out = tmp_path / "consistency.png"
    images = program.run(_options(workdir, out, mode="consistency", num=3, step_counts=(2, 4, 8)))
    assert images.shape == (9,) + IMAGE
    assert np.asarray(Image.open(out)).shape == _grid_shape(3, 3)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (dict(mode="sketch"), "unknown --mode='sketch'"),
    (dict(out="samples.jpg"), "--out must end in .png"),
    (dict(num=0), "--num must be at least 1"),
    (dict(batch_size=0), "--batch_size must be at least 1"),
    (dict(mode="interpolate", eta=1.0), "decodes with DDIM (eta=0)"),
    (dict(steps=1001), "above the model's number of training timesteps T=1000"),
    (dict(skip="cubic"), "unknown --skip='cubic'"),
    (dict(mode="consistency", step_counts=(5, 2000)), "outside 1..T=1000"),
])
def test_bad_options_raise_one_line_errors(workdir, tmp_path, overrides, message):
    overrides.setdefault("out", str(tmp_path / "x.png"))
    with pytest.raises(sampler_spec.SampleError) as error:
        program.run(_options(workdir, **overrides))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not os.listdir(tmp_path)


def test_checkpoint_that_fails_to_load(workdir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken)
    shutil.rmtree(broken / "checkpoints" / "0" / "ema_params")
    with pytest.raises(sampler_spec.SampleError, match="cannot load a checkpoint from .*ema_params") as error:
        program.run(_options(str(broken), tmp_path / "x.png"))
    assert "\n" not in str(error.value)


def test_missing_and_empty_workdir(tmp_path):
    with pytest.raises(sampler_spec.SampleError, match="does not exist"):
        program.run(_options(str(tmp_path / "nowhere"), tmp_path / "x.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sampler_spec.SampleError, match="cannot load a checkpoint"):
        program.run(_options(str(empty), tmp_path / "x.png"))


# ---------------------------------------------------------------------------------------------
# The CLI as a subprocess
# ---------------------------------------------------------------------------------------------


def test_cli_two_devices_matches_in_process_run(workdir, tmp_path):
    """Dashed flags, exit 0, an .npz of exactly N; the batch split over 2 CPU devices gives the
    same images as one device (to one grey level of float rounding)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = tmp_path / "cli.npz"
    result = _run_cli(f"--workdir={workdir}", "--steps", "4", "--num", "6", "--batch-size", "4",
                      "--seed", "5", "--no-clip", f"--out={out}", env=env)
    assert result.returncode == 0, result.stderr
    assert "on 2 device(s)" in result.stdout
    with np.load(out) as saved:
        cli_images = saved["images"]
    in_process = program.run(_options(workdir, tmp_path / "inproc.npz", seed=5, clip_x0=False))
    assert cli_images.shape == (6,) + IMAGE and cli_images.dtype == np.uint8
    assert np.max(np.abs(cli_images.astype(int) - in_process.astype(int))) <= 1


@pytest.mark.parametrize("args, message", [
    (["--steps", "5000"], "--steps=5000 is above the model's number of training timesteps T=1000"),
    (["--skip", "cubic"], "unknown --skip='cubic'"),
    (["--eta=-1"], "--eta must be in [0, 1]"),
    (["--workdir", "/nonexistent/run"], "workdir '/nonexistent/run' does not exist"),
])
def test_cli_bad_input_exits_nonzero_with_one_line(workdir, args, message):
    if "--workdir" not in args:
        args = [f"--workdir={workdir}", *args]
    result = _run_cli(*args, "--out=/tmp/never-written.png")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [f"sample.py: error: {message}"] or (len(lines) == 1 and message in lines[0]), result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# --pretrained: a diffusers-format directory (offline)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    """A small random diffusers UNet2DModel + DDIMScheduler (T = 500, no clipping) saved to disk."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=500, beta_schedule="linear", beta_start=1e-4,
                                        beta_end=0.02, clip_sample=False)
    path = tmp_path_factory.mktemp("diffusers_unet")
    unet.save_pretrained(path)
    scheduler.save_pretrained(path)
    return str(path), unet.eval(), scheduler


def test_pretrained_dir_follows_its_scheduler_and_matches_a_torch_ddim_loop(diffusers_dir, tmp_path):
    import torch

    path, unet, scheduler = diffusers_dir
    loaded = loading.load_pretrained(path)
    assert loaded.num_timesteps == 500 and loaded.image_shape == IMAGE
    assert loaded.defaults["clip_x0"] is False
    np.testing.assert_allclose(np.asarray(loaded.alphas_cumprod), scheduler.alphas_cumprod.numpy(), rtol=1e-6)

    # Our sampler on the converted weights vs diffusers' own DDIM loop on the PyTorch weights.
    from ddim_jax import timestep_sequence

    steps = 5
    scheduler.set_timesteps(steps)
    seq = timestep_sequence(num_steps=steps, num_timesteps=500, kind="leading")
    np.testing.assert_array_equal(seq, scheduler.timesteps.numpy())
    x_T = np.asarray(jax.random.normal(jax.random.key(0), (3,) + IMAGE))
    ours = batching.BatchedSampler(loaded, batch_size=4).decode_batch(
        x_T, seq, sampler_spec.SamplerSpec(steps=steps, skip="leading", clip_x0=False), jax.random.key(1))
    x = torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(ours, x.numpy().transpose(0, 2, 3, 1), atol=2e-4, rtol=1e-4)

    # With clipping (what google/ddpm-* ship) diffusers keeps the model's eps: so do we here.
    import diffusers

    clipping = diffusers.DDIMScheduler.from_config(scheduler.config, clip_sample=True)
    clipping.set_timesteps(steps)
    ours = batching.BatchedSampler(loaded, batch_size=4).decode_batch(
        2 * x_T, seq, sampler_spec.SamplerSpec(steps=steps, skip="leading", clip_x0=True), jax.random.key(1))
    x = torch.from_numpy(2 * x_T.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for t in clipping.timesteps:
            x = clipping.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(ours, x.numpy().transpose(0, 2, 3, 1), atol=2e-4, rtol=1e-4)

    images = program.run(program.SampleOptions(pretrained=path, steps=steps, num=3, batch_size=4,
                                                     out=str(tmp_path / "p.npz"), progress=False))
    assert images.shape == (3,) + IMAGE and images.dtype == np.uint8
    with pytest.raises(sampler_spec.SampleError, match="T=500"):
        program.run(program.SampleOptions(pretrained=path, steps=501, out=str(tmp_path / "q.png")))


def test_pretrained_missing_dir_is_one_line(tmp_path):
    with pytest.raises(sampler_spec.SampleError, match="cannot load pretrained model .*no such directory"):
        program.run(program.SampleOptions(pretrained=str(tmp_path / "absent"), out=str(tmp_path / "p.png")))
