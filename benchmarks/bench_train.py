"""Training throughput on this machine, ours vs PyTorch side by side: steps/s of one training step.

    python -m benchmarks.bench_train [--steps 10] [--cifar_batch 8] [--precision fp32|bf16] [--no_torch]

For the CIFAR-10 model (the paper's 35.7M-parameter UNet, at a small batch so that a CPU can run
it) and the digits config (the offline default), it times

- ours: the jitted ``objective.make_train_step`` (forward/backward, global-norm clip, Adam, EMA);
- PyTorch: the same UNet as a diffusers ``UNet2DModel`` (``benchmarks/torch_unet.py``: the layout
  built from the same config) with the same step: L_simple on the same schedule,
  ``clip_grad_norm_`` at the same norm, Adam with the same lr / betas / eps and warmup, the EMA.

Both train on the same fixed random batch (so the numbers are the models', not the input
pipeline's). Each side gets one compile / warm-up step and two more warm-up steps, then the timed
steps alternate between the two (each synchronised), so both see the same load on a shared machine;
the table shows the medians and the ratio.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import configs.cifar10
import configs.digits
from benchmarks.machine import LoadWatch, interleaved
from ddim_jax.models import abstract_params, create_model
from ddim_jax.models.precision import parse_precision
from ddim_jax.training import objective, train_state


def random_params(config, seed: int = 0):
    """Random params of the config's UNet from its shapes alone (no init to compile; speed does not
    depend on the values)."""
    shapes = abstract_params(create_model(config), train_state.image_shape(config))
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        noise = rng.standard_normal(shape.shape).astype(np.float32)
        if path[-1].key == "kernel":
            return noise / np.sqrt(np.prod(shape.shape[:-1]))
        return (1.0 if path[-1].key == "scale" else 0.0) + 0.1 * noise

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def jax_state(config):
    """A step-0 train state around random params, every leaf its own buffer (the step donates it)."""
    state = train_state.state_from_params(config, random_params(config))
    # params and ema_params start as the same arrays; the step donates both, so copy every leaf.
    return jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), state)


def jax_stepper(config):
    """(one synchronised step, parameter count) of our jitted train step."""
    state = jax_state(config)
    step = jax.jit(objective.make_train_step(config), donate_argnums=(0,))
    size, channels, batch_size = config.data.image_size, config.data.channels, config.training.batch_size
    batch = np.random.default_rng(0).uniform(-1, 1, (batch_size, size, size, channels)).astype(np.float32)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready(metrics)

    return run, sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state.params))


def torch_stepper(config, precision: str = "fp32", device: str = "cpu"):
    """(one synchronised step, parameter count) of the same recipe in PyTorch."""
    import torch

    from benchmarks.torch_unet import TorchTrainer

    trainer = TorchTrainer(config, precision, device)
    size, channels, batch_size = config.data.image_size, config.data.channels, config.training.batch_size
    batch = np.random.default_rng(0).uniform(-1, 1, (batch_size, channels, size, size)).astype(np.float32)
    batch = torch.from_numpy(batch).to(device)

    def run():
        trainer.step(batch).item()  # .item() synchronises

    return run, sum(p.numel() for p in trainer.model.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side (median reported)")
    parser.add_argument("--cifar_batch", type=int, default=8, help="batch size of the CIFAR-10 row")
    parser.add_argument("--digits_batch", type=int, default=None, help="batch of the digits row (default: config)")
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16, both sides (PyTorch: autocast)")
    parser.add_argument("--no_torch", action="store_true", help="only ours")
    args = parser.parse_args()
    dtype = parse_precision(args.precision)

    cifar = configs.cifar10.get_config()
    cifar.training.batch_size = args.cifar_batch
    digits = configs.digits.get_config()
    if args.digits_batch:
        digits.training.batch_size = args.digits_batch
    rows = [("cifar10 (paper UNet)", cifar), ("digits (default)", digits)]
    import torch

    watch = LoadWatch()
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), precision {args.precision}, "
          f"median of {args.steps} interleaved steps")
    header = (f"{'config':<22}{'params':>12}{'batch':>7}{'image':>9}{'ours 1st s':>11}{'ours steps/s':>13}"
              f"{'torch steps/s':>14}{'ours/torch':>11}")
    print(header)
    print("-" * len(header))
    for name, config in rows:
        config.model.dtype = dtype
        runners = {}
        runners["ours"], num_params = jax_stepper(config)
        if not args.no_torch:
            runners["torch"], torch_params = torch_stepper(config, args.precision)
            assert torch_params == num_params, (torch_params, num_params)
        results = interleaved(runners, args.steps)
        ours = 1.0 / results["ours"]["step_s"]
        theirs = 1.0 / results["torch"]["step_s"] if "torch" in results else float("nan")
        size, channels = config.data.image_size, config.data.channels
        print(f"{name:<22}{num_params:>12,}{config.training.batch_size:>7}{f'{size}x{size}x{channels}':>9}"
              f"{results['ours']['first_s']:>11.1f}{ours:>13.3g}{theirs:>14.3g}{watch.ratio(ours / theirs):>11}",
              flush=True)
    watch.close()


if __name__ == "__main__":
    main()
