"""The DDPM UNet's building blocks (names mirror diffusers' ``UNet2DModel``): the sinusoidal
timestep embedding, ResNet blocks, self-attention, down/upsampling and the per-level blocks.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# DDPM initialises with variance scaling (fan_avg, uniform); the layers that end a residual branch
# (a residual block's conv2, the attention output projection) and the output conv start near zero.
NEAR_ZERO_SCALE = 1e-10


def _init(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> jax.Array:
    """Sinusoidal timestep embedding (DDPM; Transformer position encoding).

    With ``half = dim // 2`` and ``k = 0 .. half - 1``::

        freq_k = exp(-log(max_period) * k / (half - freq_shift))
        emb    = [sin(t * freq_k) for k] ++ [cos(t * freq_k) for k]      (cos first if flipped)

    ``freq_shift=1, flip_sin_to_cos=False`` is DDPM's original embedding. An odd ``dim`` gets one
    trailing zero.

    Args:
      timesteps: ``[B]`` integer or float timesteps.
      dim: embedding width.

    Returns:
      ``[B, dim]`` float32.
    """
    half = dim // 2
    if half - freq_shift <= 0:
        raise ValueError(f"timestep embedding dim={dim} is too small for freq_shift={freq_shift}")
    # Frequencies are static: compute them in float64 on the host, then round once to float32.
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / (half - freq_shift))
    args = timesteps.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def group_norm_nhwc(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, eps: float) -> jax.Array:
    """GroupNorm (Wu & He 2018) of ``x [B, H, W, C]`` over ``(H, W, C / num_groups)``, in float32.

    ``(x - mean_g) / sqrt(var_g + eps) * scale + bias`` with the two-pass variance
    ``var_g = mean((x - mean_g)^2)`` (as PyTorch computes it, not ``E[x^2] - E[x]^2``). The sums run
    over H and W per channel first (channels stay the contiguous, vectorised axis) and only then over
    the channels of a group on the small ``[B, C]`` partial sums: the same statistics as reducing a
    ``[B, H, W, G, C / G]`` reshape, at about half the CPU time (``docs/cpu_speed.md``).
    """
    batch, _, _, channels = x.shape
    per_group = channels // num_groups
    x = x.astype(jnp.float32)
    count = x.shape[1] * x.shape[2] * per_group

    def group_mean(per_channel_sum):  # [B, C] -> the group's mean, repeated per channel [B, C]
        means = jnp.sum(per_channel_sum.reshape(batch, num_groups, per_group), axis=-1) / count
        return jnp.repeat(means, per_group, axis=-1)

    centred = x - group_mean(jnp.sum(x, axis=(1, 2)))[:, None, None, :]
    variance = group_mean(jnp.sum(jnp.square(centred), axis=(1, 2)))
    multiplier = jax.lax.rsqrt(variance + eps) * scale.astype(jnp.float32)
    return centred * multiplier[:, None, None, :] + bias.astype(jnp.float32)


class GroupNorm(nn.Module):
    """GroupNorm with float32 ``scale`` (ones) and ``bias`` (zeros) of shape ``[C]``, the parameters of
    ``flax.linen.GroupNorm``; statistics in float32 whatever ``dtype``, output cast to ``dtype``."""

    num_groups: int
    epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return group_norm_nhwc(x, scale, bias, self.num_groups, self.epsilon).astype(self.dtype)


def group_norm(num_groups: int, eps: float, name: str, dtype: Any = jnp.float32) -> GroupNorm:
    return GroupNorm(num_groups=num_groups, epsilon=eps, dtype=dtype, name=name)


def conv3x3(features: int, name: str, scale: float = 1.0, dtype: Any = jnp.float32) -> nn.Conv:
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_init(scale), dtype=dtype, name=name)


class TimestepEmbedding(nn.Module):
    """``linear_2(swish(linear_1(emb)))``: ``[B, ch] -> [B, 4 ch]``."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, emb: jax.Array) -> jax.Array:
        emb = nn.Dense(self.features, kernel_init=_init(), dtype=self.dtype, name="linear_1")(emb)
        emb = nn.swish(emb)
        return nn.Dense(self.features, kernel_init=_init(), dtype=self.dtype, name="linear_2")(emb)


