"""Tests for ddim_jax/pretrained.py: diffusers UNet2DModel checkpoints -> Flax UNet, offline.

Randomly initialised PyTorch ``UNet2DModel``s are saved with ``save_pretrained`` into tmp dirs,
converted, and compared with the PyTorch forward pass on the same inputs (NCHW <-> NHWC), then a
whole DDIM run of our ``sample`` is compared with a plain PyTorch loop of Eq. 12.
"""

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from ddim_jax import alphas_cumprod_from_betas, sample, timestep_sequence  # noqa: E402
from ddim_jax.generation import batching, loading, sampler_spec  # noqa: E402
from ddim_jax.pretrained import (  # noqa: E402
    DDPM_CIFAR10_LAYOUT,
    PretrainedError,
    export_pretrained_to_workdir,
    image_shape,
    load_diffusers_schedule,
    load_diffusers_unet,
    main,
    resolve_pretrained,
    unet_kwargs_from_diffusers_config,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"

# The published google/ddpm-cifar10-32 layout.
CIFAR10 = DDPM_CIFAR10_LAYOUT
# Small DDPM-style layout: one head, DDPM embedding and padding, attention at 8x8.
SMALL_DDPM = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    attention_head_dim=None,
)
# Small layout with diffusers' own defaults: flipped embedding, freq_shift 0, symmetric padding,
# 2-head attention, norm_eps 1e-5, one channel, three levels, attention at the top level too.
SMALL_DIFFUSERS_DEFAULTS = dict(
    sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32, 32), layers_per_block=2,
    down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"), norm_num_groups=8, attention_head_dim=8,
)


def _save(tmp_path, name, unet_kwargs, scheduler_kwargs=None, seed=0):
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**unet_kwargs).eval()
    directory = tmp_path / name
    model.save_pretrained(directory)
    diffusers.DDPMScheduler(**(scheduler_kwargs or {})).save_pretrained(directory)
    return model, directory


def _torch_forward(model, x_nhwc, t):
    with torch.no_grad():
        out = model(torch.from_numpy(np.asarray(x_nhwc).transpose(0, 3, 1, 2)), torch.from_numpy(np.asarray(t)).long())
    return out.sample.numpy().transpose(0, 2, 3, 1)


def _rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("pretrained"), "small", SMALL_DDPM)


def test_class_conditional_unet_matches_pytorch_for_every_label(tmp_path):
    """num_class_embeds=N (class_embed_type None) -> num_classes = N - 1, diffusers' last row the null class."""
    torch_model, directory = _save(tmp_path, "cond", dict(SMALL_DDPM, num_class_embeds=4), seed=3)
    with torch.no_grad():  # diffusers' nn.Embedding starts N(0, 1); make the rows clearly different anyway
        torch_model.class_embedding.weight.mul_(3.0)
    torch_model.save_pretrained(directory)
    model, variables = load_diffusers_unet(directory)
    assert model.num_classes == 3
    assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == sum(p.numel() for p in torch_model.parameters())
    np.testing.assert_array_equal(variables["params"]["class_embedding"]["embedding"],
                                  torch_model.class_embedding.weight.detach().numpy())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 16, 16, 3)).astype(np.float32)
    t = np.array([0, 250, 600, 999], np.int32)
    labels = np.array([0, 1, 2, 3], np.int32)  # 3 = the null class (diffusers' last row)
    got = np.asarray(jax.jit(model.apply)(variables, x, t, labels))
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t).long(),
                           class_labels=torch.from_numpy(labels).long()).sample.numpy().transpose(0, 2, 3, 1)
    assert _rel_err(got, want) < 1e-5
    other = np.asarray(jax.jit(model.apply)(variables, x, t, labels[::-1].copy()))
    assert _rel_err(other, want) > 1e-3  # the labels matter, so the comparison above can fail
    null = np.asarray(jax.jit(model.apply)(variables, x, t, np.full(4, 3, np.int32)))
    assert _rel_err(null, _torch_forward_labels(torch_model, x, t, 3)) < 1e-5


def _torch_forward_labels(model, x_nhwc, t, label):
    labels = torch.full((x_nhwc.shape[0],), label, dtype=torch.long)
    with torch.no_grad():
        out = model(torch.from_numpy(np.asarray(x_nhwc).transpose(0, 3, 1, 2)), torch.from_numpy(np.asarray(t)).long(),
                    class_labels=labels)
    return out.sample.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("layout", [SMALL_DDPM, SMALL_DIFFUSERS_DEFAULTS], ids=["ddpm", "diffusers_defaults"])
