"""Sampler speed: one lax.scan in one jit vs a Python loop over a jitted step.

Run:  python -m benchmarks.bench_sampling [--batch 16] [--size 32] [--repeats 5]

Prints, for a small conv noise network:
  1. wall time per sampled batch at S = 10, 20, 50, 100 for (a) ``ddim_jax.sample`` and
     (b) a Python loop calling a jitted DDIM step (network + Eq. 12), and their ratio;
  2. the compile time of ``sample`` at S = 10 vs S = 1000;
  3. the overhead of ``sample`` over S calls of the bare network (a Python loop of the
     jitted network alone, and the same network calls inside a bare lax.scan).
All timings are medians over repeats, after a warm-up call, with block_until_ready.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddim_jax import alphas_cumprod_from_betas, make_betas, sample, timestep_sequence
from ddim_jax.diffusion import alpha_at, eps_and_x0_from_output, x_prev_from_x0_eps


class SmallConvEps(nn.Module):
    """A small timestep-conditioned conv net standing in for the UNet."""

    channels: int = 32

    @nn.compact
    def __call__(self, x, t):
        embedding = nn.Dense(self.channels)(jnp.sin(t[:, None].astype(jnp.float32) / 1000.0 * jnp.arange(1, 9)))
        h = nn.Conv(self.channels, (3, 3))(x)
        h = nn.silu(h + embedding[:, None, None, :])
        h = nn.silu(nn.Conv(self.channels, (3, 3))(h))
        return nn.Conv(x.shape[-1], (3, 3))(h)


def median_seconds(fn, repeats):
    jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = SmallConvEps()
    x_T = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.size, args.size, 3))
    params = model.init(jax.random.PRNGKey(1), x_T, jnp.zeros((args.batch,), jnp.int32))["params"]
    alphas_cumprod = alphas_cumprod_from_betas(make_betas("linear", 1000))

    def apply_fn(x, t, params):
        return model.apply({"params": params}, x, t)

    @jax.jit
    def jitted_step(params, x, t, t_prev):
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        eps, x0_hat = eps_and_x0_from_output(apply_fn(x, t_batch, params), x, t, alphas_cumprod, "eps")
        return x_prev_from_x0_eps(x0_hat, eps, alpha_at(alphas_cumprod, t_prev), 0.0, 0.0)

    jitted_net = jax.jit(apply_fn)

    @jax.jit
    def bare_scan(params, x, seq):
        def body(h, t):
            return apply_fn(h, jnp.full((h.shape[0],), t, jnp.int32), params), None
        return jax.lax.scan(body, x, seq)[0]

    def python_loop(seq):
        x = x_T
        prev = list(seq[1:]) + [-1]
        for t, t_prev in zip(seq, prev):
            x = jitted_step(params, x, jnp.int32(t), jnp.int32(t_prev))
        return x

    def net_loop(seq):
        x = x_T
        for t in seq:
            x = jitted_net(x, jnp.full((args.batch,), t, jnp.int32), params)
        return x

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {args.batch}, "
          f"{args.size}x{args.size}x3, median of {args.repeats}")
    print()
    print("| S | sample (scan) s | Python loop of jitted step s | loop / scan | bare net loop s | bare net scan s "
          "| sample / bare scan |")
    print("|---|---|---|---|---|---|---|")
    for num_steps in (10, 20, 50, 100):
        seq = timestep_sequence(num_steps, 1000)
        scan_time = median_seconds(lambda: sample(apply_fn, x_T, seq, alphas_cumprod, eps_fn_args=(params,)),
                                   args.repeats)
        loop_time = median_seconds(lambda: python_loop(seq), args.repeats)
        net_time = median_seconds(lambda: net_loop(seq), args.repeats)
        bare_time = median_seconds(lambda: bare_scan(params, x_T, jnp.asarray(seq)), args.repeats)
        print(f"| {num_steps} | {scan_time:.4f} | {loop_time:.4f} | {loop_time / scan_time:.2f} | "
              f"{net_time:.4f} | {bare_time:.4f} | {scan_time / bare_time:.2f} |")

    print()
    print("| compile (trace + XLA) of sample | seconds |")
    print("|---|---|")
    for num_steps in (10, 1000):
        seq = timestep_sequence(num_steps, 1000)
        other_x = x_T[:, :, :, :] * 1.0
        jax.clear_caches()
        start = time.perf_counter()
        jax.block_until_ready(sample(apply_fn, other_x, seq, alphas_cumprod, eps_fn_args=(params,)))
        first = time.perf_counter() - start
        run = median_seconds(lambda: sample(apply_fn, other_x, seq, alphas_cumprod, eps_fn_args=(params,)), 1)
        print(f"| S = {num_steps} | {first - run:.3f} (first call {first:.3f} - run {run:.3f}) |")


if __name__ == "__main__":
    main()