class ResnetBlock(nn.Module):
    """DDPM residual block with additive time conditioning: ``[B, H, W, C_in] -> [B, H, W, out_ch]``."""

    out_ch: int
    num_groups: int
    norm_eps: float
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
        h = nn.swish(group_norm(self.num_groups, self.norm_eps, "norm1", self.dtype)(x))
        h = conv3x3(self.out_ch, "conv1", dtype=self.dtype)(h)
        h = h + nn.Dense(self.out_ch, kernel_init=_init(), dtype=self.dtype, name="time_emb_proj")(nn.swish(temb))[
            :, None, None, :
        ]
        h = nn.swish(group_norm(self.num_groups, self.norm_eps, "norm2", self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(self.out_ch, "conv2", scale=NEAR_ZERO_SCALE, dtype=self.dtype)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), kernel_init=_init(), dtype=self.dtype, name="conv_shortcut")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Self-attention over all ``H * W`` positions with a residual connection.

    ``softmax(q k^T / sqrt(d)) v`` per head, ``d = C / num_heads``; ``head_dim=None`` is one head
    (DDPM). ``[B, H, W, C] -> [B, H, W, C]``.
    """

    num_groups: int
    norm_eps: float
    head_dim: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        head_dim = channels if self.head_dim is None else self.head_dim
        if channels % head_dim:
            raise ValueError(f"attention head_dim={head_dim} does not divide the {channels} channels")
        num_heads = channels // head_dim
        h = group_norm(self.num_groups, self.norm_eps, "group_norm", self.dtype)(x)
        h = h.reshape(batch, height * width, channels)
        q, k, v = (
            nn.Dense(channels, kernel_init=_init(), dtype=self.dtype, name=n)(h).reshape(batch, -1, num_heads, head_dim)
            for n in ("to_q", "to_k", "to_v")
        )
        # Logits accumulate and the softmax runs in float32 whatever the compute dtype.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        h = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height * width, channels)
        h = nn.Dense(channels, kernel_init=_init(NEAR_ZERO_SCALE), dtype=self.dtype, name="to_out_0")(h)
        return x + h.reshape(batch, height, width, channels)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv, or a 2x2 average pool when ``with_conv`` is False.

    ``padding=0`` pads one row/column at the bottom/right only (TensorFlow "SAME" for even sizes, as
    in DDPM); ``padding=1`` pads one on every side.
    """

    with_conv: bool
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.with_conv:
            return nn.avg_pool(x, (2, 2), strides=(2, 2))
        pad = ((0, 1), (0, 1)) if self.padding == 0 else ((self.padding,) * 2,) * 2
        return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=pad, kernel_init=_init(), dtype=self.dtype,
                       name="conv")(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3x3 conv if ``with_conv``."""

    with_conv: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        if self.with_conv:
            x = conv3x3(x.shape[-1], "conv", dtype=self.dtype)(x)
        return x


class DownBlock(nn.Module):
    """One resolution level of the encoder. Returns the output and the skip activations it stores."""

    out_ch: int
    num_res_blocks: int
    use_attention: bool
    add_downsample: bool
    num_groups: int
    norm_eps: float
    dropout: float
    attn_head_dim: int | None
    resamp_with_conv: bool
    downsample_padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train):
        skips = []
        for i in range(self.num_res_blocks):
            x = ResnetBlock(self.out_ch, self.num_groups, self.norm_eps, self.dropout, self.dtype,
                            name=f"resnets_{i}")(
                x, temb, train
            )
            if self.use_attention:
                x = AttentionBlock(self.num_groups, self.norm_eps, self.attn_head_dim, self.dtype,
                                   name=f"attentions_{i}")(x)
            skips.append(x)
        if self.add_downsample:
            x = Downsample(self.resamp_with_conv, self.downsample_padding, self.dtype, name="downsamplers_0")(x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """One resolution level of the decoder; consumes ``num_res_blocks + 1`` skip activations."""

    out_ch: int
    num_res_blocks: int
    use_attention: bool
    add_upsample: bool
    num_groups: int
    norm_eps: float
    dropout: float
    attn_head_dim: int | None
    resamp_with_conv: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skips, temb, train):
        for i in range(self.num_res_blocks + 1):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = ResnetBlock(self.out_ch, self.num_groups, self.norm_eps, self.dropout, self.dtype,
                            name=f"resnets_{i}")(
                x, temb, train
            )
            if self.use_attention:
                x = AttentionBlock(self.num_groups, self.norm_eps, self.attn_head_dim, self.dtype,
                                   name=f"attentions_{i}")(x)
        if self.add_upsample:
            x = Upsample(self.resamp_with_conv, self.dtype, name="upsamplers_0")(x)
        return x


class MidBlock(nn.Module):
    """Residual block, attention, residual block at the lowest resolution."""

    num_groups: int
    norm_eps: float
    dropout: float
    attn_head_dim: int | None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train):
        channels = x.shape[-1]
        block = functools.partial(ResnetBlock, channels, self.num_groups, self.norm_eps, self.dropout, self.dtype)
        x = block(name="resnets_0")(x, temb, train)
        x = AttentionBlock(self.num_groups, self.norm_eps, self.attn_head_dim, self.dtype, name="attentions_0")(x)
        return block(name="resnets_1")(x, temb, train)