def test_small_layouts_match_pytorch(tmp_path, layout):
    torch_model, directory = _save(tmp_path, "m", layout)
    model, variables = load_diffusers_unet(directory)
    n_torch = sum(p.numel() for p in torch_model.parameters())
    assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == n_torch
    rng = np.random.default_rng(0)
    size, channels = layout["sample_size"], layout["in_channels"]
    x = rng.standard_normal((3, size, size, channels)).astype(np.float32)
    t = np.array([0, 321, 999], np.int32)
    got = np.asarray(jax.jit(model.apply)(variables, x, t))
    want = _torch_forward(torch_model, x, t)
    assert got.shape == want.shape == (3, size, size, layout["out_channels"])
    # float32 end to end, different summation orders (XLA vs oneDNN convs): ~1e-6 observed.
    assert _rel_err(got, want) < 1e-5
    assert image_shape(directory) == (size, channels)


def test_cifar10_ddpm_layout_matches_pytorch(tmp_path):
    torch_model, directory = _save(tmp_path, "cifar10", CIFAR10)
    model, variables = load_diffusers_unet(directory)
    assert sum(p.numel() for p in torch_model.parameters()) == 35_746_307
    assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == 35_746_307
    assert model.attn_resolutions == (16,) and tuple(model.ch_mult) == (1, 2, 2, 2) and model.ch == 128
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    t = np.array([7, 951], np.int32)
    got = np.asarray(jax.jit(model.apply)(variables, x, t))
    want = _torch_forward(torch_model, x, t)
    assert _rel_err(got, want) < 1e-5


def test_ddim_sampling_matches_plain_pytorch_loop(small):
    """Our jitted lax.scan sampler vs a hand-written PyTorch loop of Eq. 12 (eta = 0) on the same weights."""
    torch_model, directory = small
    model, variables = load_diffusers_unet(directory)
    schedule = load_diffusers_schedule(directory)
    alphas_cumprod = alphas_cumprod_from_betas(schedule["betas"])
    seq = timestep_sequence(5, schedule["num_timesteps"], "uniform")  # [800, 600, 400, 200, 0]
    x_T = np.random.default_rng(2).standard_normal((2, 16, 16, 3)).astype(np.float32)

    def apply_fn(x, t, params):
        return model.apply({"params": params}, x, t)

    ours = np.asarray(sample(apply_fn, jnp.asarray(x_T), seq, alphas_cumprod, eps_fn_args=(variables["params"],)))

    # The reference uses diffusers' own (float32) alphas_cumprod: this also checks the schedule loading.
    torch_ac = diffusers.DDIMScheduler.from_pretrained(directory).alphas_cumprod.double()
    x = torch.from_numpy(x_T.transpose(0, 3, 1, 2)).double()
    steps = list(seq) + [-1]
    with torch.no_grad():
        for t, t_prev in zip(steps[:-1], steps[1:]):
            a_t = torch_ac[t]
            a_prev = torch_ac[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
            eps = torch_model(x.float(), torch.full((2,), int(t), dtype=torch.long)).sample.double()
            x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()  # Eq. 9
            x = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps  # Eq. 12, sigma = 0
    want = x.numpy().transpose(0, 2, 3, 1)
    assert np.all(np.isfinite(ours))
    # Observed ~5e-7. Each step divides by sqrt(alpha_t) (1/sqrt(a_800) ~ 35), which can amplify the
    # float32 model differences (~1e-6), hence 2e-5; a wrong step (index, sign, sqrt) gives O(1).
    assert _rel_err(ours, want) < 2e-5


@pytest.mark.parametrize(
    "scheduler_kwargs",
    [
        dict(),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=500,
             prediction_type="v_prediction"),
        dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample"),
    ],
    ids=["ddpm_linear", "scaled_linear", "cosine"],
)
def test_schedule_matches_diffusers(tmp_path, scheduler_kwargs):
    scheduler = diffusers.DDPMScheduler(**scheduler_kwargs)
    scheduler.save_pretrained(tmp_path)
    schedule = load_diffusers_schedule(tmp_path)
    assert schedule["betas"].dtype == np.float64 and schedule["num_timesteps"] == scheduler.config.num_train_timesteps
    # diffusers builds betas in float32; ours are float64.
    np.testing.assert_allclose(schedule["betas"], scheduler.betas.numpy(), rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(alphas_cumprod_from_betas(schedule["betas"])),
                               scheduler.alphas_cumprod.numpy(), rtol=2e-5, atol=1e-8)
    expected_type = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[scheduler.config.prediction_type]
    assert schedule["prediction_type"] == expected_type


