"""The same UNet in PyTorch (diffusers ``UNet2DModel``), for the training and GPU benchmarks.

- :func:`diffusers_unet_kwargs`: the ``UNet2DModel`` keyword arguments of a run config's UNet (the
  inverse of :func:`ddim_jax.pretrained.unet_kwargs_from_diffusers_config`; for
  ``configs/cifar10.py`` it is ``DDPM_CIFAR10_LAYOUT``), so both frameworks run the same network.
- :func:`torch_ddim`: a plain PyTorch DDIM loop (eta = 0, paper Eq. 9 + Eq. 12), fp32 or autocast.
- :class:`TorchTrainer`: one training step as ``ddim_jax.training.objective.make_train_step`` does it: L_simple with
  the same schedule, ``clip_grad_norm_(grad_clip_norm)``, Adam with the same lr / betas / eps and
  linear warmup, then the EMA update.

Import :func:`benchmarks.torch_reference.import_torchvision` has to run before diffusers is imported
(the functions here do it).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from benchmarks.torch_reference import import_torchvision
from ddim_jax.schedules import make_alphas_cumprod

# How the PyTorch side computes: fp32 (TF32 off), tf32 (TF32 matmuls/convs on CUDA; the same as
# fp32 on a CPU), bf16 (torch.autocast to bfloat16, params float32).
TORCH_PRECISIONS = ("fp32", "tf32", "bf16")


def diffusers_unet_kwargs(config: Any) -> dict:
    """``diffusers.UNet2DModel`` keyword arguments of ``config``'s UNet (``config.model`` + data)."""
    model, size = config.model, int(config.data.image_size)
    if not model.resamp_with_conv:
        raise ValueError("UNet2DModel resamples with convs; config.model.resamp_with_conv must be True")
    levels = range(len(model.ch_mult))
    attention = [(size >> level) in tuple(model.attn_resolutions) for level in levels]
    return dict(
        sample_size=size, in_channels=int(config.data.channels), out_channels=int(config.data.channels),
        block_out_channels=tuple(model.ch * m for m in model.ch_mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        layers_per_block=model.num_res_blocks, norm_num_groups=model.num_groups, norm_eps=model.norm_eps,
        downsample_padding=model.downsample_padding, flip_sin_to_cos=model.flip_sin_to_cos,
        freq_shift=model.freq_shift, attention_head_dim=model.attn_head_dim, dropout=model.dropout,
    )


def make_torch_unet(config: Any, seed: int = 0, device: str = "cpu"):
    """A randomly initialised ``UNet2DModel`` with ``config``'s layout."""
    import_torchvision()
    import diffusers
    import torch

    torch.manual_seed(seed)
    return diffusers.UNet2DModel(**diffusers_unet_kwargs(config)).to(device)


def set_torch_precision(precision: str):
    """Sets the TF32 switches for ``precision`` and returns the autocast context to compute in."""
    import torch

    if precision not in TORCH_PRECISIONS:
        raise ValueError(f"torch precision must be one of {TORCH_PRECISIONS}, got {precision!r}")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if precision == "bf16":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def torch_ddim(torch_model, x_T, seq, alphas_cumprod, precision: str = "fp32"):
    """DDIM, eta = 0, over ``seq`` (descending); ``x_T`` NCHW float32; the state stays float32."""
    import torch

    autocast = set_torch_precision(precision)
    x = x_T
    steps = [int(t) for t in seq] + [-1]
    one = torch.ones((), device=x.device)
    with torch.inference_mode():
        for t, t_prev in zip(steps[:-1], steps[1:]):
            a_t = alphas_cumprod[t]
            a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else one
            with autocast:
                eps = torch_model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)).sample
            eps = eps.float()
            x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps
    return x


class TorchTrainer:
    """``step(batch)``: one training step of ``config``'s recipe on a PyTorch ``UNet2DModel``."""

    def __init__(self, config: Any, precision: str = "fp32", device: str = "cpu", seed: int = 0):
        import torch

        self.model = make_torch_unet(config, seed, device).train()
        self.precision, self.device = precision, device
        optim = config.optim
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=optim.learning_rate,
                                          betas=(optim.beta1, optim.beta2), eps=optim.eps)
        warmup = optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, step / warmup) if warmup else 1.0)
        self.clip = optim.grad_clip_norm
        self.ema_decay = config.training.ema_decay
        self.params = [p for p in self.model.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        self.alphas_cumprod = torch.from_numpy(np.array(make_alphas_cumprod(config.diffusion))).to(device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def step(self, batch) -> float:
        """One step on ``batch`` (NCHW float32 tensor on the device); returns the loss tensor."""
        import torch

        autocast = set_torch_precision(self.precision)
        num_timesteps = self.alphas_cumprod.shape[0]
        t = torch.randint(0, num_timesteps, (batch.shape[0],), device=self.device, generator=self.generator)
        noise = torch.randn(batch.shape, device=self.device, generator=self.generator)
        a_t = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a_t.sqrt() * batch + (1 - a_t).sqrt() * noise  # paper Eq. 4
        with autocast:
            eps = self.model(x_t, t).sample
        loss = torch.mean(torch.square(noise - eps.float()))  # L_simple, reduced in float32
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.ema_decay)
        return loss
