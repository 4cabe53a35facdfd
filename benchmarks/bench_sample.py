"""Sampling throughput of what ``sample.py`` runs: images per second per model and S.

Run:  python -m benchmarks.bench_sample [--digits-batch 256] [--cifar-batch 16] [--repeats 3]

For the digits model (configs/digits.py, 8x8x1) at S = 10, 20, 50, 100 and the CIFAR-10-sized
DDPM UNet (configs/cifar10.py, 32x32x3, ~35.7M params) at S = 20, it times
``batching.BatchedSampler.decode_batch`` (one jitted ``lax.scan`` over S UNet calls, batch
sharded over the local devices, result fetched to the host) and prints the first call (compile
plus one batch), the median seconds per batch and images/s. A last column times a short batch
(batch - 1 images, padded and trimmed) to show that it reuses the compiled program: its time
should match a full batch. Params are random (speed does not depend on their values); DDIM, eta = 0, uniform skip.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import jax
import numpy as np

from benchmarks.bench_train import random_params
from benchmarks.machine import LoadWatch
from ddim_jax.generation import batching, loading, sampler_spec
from ddim_jax.models import create_model
from ddim_jax.schedules import make_alphas_cumprod
from ddim_jax.training.train_state import image_shape


def random_model(config, seed: int = 0) -> loading.LoadedModel:
    """The config's UNet with random params drawn from its parameter shapes (no init compile)."""
    model = create_model(config)
    return loading.LoadedModel(model=model, params=random_params(config, seed),
                               alphas_cumprod=make_alphas_cumprod(config.diffusion),
                               image_shape=image_shape(config), config=config)


def time_sampler(loaded, batch: int, steps: int, repeats: int) -> dict[str, float]:
    from ddim_jax import timestep_sequence

    sampler = batching.BatchedSampler(loaded, batch)
    spec = sampler_spec.SamplerSpec(steps=steps, eta=0.0, skip="uniform", clip_x0=True)
    seq = timestep_sequence(num_steps=steps, num_timesteps=loaded.num_timesteps, kind=spec.skip)
    x_T = np.asarray(jax.random.normal(jax.random.key(0), (sampler.batch_size,) + loaded.image_shape))
    key = jax.random.key(1)

    start = time.perf_counter()
    sampler.decode_batch(x_T, seq, spec, key)
    compile_seconds = time.perf_counter() - start
    full, short = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.decode_batch(x_T, seq, spec, key)
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        sampler.decode_batch(x_T[:-1], seq, spec, key)
        short.append(time.perf_counter() - start)
    seconds = statistics.median(full)
    return {"batch": sampler.batch_size, "compile": compile_seconds, "seconds": seconds,
            "images_per_second": sampler.batch_size / seconds, "short_batch_seconds": statistics.median(short)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits-batch", type=int, default=256, help="configs/digits.py sampling batch")
    parser.add_argument("--cifar-batch", type=int, default=16)
    parser.add_argument("--digits-steps", type=str, default="10,20,50,100")
    parser.add_argument("--cifar-steps", type=str, default="20")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    watch = LoadWatch()
    devices = jax.local_devices()
    print(f"jax {jax.__version__} on {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}); "
          f"median of {args.repeats} batches after a compile call\n")
    header = (f"{'model':<8} {'params':>7} {'S':>4} {'batch':>5} {'1st call s':>10} {'s/batch':>8} "
              f"{'img/s':>8} {'batch-1 s':>9}")
    print(header)
    print("-" * len(header))
    cases = [("digits", args.digits_batch, args.digits_steps), ("cifar10", args.cifar_batch, args.cifar_steps)]
    for name, batch, step_list in cases:
        loaded = random_model(importlib.import_module(f"configs.{name}").get_config())
        num_params = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(loaded.params))
        for steps in (int(s) for s in step_list.split(",") if s):
            result = time_sampler(loaded, batch, steps, args.repeats)
            print(f"{name:<8} {num_params / 1e6:>6.2f}M {steps:>4} {result['batch']:>5} {result['compile']:>10.2f} "
                  f"{result['seconds']:>8.3f} {result['images_per_second']:>8.1f} "
                  f"{result['short_batch_seconds']:>9.3f}", flush=True)
    watch.close()


if __name__ == "__main__":
    main()