def test_schedule_defaults_and_bad_options(tmp_path):
    # No scheduler config at all: DDPM's linear 1e-4 .. 0.02, T = 1000.
    schedule = load_diffusers_schedule(tmp_path)
    np.testing.assert_allclose(schedule["betas"][[0, -1]], [1e-4, 2e-2])
    assert schedule["num_timesteps"] == 1000 and schedule["prediction_type"] == "eps"
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "exotic"}))
    with pytest.raises(PretrainedError, match="beta_schedule='exotic'"):
        load_diffusers_schedule(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"prediction_type": "flow"}))
    with pytest.raises(PretrainedError, match="prediction_type='flow'"):
        load_diffusers_schedule(tmp_path)


@pytest.mark.parametrize("key, value", [("clip_sample_range", 2.0), ("thresholding", True),
                                        ("set_alpha_to_one", False), ("steps_offset", 1)])
def test_scheduler_options_that_change_the_result_are_refused_by_name(tmp_path, key, value):
    (tmp_path / "scheduler_config.json").write_text(json.dumps({key: value}))
    with pytest.raises(PretrainedError, match=rf"unsupported scheduler option {key}="):
        load_diffusers_schedule(tmp_path)
    default = {"clip_sample_range": 1.0, "thresholding": False, "set_alpha_to_one": True, "steps_offset": 0}[key]
    (tmp_path / "scheduler_config.json").write_text(json.dumps({key: default}))
    load_diffusers_schedule(tmp_path)   # the default value is what this sampler does: accepted


def test_scheduler_timestep_spacing_becomes_the_sampling_default(tmp_path):
    assert load_diffusers_schedule(tmp_path)["skip"] is None
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"timestep_spacing": "trailing"}))
    assert load_diffusers_schedule(tmp_path)["skip"] == "trailing"
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"timestep_spacing": "karras"}))
    with pytest.raises(PretrainedError, match="timestep_spacing='karras'"):
        load_diffusers_schedule(tmp_path)


def test_pipeline_layout_and_legacy_attention_names(tmp_path, small):
    """A pipeline dir (unet/ + scheduler/) with pre-0.15 attention names loads to the same outputs."""
    torch_model, directory = small
    pipeline = tmp_path / "pipeline"
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "scheduler").mkdir()
    shutil.copy(directory / "config.json", pipeline / "unet" / "config.json")
    shutil.copy(directory / "scheduler_config.json", pipeline / "scheduler" / "scheduler_config.json")
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in load_file(str(directory / WEIGHTS)).items():
        for new, old in legacy.items():
            key = key.replace(f".{new}.", f".{old}.")
        state[key] = value
    assert any(".proj_attn." in key for key in state)
    save_file(state, str(pipeline / "unet" / WEIGHTS))

    model, variables = load_diffusers_unet(pipeline)
    x = np.random.default_rng(3).standard_normal((1, 16, 16, 3)).astype(np.float32)
    t = np.array([500], np.int32)
    assert _rel_err(np.asarray(jax.jit(model.apply)(variables, x, t)), _torch_forward(torch_model, x, t)) < 1e-5
    assert load_diffusers_schedule(pipeline)["num_timesteps"] == 1000


