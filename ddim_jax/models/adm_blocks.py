"""Building blocks of the ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
Synthesis"; OpenAI's guided-diffusion), in Flax linen, NHWC.

Module and parameter names follow guided-diffusion's PyTorch state dict with each list index glued
on by an underscore (``in_layers.2.weight`` is ``in_layers_2/kernel`` here), so that
:mod:`ddim_jax.pretrained.adm_mapping` maps the published weights one to one.

Precision (``dtype`` = ``"bfloat16"``, our stand-in for guided-diffusion's ``use_fp16``): as there,
the convolutions and the attention's 1x1 projections compute in the low dtype, while GroupNorm
statistics, the attention softmax and the dense layers that read the timestep embedding run in
float32. Parameters are float32 either way.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# guided-diffusion's ``normalization``: GroupNorm with 32 groups and PyTorch's default epsilon.
NUM_GROUPS = 32
NORM_EPS = 1e-5


def group_norm(name: str, dtype: Any) -> nn.GroupNorm:
    """GroupNorm(32 groups, eps 1e-5); statistics in float32 (two-pass variance, as PyTorch), output
    cast to ``dtype`` (guided-diffusion's ``GroupNorm32`` computes in float32 and casts back)."""
    return nn.GroupNorm(num_groups=NUM_GROUPS, epsilon=NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


def conv3x3(features: int, name: str, dtype: Any, stride: int = 1, zero: bool = False) -> nn.Conv:
    """A 3x3 convolution padded by one on every side (PyTorch ``Conv2d(..., 3, padding=1)``);
    ``zero`` starts it at zero (guided-diffusion's ``zero_module``, for layers that end a branch)."""
    extra = {"kernel_init": nn.initializers.zeros} if zero else {}
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), dtype=dtype, name=name,
                   **extra)


def upsample_nearest(x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, 2H, 2W, C]`` by nearest-neighbour repetition."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_avg(x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, H/2, W/2, C]`` by 2x2 average pooling (stride 2)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
    """Nearest x2 then (``use_conv``) a 3x3 conv named ``conv``: ``[B, H, W, C] -> [B, 2H, 2W, C]``."""

    use_conv: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = upsample_nearest(x)
        return conv3x3(x.shape[-1], "conv", self.dtype)(x) if self.use_conv else x


class Downsample(nn.Module):
    """A stride-2 3x3 conv padded by one on every side (named ``op``), or 2x2 average pooling."""

    use_conv: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv3x3(x.shape[-1], "op", self.dtype, stride=2)(x) if self.use_conv else downsample_avg(x)


class ResBlock(nn.Module):
    """guided-diffusion's ``ResBlock``: ``[B, H, W, C_in], emb [B, D] -> [B, H', W', out_channels]``.

    With ``h = conv(silu(norm(x)))`` (``in_layers``; for ``updown`` the resampling of ``x`` and
    ``h`` sits between the SiLU and the conv) and ``e = Dense(silu(emb))`` (``emb_layers``)::

        scale-shift (AdaGN):  [s, b] = e;  h = norm(h) * (1 + s) + b;  h = conv(dropout(silu(h)))
        additive:             h = conv(dropout(silu(norm(h + e))))
        out = skip(x) + h,    skip = identity, or a 1x1 conv when the channel count changes.

    ``updown`` is ``"up"`` (nearest x2), ``"down"`` (2x2 average pool) or ``None``.
    """

    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    updown: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        h = nn.silu(group_norm("in_layers_0", self.dtype)(x))
        if self.updown is not None:
            resample = upsample_nearest if self.updown == "up" else downsample_avg
            h, x = resample(h), resample(x)
        h = conv3x3(self.out_channels, "in_layers_2", self.dtype)(h)
        # emb_layers is a plain Linear, which guided-diffusion keeps in float32 under use_fp16.
        width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        e = nn.Dense(width, dtype=jnp.float32, name="emb_layers_1")(nn.silu(emb))
        e = e.astype(h.dtype)[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = group_norm("out_layers_0", self.dtype)(h) * (1 + scale) + shift
        else:
            h = group_norm("out_layers_0", self.dtype)(h + e)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv3x3(self.out_channels, "out_layers_3", self.dtype, zero=True)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="skip_connection")(x)
        return x + h


def qkv_attention(qkv: jax.Array, num_heads: int, new_order: bool) -> jax.Array:
    """Multi-head attention over the ``T`` positions of a fused projection.

    Args:
      qkv: ``[B, T, 3 C]``, the output of one 1x1 projection.
      num_heads: ``H``; each head has ``c = C / H`` channels.
      new_order: how the ``3 C`` channels split. guided-diffusion's ``QKVAttention`` (True) splits
        into q, k, v first (channel ``j * C + h * c + i`` is entry ``i`` of head ``h`` of part
        ``j``); its ``QKVAttentionLegacy`` (False) splits into heads first (channel
        ``h * 3c + j * c + i``). The same weights give different outputs under the two orders.

    Returns:
      ``[B, T, C]``, head ``h`` in channels ``h * c .. (h + 1) * c - 1``, with per head
      ``softmax((q s)^T (k s)) v``, ``s = c ** -0.25`` (split between q and k, as the reference
      does for half precision); logits accumulate and the softmax runs in float32.
    """
    batch, length, width = qkv.shape
    head_dim = width // (3 * num_heads)
    split = (3, num_heads, head_dim) if new_order else (num_heads, 3, head_dim)
    qkv = qkv.reshape(batch, length, *split)
    q, k, v = (qkv[:, :, j] if new_order else qkv[:, :, :, j] for j in range(3))  # [B, T, H, c]
    scale = jnp.asarray(1.0 / math.sqrt(math.sqrt(head_dim)), q.dtype)
    logits = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshc->bthc", weights, v).reshape(batch, length, num_heads * head_dim)


class AttentionBlock(nn.Module):
    """Self-attention over the ``H * W`` positions with a residual: ``x + proj_out(attn(qkv(norm(x))))``.

    ``[B, H, W, C] -> [B, H, W, C]``; ``qkv`` and ``proj_out`` are guided-diffusion's 1x1 ``Conv1d``
    layers (Dense layers here); see :func:`qkv_attention` for ``num_heads`` and ``new_order``.
    """

    num_heads: int
    new_order: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = group_norm("norm", self.dtype)(x).reshape(batch, height * width, channels)
        h = nn.Dense(3 * channels, dtype=self.dtype, name="qkv")(h)
        h = qkv_attention(h, self.num_heads, self.new_order)
        h = nn.Dense(channels, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="proj_out")(h)
        return x + h.reshape(batch, height, width, channels)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling (guided-diffusion's ``AttentionPool2d``): ``[B, H, W, C] -> [B, out]``.

    The ``H W`` positions plus their mean as a leading token (``[B, H W + 1, C]``) get a learned
    positional embedding ``[H W + 1, C]`` (the transpose of the reference's ``[C, H W + 1]``),
    a fused q/k/v projection (``qkv_proj``), multi-head attention in the new (q, k, v first) order
    with ``C / head_channels`` heads, and an output projection (``c_proj``); the result is the
    mean token's output.
    """

    head_channels: int
    out_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        init = nn.initializers.normal(1.0 / math.sqrt(channels))
        pos = self.param("positional_embedding", init, (height * width + 1, channels), jnp.float32)
        x = x + pos.astype(x.dtype)[None]
        x = nn.Dense(3 * channels, dtype=self.dtype, name="qkv_proj")(x)
        x = qkv_attention(x, channels // self.head_channels, new_order=True)
        x = nn.Dense(self.out_features, dtype=self.dtype, name="c_proj")(x)
        return x[:, 0]
