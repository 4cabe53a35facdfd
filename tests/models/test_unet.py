"""Tests for the DDPM UNet (ddim_jax/models/unet.py): shapes, exact parameter count, dropout,
timestep embedding and input validation. All on tiny configs except the CIFAR-10 count, which
uses jax.eval_shape (no weights are materialised)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ddim_jax.models import UNet, create_model, timestep_embedding
from ddim_jax.models.unet_blocks import Downsample, GroupNorm

TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, out_ch=1)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _random_params(model, x, t, seed, scale=0.2):
    """Gaussian parameters of the right structure (no real init: ``eval_shape`` gives the shapes),
    so that no branch is (near-)zero initialised as DDPM's init makes it."""
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, t))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def tiny():
    model = UNet(**TINY, dropout=0.3)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([5, 700], jnp.int32)
    params = _random_params(model, x, t, seed=2)
    return model, params, x, t


def test_ddpm_init_starts_near_zero():
    """DDPM init: the output conv (and every residual branch's last layer) starts near zero."""
    model = UNet(ch=4, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=2, out_ch=1)
    x, t = jnp.ones((1, 4, 4, 1)), jnp.array([3], jnp.int32)
    params = jax.jit(model.init)({"params": jax.random.key(0)}, x, t)["params"]
    assert float(jnp.abs(params["conv_in"]["kernel"]).max()) > 0.05  # ordinary layers are not
    assert float(jnp.abs(params["conv_out"]["kernel"]).max()) < 1e-4
    assert float(jnp.abs(params["mid_block"]["attentions_0"]["to_out_0"]["kernel"]).max()) < 1e-4
    out = model.apply({"params": params}, x, t)
    assert out.shape == (1, 4, 4, 1) and 0 < float(jnp.abs(out).max()) < 1e-3


def test_tiny_output_shape_and_structure(tiny):
    model, params, x, t = tiny
    out = model.apply({"params": params}, x, t)
    assert out.shape == (2, 8, 8, 1) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    # Attention exactly where the resolution is 4 (level 1 of an 8x8 input) and in the middle.
    assert "attentions_0" in params["down_blocks_1"] and "attentions_0" not in params["down_blocks_0"]
    assert set(params["up_blocks_0"]) == {"resnets_0", "resnets_1", "attentions_0", "attentions_1", "upsamplers_0"}
    assert set(params["up_blocks_1"]) == {"resnets_0", "resnets_1"}
    assert set(params["mid_block"]) == {"resnets_0", "attentions_0", "resnets_1"}
    assert "downsamplers_0" in params["down_blocks_0"] and "downsamplers_0" not in params["down_blocks_1"]
    # Channels: 1 -> 8 -> 16; the first up resnet sees mid (16) + skip (16).
    assert params["conv_in"]["kernel"].shape == (3, 3, 1, 8)
    assert params["up_blocks_0"]["resnets_0"]["conv1"]["kernel"].shape == (3, 3, 32, 16)
    assert params["up_blocks_1"]["resnets_1"]["conv_shortcut"]["kernel"].shape == (1, 1, 16, 8)
    assert params["time_embedding"]["linear_1"]["kernel"].shape == (8, 32)


def test_cifar10_parameter_count_is_exactly_ddpm():
    """35,746,307 = the diffusers UNet2DModel for google/ddpm-cifar10-32 (counted in PyTorch)."""
    model = UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
    shapes = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32))
    )
    assert _count(shapes["params"]) == 35_746_307
    # Attention at 16x16 only (level 1), as in DDPM.
    attn_levels = [lvl for lvl in range(4) if "attentions_0" in shapes["params"][f"down_blocks_{lvl}"]]
    assert attn_levels == [1]