def _copy(directory, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def test_pickles_are_refused(tmp_path, small):
    _, directory = small
    target = _copy(directory, tmp_path)
    os.remove(target / WEIGHTS)
    (target / "diffusion_pytorch_model.bin").write_bytes(b"not loaded: must never be unpickled")
    with pytest.raises(PretrainedError, match=r"diffusion_pytorch_model\.bin.*pickle.*safetensors"):
        load_diffusers_unet(target)
    with pytest.raises(PretrainedError, match="pickle"):
        resolve_pretrained(str(target / "diffusion_pytorch_model.bin"))


def _edit_weights(target, edit):
    state = load_file(str(target / WEIGHTS))
    edit(state)
    save_file(state, str(target / WEIGHTS))


def test_weight_mismatches_are_named(tmp_path, small):
    _, directory = small
    target = _copy(directory, tmp_path)
    missing = "down_blocks.1.attentions.0.to_k.weight"
    _edit_weights(target, lambda s: s.pop(missing))
    with pytest.raises(PretrainedError, match=rf"missing weights: {missing}"):
        load_diffusers_unet(target)

    shutil.copy(directory / WEIGHTS, target / WEIGHTS)
    _edit_weights(target, lambda s: s.update({"mid_block.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(PretrainedError, match=r"unexpected weights: mid_block\.extra\.weight"):
        load_diffusers_unet(target)

    shutil.copy(directory / WEIGHTS, target / WEIGHTS)
    _edit_weights(target, lambda s: s.update({"conv_out.weight": np.zeros((3, 32, 1, 1), np.float32)}))
    with pytest.raises(PretrainedError, match=r"wrong shapes: conv_out\.weight \(checkpoint \(3, 32, 1, 1\)"):
        load_diffusers_unet(target)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]},
         "unsupported block types: CrossAttnDownBlock2D"),
        ({"up_block_types": ["AttnUpBlock2D", "SkipUpBlock2D"]}, "SkipUpBlock2D"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ({"num_class_embeds": 1}, "num_class_embeds=1"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift='scale_shift'"),
        ({"some_future_option": 1}, "unsupported UNet2DModel config keys: some_future_option"),
        ({"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel"),
        ({"up_block_types": ["UpBlock2D", "UpBlock2D"]}, "same resolutions on the way down and up"),
    ],
)
def test_unsupported_configs_are_named(tmp_path, small, change, match):
    _, directory = small
    target = _copy(directory, tmp_path)
    config = json.loads((target / "config.json").read_text())
    config.update(change)
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=match):
        load_diffusers_unet(target)


def _published_config(block_out_channels, down, up, sample_size):
    """The key set of the published google/ddpm-* config.json files (diffusers 0.0.4 era)."""
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
        "block_out_channels": list(block_out_channels), "center_input_sample": False, "down_block_types": list(down),
        "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3,
        "sample_size": sample_size, "time_embedding_type": "positional", "up_block_types": list(up),
    }


def test_published_ddpm_configs_map_to_the_paper_models():
    cifar10 = unet_kwargs_from_diffusers_config(_published_config(
        (128, 256, 256, 256), CIFAR10["down_block_types"], CIFAR10["up_block_types"], 32))
    assert cifar10 == dict(
        ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, resamp_with_conv=True,
        out_ch=3, num_groups=32, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1.0, downsample_padding=0,
        attn_head_dim=None, num_classes=0, sample_size=32, in_channels=3,
    )
    # The 256x256 LSUN/CelebA-HQ ladder (1, 1, 2, 2, 4, 4) with attention at 16x16.
    lsun = unet_kwargs_from_diffusers_config(_published_config(
        (128, 128, 256, 256, 512, 512),
        ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
        ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4, 256))
    assert lsun["ch_mult"] == (1, 1, 2, 2, 4, 4) and lsun["attn_resolutions"] == (16,)


def test_resolve_pretrained(tmp_path, small, monkeypatch):
    _, directory = small
    assert resolve_pretrained(str(directory)) == os.path.abspath(directory)
    with pytest.raises(PretrainedError, match="no such directory"):
        resolve_pretrained(str(tmp_path / "absent"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(PretrainedError, match="no such directory: runs/typo"):  # never tried as a hub id
        resolve_pretrained("runs/typo")

    import huggingface_hub

    def failing_download(repo_id, **kwargs):
        raise OSError("Network is unreachable\nsecond line of a long traceback-ish message")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing_download)
    with pytest.raises(PretrainedError, match="could not download google/ddpm-cifar10-32") as info:
        resolve_pretrained("google/ddpm-cifar10-32")
    assert "\n" not in str(info.value)

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if the optional extra were absent
    with pytest.raises(PretrainedError, match=r"ddim-jax\[hub\]"):
        resolve_pretrained("google/ddpm-cifar10-32")


def test_export_to_workdir_round_trip(tmp_path, small, capsys):
    from ddim_jax.training.checkpoints import load_for_sampling

    _, directory = small
    workdir = tmp_path / "run"
    assert main(["--pretrained", str(directory), "--workdir", str(workdir)]) == 0
    config, params, step = load_for_sampling(str(workdir), use_ema=True)
    assert step == 0
    assert (config.data.image_size, config.data.channels, config.data.name) == (16, 3, "celeb_a")
    assert (config.model.ch, tuple(config.model.ch_mult), tuple(config.model.attn_resolutions)) == (32, (1, 2), (8,))
    assert config.model.num_groups == 8 and config.model.freq_shift == 1.0 and not config.model.flip_sin_to_cos
    assert config.diffusion.beta_schedule == "linear" and config.diffusion.num_timesteps == 1000
    _, variables = load_diffusers_unet(directory)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Sampling the exported workdir follows the checkpoint's conventions, as --pretrained does:
    # same clipping, and eps kept (not re-derived) after clipping, like diffusers' DDIMScheduler.

    from_workdir, from_pretrained = loading.load_run(str(workdir)), loading.load_pretrained(str(directory))
    assert from_workdir.rederive_eps is False and from_pretrained.rederive_eps is False
    assert from_workdir.defaults["clip_x0"] == from_pretrained.defaults["clip_x0"]
    spec = sampler_spec.SamplerSpec(steps=3, clip_x0=True)
    seq = timestep_sequence(3, 1000)
    x_T = 3 * np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3)))
    np.testing.assert_allclose(
        batching.BatchedSampler(from_workdir, 2).decode_batch(x_T, seq, spec, jax.random.PRNGKey(1)),
        batching.BatchedSampler(from_pretrained, 2).decode_batch(x_T, seq, spec, jax.random.PRNGKey(1)),
        rtol=1e-5, atol=1e-5)
    # A second export into the same workdir is refused with a one-line message and exit status 1.
    capsys.readouterr()
    with pytest.raises(SystemExit, match="^1$"):
        main(["--pretrained", str(directory), "--workdir", str(workdir)])
    assert "already holds checkpoints" in capsys.readouterr().err
    with pytest.raises(PretrainedError, match="no such directory"):
        export_pretrained_to_workdir(str(tmp_path / "absent"), tmp_path / "run2")


