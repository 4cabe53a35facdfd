"""The UNet's CPU-speed formulations vs the previous ones (flax's modules), each against PyTorch.

    python -m benchmarks.bench_formulations [--repeats 5] [--smoke]

The UNet's GroupNorm was reformulated for XLA:CPU (docs/cpu_speed.md), with the same parameters
and values: it reduces over H and W per channel first, then over the group's channels
(:func:`ddim_jax.models.unet_blocks.group_norm_nhwc`); before, it was ``flax.linen.GroupNorm``.

This compiles each program twice, now and as before (flax's module substituted while tracing),
and times both and the PyTorch twin in one process, interleaved (medians): the CIFAR-10 UNet train
step and forward (what one sampling step costs) at batch 8, and the digits train step at batch 64.
It prints both side-by-side ratios (ours / PyTorch speed) and the largest relative difference of
the outputs (the forward) or of the first step's loss between the two formulations.
"""

from __future__ import annotations

import argparse
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import configs.cifar10
import configs.digits
import configs.tiny
from benchmarks.bench_train import jax_state, torch_stepper
from benchmarks.machine import LoadWatch, interleaved
from ddim_jax.models import apply_model, create_model, unet, unet_blocks
from ddim_jax.training import objective


def flax_group_norm(num_groups, eps, name, dtype=jnp.float32):
    """The previous GroupNorm: flax's, two-pass variance."""
    return nn.GroupNorm(num_groups=num_groups, epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


@contextlib.contextmanager
def previous_formulations():
    """Traces inside this block build the UNet with flax's GroupNorm."""
    saved = unet.group_norm, unet_blocks.group_norm
    unet.group_norm = unet_blocks.group_norm = flax_group_norm
    try:
        yield
    finally:
        unet.group_norm, unet_blocks.group_norm = saved


def forward_runner(config, x: np.ndarray, previous: bool):
    """(synchronised forward call, its output) of ``config``'s UNet on random params."""
    model, params = create_model(config), jax_state(config).params
    t = jnp.arange(x.shape[0], dtype=jnp.int32) * 37
    with previous_formulations() if previous else contextlib.nullcontext():
        compiled = jax.jit(lambda p, x: apply_model(model, x, t, p)).lower(params, x).compile()
    return (lambda: jax.block_until_ready(compiled(params, x))), np.asarray(compiled(params, x))


def step_runner(config, x: np.ndarray, previous: bool):
    """(synchronised train step, first step's loss) of ``config``."""
    holder = [jax_state(config)]
    with previous_formulations() if previous else contextlib.nullcontext():
        compiled = jax.jit(objective.make_train_step(config), donate_argnums=(0,)).lower(holder[0], x).compile()

    def run():
        holder[0], metrics = compiled(holder[0], x)
        return float(metrics["loss"])

    return run, np.asarray(run())


def torch_forward(config, x: np.ndarray):
    import torch

    from benchmarks.torch_unet import make_torch_unet

    model = make_torch_unet(config).eval()
    x_t, t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.arange(x.shape[0]) * 37

    def run():
        with torch.inference_mode():
            model(x_t, t).sample.sum().item()

    return run


def smoke_config():
    config = configs.tiny.get_config()
    config.data.image_size = 32
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="configs/tiny.py at 32x32, batch 2 (checks the script)")
    args = parser.parse_args()
    watch = LoadWatch()
    torch_step = lambda config, x: torch_stepper(config)[0]  # noqa: E731
    cases = (("CIFAR-10 UNet train step", configs.cifar10.get_config(), 8, step_runner, torch_step),
             ("CIFAR-10 UNet forward", configs.cifar10.get_config(), 8, forward_runner, torch_forward),
             ("digits train step", configs.digits.get_config(), 64, step_runner, torch_step))
    if args.smoke:
        cases = tuple((name, smoke_config(), 2, runner, theirs) for name, _, _, runner, theirs in cases)
    print("| work | batch | ours ms (previous) | ours ms (now) | PyTorch ms | ratio before | ratio now "
          "| max rel. diff |\n|---|---|---|---|---|---|---|---|")
    for name, config, batch_size, make_runner, make_torch in cases:
        config.training.batch_size = batch_size
        size, channels = config.data.image_size, config.data.channels
        x = np.random.default_rng(0).uniform(-1, 1, (batch_size, size, size, channels)).astype(np.float32)
        previous, previous_out = make_runner(config, x, True)
        now, now_out = make_runner(config, x, False)
        diff = float(np.abs(now_out - previous_out).max() / max(np.abs(previous_out).max(), 1e-30))
        timed = interleaved({"previous": previous, "now": now, "torch": make_torch(config, x)}, args.repeats)
        ms = {key: value["step_s"] * 1e3 for key, value in timed.items()}
        print(f"| {name} | {batch_size} | {ms['previous']:.0f} | {ms['now']:.0f} | {ms['torch']:.0f} "
              f"| {watch.ratio(ms['torch'] / ms['previous'])} | {watch.ratio(ms['torch'] / ms['now'])} "
              f"| {diff:.1e} |", flush=True)
    watch.close()


if __name__ == "__main__":
    main()
