"""Sampler speed: one lax.scan in one jit vs a Python loop over a jitted step.

Run:  python -m benchmarks.bench_sampling [--batch 16] [--size 32] [--channels 32] [--repeats 5] [--solvers-only]

Prints, for a small conv noise network:
  1. wall time per sampled batch at S = 10, 20, 50, 100 for (a) ``ddim_jax.sample`` and
     (b) a Python loop calling a jitted DDIM step (network + Eq. 12), and their ratio;
  2. the compile time of ``sample`` at S = 10 vs S = 1000;
  3. the overhead of ``sample`` over S calls of the bare network (a Python loop of the
     jitted network alone, and the same network calls inside a bare lax.scan);
  4. per solver (``sample(..., solver=...)``), the time per network evaluation over that of the
     bare network scan with the same number of evaluations (S, or S + 1 for PLMS): the cost of
     the solver's update and history (fastest of the repeats, timed in turn with the bare scan),
     and the flops and bytes of one scan step from XLA's cost analysis (independent of load).
     ``--solvers-only`` prints this table alone.
Timings are medians over repeats (table 1: the four variants timed in turn; table 4: the fastest),
after a warm-up call, with block_until_ready.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.machine import LoadWatch, interleaved
from ddim_jax import alphas_cumprod_from_betas, make_betas, sample, timestep_sequence
from ddim_jax.diffusion import alpha_at, eps_and_x0_from_output, x_prev_from_x0_eps
from ddim_jax.solvers import REGISTRY, SOLVERS


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
    parser.add_argument("--channels", type=int, default=32, help="width of the stand-in network")
    parser.add_argument("--solvers-only", action="store_true", help="only the per-solver table (4.)")
    args = parser.parse_args()

    model = SmallConvEps(channels=args.channels)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.size, args.size, 3))
    params = model.init(jax.random.PRNGKey(1), x_T, jnp.zeros((args.batch,), jnp.int32))["params"]
    alphas_cumprod = alphas_cumprod_from_betas(make_betas("linear", 1000))

    def apply_fn(x, t, params):
        return model.apply({"params": params}, x, t)

    @jax.jit
    def jitted_step(params, x, t, t_prev):
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        eps, x0_hat = eps_and_x0_from_output(apply_fn(x, t_batch, params), x, t, alphas_cumprod, "eps")
        alpha_prev = alpha_at(alphas_cumprod, t_prev)
        return x_prev_from_x0_eps(x0_hat, eps, alpha_prev, jnp.sqrt(1.0 - alpha_prev), 0.0, 0.0)

    jitted_net = jax.jit(apply_fn)

    @jax.jit
    def bare_scan(params, x, seq):
        def body(h, t):
            return apply_fn(h, jnp.full((h.shape[0],), t, jnp.int32), params), None
        return jax.lax.scan(body, x, seq)[0]

    def python_loop(seq):
        x = x_T
        prev = list(seq[1:]) + [-1]
        for t, t_prev in zip(seq, prev, strict=True):
            x = jitted_step(params, x, jnp.int32(t), jnp.int32(t_prev))
        return x

    def net_loop(seq):
        x = x_T
        for t in seq:
            x = jitted_net(x, jnp.full((args.batch,), t, jnp.int32), params)
        return x

    watch = LoadWatch()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {args.batch}, "
          f"{args.size}x{args.size}x3, {args.channels} channels, {args.repeats} repeats")
    print()
    if args.solvers_only:
        solver_table(apply_fn, params, x_T, alphas_cumprod, bare_scan, args.repeats, watch)
        watch.close()
        return
    print("| S | sample (scan) s | Python loop of jitted step s | loop / scan | bare net loop s | bare net scan s "
          "| sample / bare scan |")
    print("|---|---|---|---|---|---|---|")
    for num_steps in (10, 20, 50, 100):
        seq = timestep_sequence(num_steps, 1000)
        timed = interleaved({
            "scan": lambda seq=seq: jax.block_until_ready(
                sample(apply_fn, x_T, seq, alphas_cumprod, eps_fn_args=(params,))),
            "loop": lambda seq=seq: jax.block_until_ready(python_loop(seq)),
            "net": lambda seq=seq: jax.block_until_ready(net_loop(seq)),
            "bare": lambda seq=seq: jax.block_until_ready(bare_scan(params, x_T, jnp.asarray(seq))),
        }, args.repeats, warmup=1)
        scan_time, loop_time, net_time, bare_time = (timed[k]["step_s"] for k in ("scan", "loop", "net", "bare"))
        print(f"| {num_steps} | {scan_time:.4f} | {loop_time:.4f} | {watch.ratio(loop_time / scan_time, '{:.2f}')} | "
              f"{net_time:.4f} | {bare_time:.4f} | {watch.ratio(scan_time / bare_time, '{:.2f}')} |", flush=True)

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
        run = median_seconds(
            lambda x=other_x, seq=seq: sample(apply_fn, x, seq, alphas_cumprod, eps_fn_args=(params,)), 1)
        print(f"| S = {num_steps} | {first - run:.3f} (first call {first:.3f} - run {run:.3f}) |")
    print()
    solver_table(apply_fn, params, x_T, alphas_cumprod, bare_scan, args.repeats, watch)
    watch.close()


def interleaved_min_seconds(fns, repeats):
    """The fastest of ``repeats`` timed calls of each function, the functions timed in turn (so
    that a busy machine slows them alike); the minimum is the least noisy estimate there."""
    for fn in fns:
        jax.block_until_ready(fn())  # warm-up / compile
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def per_step_cost(fn, *args):
    """(flops, bytes accessed) of the compiled program: XLA's cost analysis counts a scan's body
    once, so for a one-scan program this is the cost of one step."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost.get("flops", float("nan")), cost.get("bytes accessed", float("nan"))


def solver_table(apply_fn, params, x_T, alphas_cumprod, bare_scan, repeats, watch):
    print(f"Per solver, logsnr spacing. Wall time: fastest of {repeats}, each solver timed in turn with the bare "
          "scan of the same number of network evaluations (NFE). Per step: XLA's cost analysis of one scan step "
          "(load-independent).")
    print()
    print("| solver | S | NFE | sample s | bare net scan s | time ratio | flops / step ratio | bytes / step ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for num_steps in (20, 50):
        seq = timestep_sequence(num_steps, 1000, "logsnr", alphas_cumprod=alphas_cumprod)
        for solver in SOLVERS:
            nfe = REGISTRY[solver].calls(num_steps)
            calls = jnp.asarray(np.linspace(999, 0, nfe).astype(np.int32))

            key = jax.random.PRNGKey(0) if REGISTRY[solver].stochastic else None

            def run(x, p, solver=solver, seq=seq, key=key):
                return sample(apply_fn, x, seq, alphas_cumprod, key=key, eps_fn_args=(p,), solver=solver)

            run_time, bare_time = interleaved_min_seconds(
                [lambda run=run: run(x_T, params), lambda calls=calls: bare_scan(params, x_T, calls)], repeats)
            flops, bytes_accessed = per_step_cost(run, x_T, params)
            bare_flops, bare_bytes = per_step_cost(bare_scan, params, x_T, calls)
            ratio = watch.ratio(run_time / bare_time, "{:.3f}")
            print(f"| {solver} | {num_steps} | {nfe} | {run_time:.4f} | {bare_time:.4f} | {ratio} "
                  f"| {flops / bare_flops:.4f} | {bytes_accessed / bare_bytes:.3f} |", flush=True)

if __name__ == "__main__":
    main()