@pytest.mark.parametrize("change, match", [
    ({"block_out_channels": 32}, "block_out_channels must be a non-empty list of positive integers, got 32"),
    ({"block_out_channels": [0, 64]}, "block_out_channels must be"),
    ({"block_out_channels": []}, "block_out_channels must be"),
    ({"layers_per_block": "2"}, "layers_per_block must be a positive integer, got '2'"),
    ({"layers_per_block": 0}, "layers_per_block must be a positive integer"),
    ({"norm_num_groups": 7}, "not all divisible by norm_num_groups=7"),
    ({"in_channels": True}, "in_channels must be a positive integer"),
    ({"sample_size": 0}, "sample_size must be"),
    ({"sample_size": "16"}, "sample_size must be"),
    ({"norm_eps": -1}, "norm_eps must be a positive number"),
    ({"dropout": "x"}, "dropout must be a number"),
    ({"flip_sin_to_cos": "no"}, "flip_sin_to_cos must be true or false"),
    ({"attention_head_dim": 0}, "attention_head_dim must be a positive integer or null"),
    ({"down_block_types": "DownBlock2D"}, "down_block_types must be a list"),
])
def test_config_values_of_the_wrong_type_or_range_are_one_line(tmp_path, small, change, match):
    target = _copy(small[1], tmp_path)
    config = json.loads((target / "config.json").read_text())
    config.update(change)
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=match) as info:
        load_diffusers_unet(target)
    assert "\n" not in str(info.value)


def test_unreadable_configs_non_float_weights_and_escaping_shards_are_refused(tmp_path, small):
    target = _copy(small[1], tmp_path)
    (target / "config.json").write_bytes(b"\xff\xfe{not utf-8")
    with pytest.raises(PretrainedError, match="is not UTF-8 text"):
        load_diffusers_unet(target)
    shutil.copy(small[1] / "config.json", target / "config.json")
    for dtype, name in ((np.int32, "I32"), (np.bool_, "BOOL")):
        shutil.copy(small[1] / WEIGHTS, target / WEIGHTS)
        _edit_weights(target, lambda s, dtype=dtype: s.update({"conv_out.bias": np.ones(3, dtype)}))
        with pytest.raises(PretrainedError, match=rf"must be floating point; conv_out\.bias is {name}"):
            load_diffusers_unet(target)
    os.remove(target / WEIGHTS)
    for shard in ("../outside.safetensors", "/etc/hostname", "sub/../../x.safetensors"):
        (target / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"conv_out.bias": shard}}))
        with pytest.raises(PretrainedError, match="not a file in the model directory"):
            load_diffusers_unet(target)


def test_export_into_a_file_or_an_unwritable_path_is_one_line(tmp_path, small, capsys):
    (tmp_path / "file").write_text("x")
    for workdir in (tmp_path / "file", tmp_path / "file" / "run", "/proc/ddim_jax_test/run"):
        with pytest.raises(SystemExit, match="^1$"):
            main(["--pretrained", str(small[1]), "--workdir", str(workdir)])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("python -m ddim_jax.pretrained: error: "), err
