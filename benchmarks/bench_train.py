"""Training throughput on this machine: steps/s and images/s of the jitted train step.

    python -m benchmarks.bench_train [--steps 10] [--cifar_batch 8]

Measures, side by side in one run, the CIFAR-10 model (the paper's 35.7M-parameter UNet, at a small
batch so that a CPU can run it) and the digits config (the offline default), plus each model's
parameter count. Each row: one compilation, two warm-up steps, then the median of ``--steps`` timed
steps (each synchronised with ``block_until_ready``). Data comes from a fixed random batch, so the
numbers are the model's, not the input pipeline's.
"""

import argparse
import functools
import os
import statistics
import time

import jax
import numpy as np

import configs.cifar10
import configs.digits
from ddim_jax import train_lib, train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def measure(config, num_steps: int) -> dict:
    state = jax.jit(functools.partial(train_state.create_train_state, config))()
    step = jax.jit(train_lib.make_train_step(config), donate_argnums=(0,))
    size, channels, batch_size = config.data.image_size, config.data.channels, config.training.batch_size
    batch = np.random.default_rng(0).uniform(-1, 1, (batch_size, size, size, channels)).astype(np.float32)
    num_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state.params))

    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(num_steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"params": num_params, "batch": batch_size, "image": f"{size}x{size}x{channels}",
            "compile_s": compile_s, "step_s": median, "steps_per_s": 1.0 / median,
            "images_per_s": batch_size / median}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (median reported)")
    parser.add_argument("--cifar_batch", type=int, default=8, help="batch size of the CIFAR-10 row")
    args = parser.parse_args()

    cifar = configs.cifar10.get_config()
    cifar.training.batch_size = args.cifar_batch
    rows = [("cifar10 (paper UNet)", cifar), ("digits (default)", configs.digits.get_config())]
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}")
    header = (f"{'config':<22}{'params':>12}{'batch':>7}{'image':>10}{'compile s':>11}{'step s':>9}"
              f"{'steps/s':>9}{'images/s':>10}")
    results = []
    for name, config in rows:
        results.append((name, measure(config, args.steps)))
    print(header)
    print("-" * len(header))
    for name, r in results:
        print(f"{name:<22}{r['params']:>12,}{r['batch']:>7}{r['image']:>10}{r['compile_s']:>11.1f}"
              f"{r['step_s']:>9.3f}{r['steps_per_s']:>9.2f}{r['images_per_s']:>10.1f}")
    ratio = results[1][1]["images_per_s"] / results[0][1]["images_per_s"]
    print(f"digits processes {ratio:.0f}x more images/s than the CIFAR-10 model on this machine")


if __name__ == "__main__":
    main()