def test_dropout_only_with_train(tiny):
    model, params, x, t = tiny
    variables = {"params": params}
    eval_a = model.apply(variables, x, t)
    eval_b = model.apply(variables, x, t, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_1 = model.apply(variables, x, t, train=True, rngs={"dropout": jax.random.key(10)})
    train_1b = model.apply(variables, x, t, train=True, rngs={"dropout": jax.random.key(10)})
    train_2 = model.apply(variables, x, t, train=True, rngs={"dropout": jax.random.key(11)})
    np.testing.assert_array_equal(train_1, train_1b)
    scale = float(jnp.abs(eval_a).mean())
    assert float(jnp.abs(train_1 - eval_a).mean()) > 1e-2 * scale
    assert float(jnp.abs(train_1 - train_2).mean()) > 1e-2 * scale
    # dropout=0: train mode is the eval function.
    no_drop = UNet(**TINY, dropout=0.0)
    np.testing.assert_allclose(
        no_drop.apply(variables, x, t, train=True, rngs={"dropout": jax.random.key(3)}), eval_a, rtol=1e-6, atol=1e-6
    )


def test_timestep_conditions_the_output_and_scalar_t_broadcasts(tiny):
    model, params, x, _ = tiny
    variables = {"params": params}
    out_scalar = model.apply(variables, x, jnp.int32(42))
    out_vector = model.apply(variables, x, jnp.array([42, 42], jnp.int32))
    np.testing.assert_allclose(out_scalar, out_vector, rtol=1e-6, atol=1e-6)
    out_other = model.apply(variables, x, jnp.array([43, 900], jnp.int32))
    assert float(jnp.abs(out_other - out_vector).max()) > 1e-3


def _embedding_float64(t, dim, flip, shift):
    half = dim // 2
    k = np.arange(half, dtype=np.float64)
    freqs = np.exp(-math.log(10000.0) * k / (half - shift))
    args = np.asarray(t, np.float64)[:, None] * freqs[None]
    parts = [np.cos(args), np.sin(args)] if flip else [np.sin(args), np.cos(args)]
    emb = np.concatenate(parts, axis=1)
    return np.pad(emb, ((0, 0), (0, dim % 2)))


@pytest.mark.parametrize("dim,flip,shift", [(128, False, 1.0), (64, True, 0.0), (9, False, 1.0)])
def test_timestep_embedding_matches_float64_formula(dim, flip, shift):
    t = np.array([0, 1, 17, 500, 999], np.int32)
    got = np.asarray(timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, freq_shift=shift))
    want = _embedding_float64(t, dim, flip, shift)
    assert got.shape == (5, dim) and got.dtype == np.float32
    # Arguments up to 999 rad in float32 lose ~999 * 2**-24 ~ 6e-5 rad; 2e-4 still catches any
    # wrong frequency, shift, order or sin/cos swap (those change entries by O(1)).
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
    # DDPM's layout: t = 0 gives [0]*half ++ [1]*half.
    if not flip:
        np.testing.assert_array_equal(got[0, : dim // 2], 0.0)
        np.testing.assert_array_equal(got[0, dim // 2 : 2 * (dim // 2)], 1.0)


def test_resamp_without_conv_has_no_resampling_params():
    model = UNet(**{**TINY, "attn_resolutions": ()}, dropout=0.0, resamp_with_conv=False)
    x = jnp.ones((1, 8, 8, 1))
    params = _random_params(model, x, jnp.array([1]), seed=0)
    variables = {"params": params}
    assert "downsamplers_0" not in params["down_blocks_0"] and "upsamplers_0" not in params["up_blocks_0"]
    assert "attentions_0" not in params["down_blocks_1"]  # only the mid block attends
    assert model.apply(variables, x, jnp.array([1])).shape == (1, 8, 8, 1)


def test_downsample_padding_zero_is_tensorflow_same():
    """DDPM's stride-2 conv used TF 'SAME' padding: one extra row/column at the bottom/right."""
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
    layer = Downsample(with_conv=True, padding=0)
    params = layer.init(jax.random.key(1), x)["params"]
    got = layer.apply({"params": params}, x)
    want = jax.lax.conv_general_dilated(
        x, params["conv"]["kernel"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ) + params["conv"]["bias"]
    assert got.shape == (1, 3, 3, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_create_model_reads_run_config():
    config = ml_collections.ConfigDict()
    config.data = dict(channels=1, image_size=8)
    config.model = dict(
        ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.05,
        resamp_with_conv=False, num_groups=8, norm_eps=1e-5,
    )
    model = create_model(config)
    assert model == UNet(
        ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.05,
        resamp_with_conv=False, out_ch=1, num_groups=8, norm_eps=1e-5,
    )


@pytest.mark.parametrize(
    "shape,t,match",
    [
        ((8, 8, 1), [1], "4-D"),
        ((2, 8, 4, 1), [1, 2], "square"),
        ((2, 7, 7, 1), [1, 2], "divisible by 2"),
        ((2, 1, 8, 8), [1, 2], "NCHW"),
        ((2, 8, 8, 1), [1, 2, 3], r"shape \[B\]"),
        ((2, 8, 8, 1), [[1, 2]], r"shape \[B\]"),
    ],
)
def test_bad_inputs_raise_clear_value_error(tiny, shape, t, match):
    model, params, _, _ = tiny
    with pytest.raises(ValueError, match=match):
        model.apply({"params": params}, jnp.zeros(shape), jnp.asarray(t, jnp.int32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_groups=3), "num_groups: 3 groups do not divide 8 channels"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(dropout=1.0), "dropout"),
        (dict(ch_mult=()), "ch_mult"),
        (dict(attn_head_dim=3), "attn_head_dim=3"),
        (dict(downsample_padding=2), "downsample_padding"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{**TINY, **kwargs})


def test_eps_fn_for_is_one_function_per_architecture():
    """sample() treats eps_fn as static: equal architectures must share one function object."""
    from ddim_jax.models import eps_fn_for

    small = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, out_ch=1, num_groups=4)
    assert eps_fn_for(UNet(**small)) is eps_fn_for(UNet(**small))
    assert eps_fn_for(UNet(**small)) is not eps_fn_for(UNet(**dict(small, ch=16)))
    model = UNet(**small)
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([0, 999])
    params = model.init(jax.random.PRNGKey(0), x, t)["params"]
    np.testing.assert_array_equal(eps_fn_for(model)(x, t, params), model.apply({"params": params}, x, t))


def _group_norm_float64(x, scale, bias, groups, eps):
    b, h, w, c = x.shape
    g = np.asarray(x, np.float64).reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = np.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape,groups", [((2, 4, 4, 8), 4), ((3, 2, 2, 6), 3), ((1, 4, 4, 4), 1)])
def test_group_norm_matches_float64_and_flax(shape, groups):
    rng = np.random.default_rng(0)
    # an offset mean and a large scale: a one-pass E[x^2] - E[x]^2 variance would lose digits here
    x = jnp.asarray(rng.standard_normal(shape) * 5 + 30, jnp.float32)
    scale, bias = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    params = {"params": {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}}
    ours = np.asarray(GroupNorm(groups, 1e-6).apply(params, x))
    np.testing.assert_allclose(ours, _group_norm_float64(np.asarray(x), scale, bias, groups, 1e-6), atol=2e-5)
    flax_two_pass = nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False).apply(params, x)
    np.testing.assert_allclose(ours, np.asarray(flax_two_pass), atol=2e-5)
    # the same parameter tree as flax's GroupNorm (pretrained weights map onto either)
    ours_shapes = jax.eval_shape(GroupNorm(groups, 1e-6).init, jax.random.key(0), x)
    flax_shapes = jax.eval_shape(nn.GroupNorm(num_groups=groups).init, jax.random.key(0), x)
    assert ours_shapes == flax_shapes
    assert GroupNorm(groups, 1e-6, dtype=jnp.bfloat16).apply(params, x).dtype == jnp.bfloat16
