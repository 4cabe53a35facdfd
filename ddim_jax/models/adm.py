"""The ADM UNet and its noisy classifier (Dhariwal & Nichol 2021; OpenAI's guided-diffusion
``UNetModel`` and ``EncoderUNetModel``) in Flax linen, NHWC.

Both share a trunk (guided-diffusion's ``input_blocks`` and ``middle_block``):

- a sinusoidal timestep embedding of width ``model_channels`` (cos half first, frequencies
  ``exp(-log(10000) k / half)``) and a two-layer MLP to ``4 model_channels`` (``time_embed``);
- a 3x3 conv to ``channel_mult[0] * model_channels``, then per level ``num_res_blocks``
  :class:`~ddim_jax.models.adm_blocks.ResBlock` s, each followed by self-attention when the level's
  downsample rate is in ``attention_ds``, and (all but the last level) a downsampling block: a
  ``ResBlock`` with 2x2 average pooling (``resblock_updown``) or a stride-2 conv;
- a middle ResBlock, attention, ResBlock.

The UNet adds the class embedding (``label_emb``) to the time embedding, runs the decoder
(``output_blocks``: ``num_res_blocks + 1`` ResBlocks per level reading the stored activations,
attention as in the encoder with ``num_heads_upsample`` heads, an upsampling block at the end of
every level but the top one) and ``out`` (GroupNorm, SiLU, 3x3 conv). The classifier ends in
GroupNorm, SiLU and attention pooling to ``out_channels`` logits (``pool="attention"``), or a mean
and a 1x1 conv (``"adaptive"``).

Build them from guided-diffusion's flags with :func:`create_adm_model` /
:func:`create_adm_classifier`; parameter names mirror its state dict (see
:mod:`ddim_jax.models.adm_blocks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddim_jax.models.adm_blocks import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    ResBlock,
    Upsample,
    conv3x3,
    group_norm,
)
from ddim_jax.models.adm_config import adm_classifier_kwargs, adm_unet_kwargs
from ddim_jax.models.unet import timestep_embedding

__all__ = ["ADMUNet", "ADMClassifier", "create_adm_model", "create_adm_classifier"]


class _ADMTrunk(nn.Module):
    """Fields and layers shared by :class:`ADMUNet` and :class:`ADMClassifier`.

    Attributes:
      model_channels: base width (guided-diffusion's ``num_channels`` / ``classifier_width``).
      channel_mult: per-level multipliers; level ``l`` has ``int(channel_mult[l] * model_channels)``
        channels and downsample rate ``2 ** l``.
      num_res_blocks: ResBlocks per encoder level (``classifier_depth`` for the classifier).
      attention_ds: downsample rates with attention (``image_size // r`` of the flags' resolutions).
      dropout: dropout inside ResBlocks (only with ``train=True``).
      conv_resample: stride-2 conv / conv after upsampling (True) or plain pooling / repetition.
      num_heads, num_head_channels: heads per attention layer; ``num_head_channels != -1`` fixes the
        width of a head instead (``channels // num_head_channels`` heads).
      use_scale_shift_norm: AdaGN (``norm(h) * (1 + s) + b``) instead of adding the embedding.
      resblock_updown: resample inside ResBlocks rather than with separate layers.
      use_new_attention_order: guided-diffusion's ``QKVAttention`` (True) or ``QKVAttentionLegacy``.
      in_channels, out_channels: input channels; output channels (UNet) or classes (classifier).
      dtype: ``"float32"`` or ``"bfloat16"`` (guided-diffusion's ``use_fp16``): the trunk's convs
        and attention projections; params, GroupNorm statistics, softmax, the time embedding
        and the output head stay float32.
    """

    model_channels: int = 128
    channel_mult: Sequence[float] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_ds: Sequence[int] = ()
    dropout: float = 0.0
    conv_resample: bool = True
    num_heads: int = 1
    num_head_channels: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    in_channels: int = 3
    out_channels: int = 3
    dtype: str = "float32"

    def _heads(self, channels: int, heads: int) -> int:
        return heads if self.num_head_channels == -1 else channels // self.num_head_channels

    def _attention(self, channels: int, heads: int, name: str) -> AttentionBlock:
        return AttentionBlock(self._heads(channels, heads), self.use_new_attention_order, jnp.dtype(self.dtype),
                              name=name)

    def _resblock(self, channels: int, name: str, updown: str | None = None) -> ResBlock:
        return ResBlock(channels, self.dropout, self.use_scale_shift_norm, updown, jnp.dtype(self.dtype), name=name)

    def _check_input(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, t = jnp.asarray(x), jnp.asarray(t)
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[1] % factor or x.shape[3] != self.in_channels:
            raise ValueError(f"ADM input x must be [B, H, H, {self.in_channels}] (NHWC) with H divisible by "
                             f"{factor}, got shape {x.shape}")
        if t.shape not in ((), (x.shape[0],)):
            raise ValueError(f"ADM timesteps t must have shape [B]=({x.shape[0]},) or be a scalar, got {t.shape}")
        return x.astype(jnp.float32), jnp.broadcast_to(t, (x.shape[0],))

    def _time_embedding(self, t: jax.Array) -> jax.Array:
        """``[B]`` -> ``[B, 4 model_channels]``, float32 (guided-diffusion keeps it so under fp16)."""
        emb = timestep_embedding(t, self.model_channels, flip_sin_to_cos=True, freq_shift=0.0)
        width = 4 * self.model_channels
        emb = nn.Dense(width, name="time_embed_0")(emb)
        return nn.Dense(width, name="time_embed_2")(nn.silu(emb))

    def _trunk(self, x: jax.Array, emb: jax.Array, train: bool) -> tuple[jax.Array, list[jax.Array], int]:
        """``input_blocks`` and ``middle_block``: returns the output, the stored activations (one per
        input block) and the final downsample rate."""
        channels = int(self.channel_mult[0] * self.model_channels)
        h = conv3x3(channels, "input_blocks_0_0", jnp.dtype(self.dtype))(x.astype(self.dtype))
        stored, block, rate = [h], 1, 1
        for level, mult in enumerate(self.channel_mult):
            channels = int(mult * self.model_channels)
            for _ in range(self.num_res_blocks):
                h = self._resblock(channels, f"input_blocks_{block}_0")(h, emb, train)
                if rate in self.attention_ds:
                    h = self._attention(channels, self.num_heads, f"input_blocks_{block}_1")(h)
                stored.append(h)
                block += 1
            if level != len(self.channel_mult) - 1:
                name = f"input_blocks_{block}_0"
                if self.resblock_updown:
                    h = self._resblock(channels, name, "down")(h, emb, train)
                else:
                    h = Downsample(self.conv_resample, jnp.dtype(self.dtype), name=name)(h)
                stored.append(h)
                block, rate = block + 1, rate * 2
        h = self._resblock(channels, "middle_block_0")(h, emb, train)
        h = self._attention(channels, self.num_heads, "middle_block_1")(h)
        h = self._resblock(channels, "middle_block_2")(h, emb, train)
        return h, stored, rate


class ADMUNet(_ADMTrunk):
    """guided-diffusion's ``UNetModel``: ``eps`` (and, with ``out_channels = 2 C``, the variance
    interpolation ``v`` of ``learn_sigma``) from ``x_t`` and ``t``.

    Attributes (besides :class:`_ADMTrunk`'s):
      num_heads_upsample: heads in the decoder's attention (when ``num_head_channels == -1``).
      num_classes: 0 (unconditional) or the number of classes (``label_emb`` rows; no null class).
    """

    num_heads_upsample: int = 1
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """Args:
          x: ``[B, H, H, in_channels]`` float, ``H`` divisible by ``2 ** (len(channel_mult) - 1)``.
          t: ``[B]`` (or scalar) timesteps as the model was trained on them (integers ``0 .. T-1``, or
            the float ``t * 1000 / T`` of ``rescale_timesteps``).
          labels: int ``[B]`` (or scalar) in ``0 .. num_classes - 1``; required iff ``num_classes > 0``.
          train: dropout on (needs ``rngs={"dropout": key}``).

        Returns:
          ``[B, H, H, out_channels]`` float32: eps, then (``learn_sigma``) ``v`` in the last ``C``.
        """
        x, t = self._check_input(x, t)
        emb = self._time_embedding(t)
        if self.num_classes > 0:
            if labels is None:
                if not self.is_initializing():
                    raise ValueError(f"this ADM UNet is class-conditional ({self.num_classes} classes): pass labels")
                labels = jnp.zeros(x.shape[:1], jnp.int32)
            labels = jnp.asarray(labels)
            if labels.shape not in ((), x.shape[:1]) or not jnp.issubdtype(labels.dtype, jnp.integer):
                raise ValueError(f"ADM labels must be integers of shape [B]=({x.shape[0]},), got {labels.dtype} "
                                 f"{labels.shape}")
            labels = jnp.broadcast_to(labels, x.shape[:1])
            emb = emb + nn.Embed(self.num_classes, emb.shape[-1], name="label_emb")(labels)
        elif labels is not None:
            raise ValueError("labels given to an unconditional ADM UNet (class_cond False)")

        h, stored, rate = self._trunk(x, emb, train)
        block = 0
        for level in reversed(range(len(self.channel_mult))):
            channels = int(self.channel_mult[level] * self.model_channels)
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, stored.pop()], axis=-1)
                h = self._resblock(channels, f"output_blocks_{block}_0")(h, emb, train)
                layer = 1
                if rate in self.attention_ds:
                    h = self._attention(channels, self.num_heads_upsample, f"output_blocks_{block}_1")(h)
                    layer = 2
                if level and i == self.num_res_blocks:
                    name = f"output_blocks_{block}_{layer}"
                    if self.resblock_updown:
                        h = self._resblock(channels, name, "up")(h, emb, train)
                    else:
                        h = Upsample(self.conv_resample, jnp.dtype(self.dtype), name=name)(h)
                    rate //= 2
                block += 1
        assert not stored, "every stored activation must be consumed"
        h = nn.silu(group_norm("out_0", jnp.float32)(h.astype(jnp.float32)))
        return conv3x3(self.out_channels, "out_2", jnp.float32, zero=True)(h)


class ADMClassifier(_ADMTrunk):
    """guided-diffusion's ``EncoderUNetModel`` (the noisy classifier): logits ``[B, out_channels]``.

    Attributes (besides :class:`_ADMTrunk`'s):
      image_size: ``H`` (the attention pool's positional embedding has ``(H / 2 ** (L-1)) ** 2 + 1`` rows).
      pool: ``"attention"`` (guided-diffusion's classifiers) or ``"adaptive"`` (mean, 1x1 conv).
    """

    image_size: int = 64
    pool: str = "attention"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        """``x [B, image_size, image_size, in_channels]``, ``t [B]`` -> logits ``[B, out_channels]`` float32."""
        x, t = self._check_input(x, t)
        if x.shape[1] != self.image_size:
            raise ValueError(f"this ADM classifier takes {self.image_size}x{self.image_size} images, got {x.shape}")
        h, _, _ = self._trunk(x, self._time_embedding(t), train)
        h = nn.silu(group_norm("out_0", jnp.float32)(h.astype(jnp.float32)))
        if self.pool == "attention":
            return AttentionPool2d(self.num_head_channels, self.out_channels, jnp.float32, name="out_2")(h)
        if self.pool == "adaptive":
            h = h.mean(axis=(1, 2), keepdims=True)
            h = nn.Conv(self.out_channels, (1, 1), kernel_init=nn.initializers.zeros, name="out_3")(h)
            return h.reshape(h.shape[0], -1)
        raise ValueError(f"unknown ADM classifier pool {self.pool!r} (attention, adaptive)")


def create_adm_model(dtype: str | None = None, **flags: Any) -> ADMUNet:
    """The ADM UNet of guided-diffusion's model flags, e.g. its README's 64x64 model::

        create_adm_model(image_size=64, num_channels=192, num_res_blocks=3, num_head_channels=64,
                         attention_resolutions="32,16,8", class_cond=True, learn_sigma=True,
                         resblock_updown=True, use_new_attention_order=True, use_fp16=True,
                         use_scale_shift_norm=True, dropout=0.1)

    Missing flags take guided-diffusion's ``model_and_diffusion_defaults()`` values; ``use_fp16``
    selects bfloat16 compute unless ``dtype`` (``"float32"`` / ``"bfloat16"``) is given.

    Raises:
      ADMConfigError: a one-line message naming the bad flag.
    """
    return ADMUNet(**adm_unet_kwargs(flags, dtype))


def create_adm_classifier(dtype: str | None = None, **flags: Any) -> ADMClassifier:
    """The noisy classifier of guided-diffusion's classifier flags (``classifier_width``,
    ``classifier_depth``, ...; missing ones take ``classifier_defaults()``), as its
    ``create_classifier`` builds it. ``dtype`` as in :func:`create_adm_model`.

    Raises:
      ADMConfigError: a one-line message naming the bad flag.
    """
    return ADMClassifier(**adm_classifier_kwargs(flags, dtype))
