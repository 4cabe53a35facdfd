"""A converted diffusers checkpoint sampled by our JAX DDIM vs the PyTorch original, side by side.

Run:  python -m benchmarks.bench_pretrained [--steps 20] [--batch 16] [--repeats 3]

Builds a randomly initialised PyTorch ``UNet2DModel`` with the ``google/ddpm-cifar10-32`` layout
(35,746,307 parameters; speed does not depend on the weight values), saves it with
``save_pretrained``, converts it with :func:`ddim_jax.load_diffusers_unet`, and times a whole DDIM
run (eta = 0, uniform skip, S steps, one batch) through

- ours: :func:`ddim_jax.sample` (one jitted ``lax.scan`` over the S UNet calls), and
- PyTorch: the diffusers ``UNet2DModel`` in a plain Python loop of paper Eq. 9 + Eq. 12
  (``torch.inference_mode``), with diffusers' own ``alphas_cumprod``.

Repeats alternate between the two, so both see the same load on a shared machine. Both start
from the same x_T; the table shows the JAX compile time (XLA backend compile events
during the first call: tracing and lowering add a little more; excluded from the throughput), the
first call's wall time, the median seconds per batch over the repeats, images/s and the ratio, plus
the relative difference between the two final images as a sanity check.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.machine import LoadWatch
from benchmarks.torch_reference import import_torchvision
from ddim_jax import alphas_cumprod_from_betas, load_diffusers_schedule, load_diffusers_unet, sample, timestep_sequence
from ddim_jax.models import eps_fn_for
from ddim_jax.pretrained import DDPM_CIFAR10_LAYOUT as CIFAR10_LAYOUT


def torch_ddim(torch_model, x_T_nchw, seq, alphas_cumprod):
    """Plain PyTorch DDIM loop (eta = 0): Eq. 9 then Eq. 12 with sigma = 0; alpha(-1) = 1."""
    import torch

    x = x_T_nchw
    steps = [int(t) for t in seq] + [-1]
    one = torch.tensor(1.0)
    with torch.inference_mode():
        for t, t_prev in zip(steps[:-1], steps[1:]):
            a_t = alphas_cumprod[t]
            a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else one
            eps = torch_model(x, torch.full((x.shape[0],), t, dtype=torch.long)).sample
            x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps
    return x


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import_torchvision()   # before diffusers, which imports torchvision when it is installed
    import diffusers
    import torch

    watch = LoadWatch()
    torch.manual_seed(0)
    torch_model = diffusers.UNet2DModel(**CIFAR10_LAYOUT).eval()
    num_params = sum(p.numel() for p in torch_model.parameters())
    with tempfile.TemporaryDirectory() as directory:
        torch_model.save_pretrained(directory)
        diffusers.DDPMScheduler().save_pretrained(directory)
        start = time.perf_counter()
        model, variables = load_diffusers_unet(directory)
        convert_s = time.perf_counter() - start
        schedule = load_diffusers_schedule(directory)
        torch_alphas_cumprod = diffusers.DDIMScheduler.from_pretrained(directory).alphas_cumprod

    alphas_cumprod = alphas_cumprod_from_betas(schedule["betas"])
    seq = timestep_sequence(args.steps, schedule["num_timesteps"], "uniform")
    x_T = np.random.default_rng(0).standard_normal((args.batch, 32, 32, 3)).astype(np.float32)
    params = variables["params"]
    x_T_jax = jnp.asarray(x_T)

    def run_jax():
        return np.asarray(sample(eps_fn_for(model), x_T_jax, seq, alphas_cumprod, eps_fn_args=(params,)))

    x_T_torch = torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy())

    def run_torch():
        return torch_ddim(torch_model, x_T_torch, seq, torch_alphas_cumprod).numpy()

    compile_seconds = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kwargs: compile_seconds.append(seconds)
        if event == "/jax/core/compile/backend_compile_duration" else None
    )
    first_jax = _time(run_jax, 1)[0]
    compile_s = sum(compile_seconds)
    run_torch()  # warm-up (oneDNN kernel selection)
    jax_times, torch_times = [], []
    for _ in range(args.repeats):  # interleaved, so that both see the same machine load
        jax_times += _time(run_jax, 1)
        torch_times += _time(run_torch, 1)
    x0_jax, x0_torch = run_jax(), run_torch().transpose(0, 2, 3, 1)
    rel_diff = float(np.abs(x0_jax - x0_torch).max() / np.abs(x0_torch).max())

    jax_median, torch_median = statistics.median(jax_times), statistics.median(torch_times)
    print(f"CIFAR-10 DDPM UNet ({num_params:,} params), DDIM eta=0, S={args.steps}, batch {args.batch}, "
          f"{args.repeats} repeats (median)")
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); "
          f"PyTorch {torch.__version__} with {torch.get_num_threads()} threads; conversion took {convert_s:.1f} s")
    rows = [
        ("ddim_jax.sample (jit + lax.scan)", f"{compile_s:.1f}", f"{first_jax:.2f}", jax_median),
        ("PyTorch UNet2DModel + loop", "-", "-", torch_median),
    ]
    print(f"{'implementation':<34} {'compile s':>9} {'1st call s':>10} {'s/batch':>8} {'images/s':>9} "
          f"{'vs PyTorch':>10}")
    for name, compile_text, first_text, seconds in rows:
        print(f"{name:<34} {compile_text:>9} {first_text:>10} {seconds:>8.2f} {args.batch / seconds:>9.2f} "
              f"{watch.ratio(torch_median / seconds):>10}")
    print(f"all runs (s): JAX {', '.join(f'{t:.2f}' for t in jax_times)}; "
          f"PyTorch {', '.join(f'{t:.2f}' for t in torch_times)}")
    print(f"max |x0_jax - x0_torch| / max |x0_torch| = {rel_diff:.1e} (same weights, same x_T)")
    watch.close()


if __name__ == "__main__":
    main()
