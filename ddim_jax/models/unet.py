"""The DDPM UNet (Ho et al. 2020, Appendix B), which DDIM reuses unchanged, in Flax linen (NHWC).

Architecture (for the CIFAR-10 settings ``ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
attn_resolutions=(16,)`` this is exactly the 35,746,307-parameter model of the published
``google/ddpm-cifar10-32`` checkpoint):

- a sinusoidal timestep embedding of width ``ch`` followed by a two-layer MLP
  (``ch -> 4 ch -> 4 ch``, swish in between);
- ``conv_in``, then one down block per entry of ``ch_mult``: ``num_res_blocks`` residual blocks
  (GroupNorm, swish, conv, + projected time embedding, GroupNorm, swish, dropout, conv), each followed
  by single-head self-attention when the block's resolution is in ``attn_resolutions``, and a
  stride-2 downsample except at the last level;
- a middle block (residual block, attention, residual block);
- one up block per level in reverse order with ``num_res_blocks + 1`` residual blocks, each taking the
  concatenation of the running activation and one stored skip activation, and a nearest x2 upsample
  except at the last level;
- GroupNorm, swish, ``conv_out``.

Module and parameter names mirror the diffusers ``UNet2DModel`` state dict
(``down_blocks.1.attentions.0.to_q.weight`` is ``down_blocks_1/attentions_0/to_q/kernel`` here),
so that :mod:`ddim_jax.pretrained` maps published weights one to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddim_jax.errors import UserError
from ddim_jax.models.unet_blocks import (
    NEAR_ZERO_SCALE,
    DownBlock,
    MidBlock,
    TimestepEmbedding,
    UpBlock,
    conv3x3,
    group_norm,
    timestep_embedding,
)

# The computation dtypes of ``UNet.dtype`` (a string, so that it is a plain config value).
DTYPES = ("float32", "bfloat16")


class UNet(nn.Module):
    """The DDPM noise-prediction network ``eps_theta(x_t, t)``.

    Attributes:
      ch: base channel count (128 for CIFAR-10).
      ch_mult: channel multiplier per resolution level; ``len(ch_mult) - 1`` downsamplings.
      num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
      attn_resolutions: spatial sizes (H) at which encoder/decoder blocks add self-attention.
      dropout: dropout rate inside residual blocks (only with ``train=True``).
      resamp_with_conv: conv down/upsampling (DDPM) or average-pool / plain nearest upsampling.
      out_ch: output channels (the data's channels: 3 for RGB, 1 for MNIST).
      num_groups: GroupNorm groups; must divide every level's channel count.
      norm_eps: GroupNorm epsilon.
      flip_sin_to_cos, freq_shift: timestep-embedding variant (defaults: DDPM's; see
        :func:`timestep_embedding`).
      downsample_padding: 0 (DDPM: pad bottom/right) or 1 (pad all sides) for conv downsampling.
      attn_head_dim: channels per attention head; ``None`` is a single head (DDPM).
      num_classes: 0 (unconditional: no class parameters at all) or the number of classes K of a
        class-conditional model: an embedding table ``class_embedding`` of ``K + 1`` rows (row K
        is the "null" class of classifier-free guidance) whose row for each label is added to the
        time embedding (after its MLP), as in ADM and diffusers' ``UNet2DModel(num_class_embeds=...)``.
      dtype: the computation dtype, ``"float32"`` or ``"bfloat16"`` (see :data:`DTYPES`): the inputs
        of convs, dense layers and GroupNorm outputs. Parameters are float32 either way (so the
        parameter tree is the same), GroupNorm statistics and the attention softmax are computed in
        float32, and the output is cast to float32.
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    out_ch: int = 3
    num_groups: int = 32
    norm_eps: float = 1e-6
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    downsample_padding: int = 0
    attn_head_dim: int | None = None
    num_classes: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        _validate_hparams(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """Predict the noise (or whatever the model was trained to output).

        Args:
          x: ``[B, H, W, C]`` float, ``H == W`` divisible by ``2 ** (len(ch_mult) - 1)``.
          t: ``[B]`` timesteps (integers in ``0 .. T-1``), or a scalar used for every example.
          labels: class-conditional models only: int ``[B]`` (or a scalar) in ``0 .. num_classes``,
            where ``num_classes`` is the null class; ``None`` is the null class for every example.
            An unconditional model refuses labels.
          train: enable dropout (needs ``rngs={"dropout": key}``).

        Returns:
          ``[B, H, W, out_ch]`` float32.
        """
        x = jnp.asarray(x)
        t = jnp.asarray(t)
        _validate_inputs(x, t, len(self.ch_mult))
        if labels is not None:
            _validate_labels(jnp.asarray(labels), x.shape[0])
        batch, size = x.shape[0], x.shape[1]
        t = jnp.broadcast_to(t, (batch,))
        x = x.astype(jnp.float32)
        temb_dim = 4 * self.ch

        temb = timestep_embedding(t, self.ch, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift)
        dtype = jnp.dtype(self.dtype)
        temb = TimestepEmbedding(temb_dim, dtype, name="time_embedding")(temb)
        if self.num_classes > 0:
            labels = jnp.full((batch,), self.num_classes, jnp.int32) if labels is None else labels
            labels = jnp.broadcast_to(jnp.asarray(labels), (batch,))
            # Row num_classes is the null class; nn.Embedding's N(0, 1) init, as ADM and diffusers.
            temb = temb + nn.Embed(self.num_classes + 1, temb_dim, embedding_init=nn.initializers.normal(1.0),
                                   dtype=dtype, name="class_embedding")(labels)
        elif labels is not None:
            raise ValueError("labels given to an unconditional UNet (num_classes=0)")

        common = dict(num_groups=self.num_groups, norm_eps=self.norm_eps, dropout=self.dropout, dtype=dtype)
        h = conv3x3(self.ch, "conv_in", dtype=dtype)(x)
        skips = [h]
        num_levels = len(self.ch_mult)
        for level, mult in enumerate(self.ch_mult):
            h, level_skips = DownBlock(
                out_ch=self.ch * mult,
                num_res_blocks=self.num_res_blocks,
                use_attention=(size >> level) in self.attn_resolutions,
                add_downsample=level != num_levels - 1,
                attn_head_dim=self.attn_head_dim,
                resamp_with_conv=self.resamp_with_conv,
                downsample_padding=self.downsample_padding,
                name=f"down_blocks_{level}",
                **common,
            )(h, temb, train)
            skips.extend(level_skips)

        h = MidBlock(attn_head_dim=self.attn_head_dim, name="mid_block", **common)(h, temb, train)

        for i, mult in enumerate(reversed(self.ch_mult)):
            level = num_levels - 1 - i
            h = UpBlock(
                out_ch=self.ch * mult,
                num_res_blocks=self.num_res_blocks,
                use_attention=(size >> level) in self.attn_resolutions,
                add_upsample=level != 0,
                attn_head_dim=self.attn_head_dim,
                resamp_with_conv=self.resamp_with_conv,
                name=f"up_blocks_{i}",
                **common,
            )(h, skips, temb, train)
        assert not skips, "every stored skip activation must be consumed"

        h = nn.swish(group_norm(self.num_groups, self.norm_eps, "conv_norm_out", dtype)(h))
        return conv3x3(self.out_ch, "conv_out", scale=NEAR_ZERO_SCALE, dtype=dtype)(h).astype(jnp.float32)


class UNetConfigError(UserError, ValueError):
    """A UNet hyperparameter is out of range; ``field`` names it (a ``UNet`` attribute)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"UNet {field}: {message}")
        self.field = field
        self.detail = message


def _validate_hparams(model: UNet) -> None:
    """The one place the UNet's hyperparameters are checked (run configs report these as
    ``config.model.<field>``)."""
    ch_mult = tuple(model.ch_mult)
    if model.ch < 1:
        raise UNetConfigError("ch", f"must be positive, got {model.ch}")
    if not ch_mult or any(int(m) != m or m < 1 for m in ch_mult):
        raise UNetConfigError("ch_mult", f"needs one or more positive integer multipliers, got {ch_mult}")
    if model.num_res_blocks < 1:
        raise UNetConfigError("num_res_blocks", f"must be >= 1, got {model.num_res_blocks}")
    if not 0.0 <= model.dropout < 1.0:
        raise UNetConfigError("dropout", f"must be in [0, 1), got {model.dropout}")
    if model.out_ch < 1:
        raise UNetConfigError("out_ch", f"must be >= 1, got {model.out_ch}")
    if model.num_groups < 1:
        raise UNetConfigError("num_groups", f"must be >= 1, got {model.num_groups}")
    if not model.norm_eps > 0:
        raise UNetConfigError("norm_eps", f"must be positive, got {model.norm_eps}")
    for mult in ch_mult:
        channels = model.ch * mult
        if channels % model.num_groups:
            raise UNetConfigError("num_groups", f"{model.num_groups} groups do not divide {channels} channels "
                                                f"(ch * {mult})")
        if model.attn_head_dim is not None and channels % model.attn_head_dim:
            raise UNetConfigError("attn_head_dim", f"attn_head_dim={model.attn_head_dim} does not divide "
                                                   f"{channels} channels")
    if model.attn_head_dim is not None and model.attn_head_dim < 1:
        raise UNetConfigError("attn_head_dim", f"must be positive or None, got {model.attn_head_dim}")
    if model.num_classes < 0:
        raise UNetConfigError("num_classes", f"must be >= 0 (0 = unconditional), got {model.num_classes}")
    if model.downsample_padding not in (0, 1):
        raise UNetConfigError("downsample_padding", f"must be 0 or 1, got {model.downsample_padding}")
    if model.dtype not in DTYPES:
        raise UNetConfigError("dtype", f"must be one of {', '.join(map(repr, DTYPES))}, got {model.dtype!r}")


def _validate_inputs(x: jax.Array, t: jax.Array, num_levels: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"UNet input x must be 4-D [B, H, W, C] (NHWC), got shape {x.shape}")
    batch, height, width, _ = x.shape
    factor = 2 ** (num_levels - 1)
    if height != width or height % factor:
        raise ValueError(
            f"UNet input must be square with H == W divisible by {factor} (2 ** (len(ch_mult) - 1)); "
            f"got H={height}, W={width} from x of shape {x.shape} (is it NCHW instead of NHWC?)"
        )
    if t.shape not in ((), (batch,)):
        raise ValueError(f"UNet timesteps t must have shape [B]=({batch},) or be a scalar, got shape {t.shape}")
    if not (jnp.issubdtype(t.dtype, jnp.integer) or jnp.issubdtype(t.dtype, jnp.floating)):
        raise ValueError(f"UNet timesteps t must be integer (or float), got dtype {t.dtype}")


def _validate_labels(labels: jax.Array, batch: int) -> None:
    if labels.shape not in ((), (batch,)):
        raise ValueError(f"UNet labels must have shape [B]=({batch},) or be a scalar, got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"UNet labels must be integers, got dtype {labels.dtype}")


def create_model(config: Any) -> UNet:
    """The UNet of a run config: ``UNet(**config.model, out_ch=config.data.channels)``.

    ``config.model`` holds exactly the UNet's hyperparameters (every field but ``out_ch``, which is
    the data's channel count), so they are checked in one place: :func:`_validate_hparams`.
    """
    hparams = {key: (tuple(value) if isinstance(value, list) else value)
               for key, value in config.model.items()}
    return UNet(**hparams, out_ch=int(config.data.channels))
