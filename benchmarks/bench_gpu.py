"""The GPU benchmark: one Markdown table of sampling and training speed, ours vs PyTorch.

    bash benchmarks/gpu.sh                        # on a CUDA machine (installs the cuda12 extra)
    python -m benchmarks.bench_gpu [--batches 256,1024] [--steps 10,20,50,100] [--repeats 2]
    python -m benchmarks.bench_gpu --cpu-smoke    # tiny UNet, batch 2, S = 2, one repeat (tested)

Rows of the table:

- **sample**: DDIM (eta = 0, uniform skip, no clipping) images/s of the CIFAR-10 UNet
  (configs/cifar10.py, 35.7M params, random weights) at each S and batch, for ours
  (:func:`ddim_jax.sample`: one jitted ``lax.scan``; fp32 and bf16 = ``UNet(dtype="bfloat16")``,
  the sampler state float32) and PyTorch (diffusers ``UNet2DModel`` in a plain Python DDIM loop:
  fp32, TF32, bf16 autocast). Both run the same weights: the PyTorch model is saved with
  ``save_pretrained`` (safetensors) and converted with :func:`ddim_jax.load_diffusers_unet`; the
  last column is ``max |x0 - x0_torch_fp32| / max |x0_torch_fp32|`` from the same x_T. For ours
  the compile column is the XLA compile time (ahead of time, excluded from the throughput); for
  PyTorch it is the first (warm-up) call. At S = 20 the projected wall time of 50,000 images.
- **train**: training steps/s (``benchmarks/bench_train.py``: our jitted step vs the same recipe in
  PyTorch) at ``--train-batch``.
- **memory**: the compiled sampler's ``memory_analysis()`` (temp + argument + output bytes) at
  S = 10 and S = 1000: the scan carries one state, so memory does not grow with S.

Runs alternate between implementations (interleaved repeats, medians). When jax sees no GPU, or
torch has no CUDA, the PyTorch rows run on the CPU only with ``--cpu-smoke``; otherwise they are
marked as skipped.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import configs.cifar10
from benchmarks import bench_train
from benchmarks.torch_unet import TORCH_PRECISIONS, make_torch_unet, torch_ddim
from ddim_jax import load_diffusers_unet, sample, timestep_sequence
from ddim_jax.models import eps_fn_for
from ddim_jax.models.precision import PRECISIONS
from ddim_jax.schedules import make_alphas_cumprod

NUM_FID_IMAGES = 50_000


def cifar10_config():
    return configs.cifar10.get_config()


def tiny_config():
    """An 8x8x3 UNet with one attention level: compiles in seconds on a CPU."""
    config = configs.cifar10.get_config()
    config.data.image_size = 8
    config.model.update(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4)
    config.training.batch_size = 2
    return config


def compile_sampler(model: Any, params: Any, alphas_cumprod: Any, batch: int, steps: int,
                    image_shape: Sequence[int]):
    """The whole S-step DDIM sampler compiled ahead of time: ``compiled(x_T, params) -> x0``.

    The timestep sequence and schedule are constants of the program, so the arguments (and their
    bytes) are the same for every S.
    """
    seq = timestep_sequence(steps, int(alphas_cumprod.shape[0]), "uniform")
    eps_fn = eps_fn_for(model)

    def run(x_T, params):
        return sample(eps_fn, x_T, seq, alphas_cumprod, eps_fn_args=(params,))

    x_T = jax.ShapeDtypeStruct((batch,) + tuple(image_shape), jnp.float32)
    return jax.jit(run).lower(x_T, params).compile()


def memory_bytes(compiled) -> dict[str, int]:
    """temp / argument / output bytes of a compiled program (``memory_analysis()``) and their total."""
    analysis = compiled.memory_analysis()
    sizes = {"temp": int(analysis.temp_size_in_bytes), "argument": int(analysis.argument_size_in_bytes),
             "output": int(analysis.output_size_in_bytes)}
    sizes["total"] = sum(sizes.values())
    return sizes


def sampling_memory(model, params, alphas_cumprod, batch, image_shape, step_counts=(10, 1000)) -> dict:
    """{S: memory_bytes} of the compiled sampler at each S."""
    return {steps: memory_bytes(compile_sampler(model, params, alphas_cumprod, batch, steps, image_shape))
            for steps in step_counts}


def same_weights(config, device: str):
    """(torch model, our UNet, our params): one random ``UNet2DModel`` saved with safetensors and
    converted with ``load_diffusers_unet``."""
    torch_model = make_torch_unet(config, seed=0).eval()
    with tempfile.TemporaryDirectory() as directory:
        torch_model.save_pretrained(directory, safe_serialization=True)
        model, variables = load_diffusers_unet(directory)
    return torch_model.to(device), model, variables["params"]


def _interleave(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _fmt_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def bench_sampling(config, batches, step_counts, repeats, torch_device: str | None) -> list[dict]:
    import torch

    torch_model, model, params = same_weights(config, torch_device or "cpu")
    alphas_cumprod = make_alphas_cumprod(config.diffusion)
    torch_alphas = torch.from_numpy(np.array(alphas_cumprod)).to(torch_device or "cpu")
    size, channels = config.data.image_size, config.data.channels
    image_shape = (size, size, channels)
    rows = []
    for batch in batches:
        x_T = np.random.default_rng(batch).standard_normal((batch,) + image_shape).astype(np.float32)
        x_T_jax = jnp.asarray(x_T)
        for steps in step_counts:
            runners, compile_s, outputs = {}, {}, {}
            for precision, dtype in PRECISIONS.items():
                start = time.perf_counter()
                compiled = compile_sampler(model.clone(dtype=dtype), params, alphas_cumprod, batch, steps, image_shape)
                compile_s[("ours", precision)] = time.perf_counter() - start
                runners[("ours", precision)] = (lambda c=compiled: jax.block_until_ready(c(x_T_jax, params)))
            if torch_device is not None:
                seq = timestep_sequence(steps, int(alphas_cumprod.shape[0]), "uniform")
                x_T_torch = torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy()).to(torch_device)
                for precision in TORCH_PRECISIONS:
                    runners[("torch", precision)] = (
                        lambda p=precision: torch_ddim(torch_model, x_T_torch, seq, torch_alphas, p).cpu().numpy())
            for key, run in runners.items():  # first calls: warm-up (and compile-free for ours)
                start = time.perf_counter()
                out = run()
                outputs[key] = np.asarray(out if key[0] == "ours" else out.transpose(0, 2, 3, 1))
                compile_s.setdefault(key, time.perf_counter() - start)
            medians = _interleave(runners, repeats)
            reference = outputs.get(("torch", "fp32"))
            for (impl, precision), seconds in medians.items():
                diff = (float(np.abs(outputs[(impl, precision)] - reference).max() / np.abs(reference).max())
                        if reference is not None else None)
                rows.append(dict(task="sample", impl=impl, precision=precision, batch=batch, steps=steps,
                                 compile_s=compile_s[(impl, precision)], seconds=seconds,
                                 throughput=f"{batch / seconds:,.1f} img/s",
                                 projected=_fmt_duration(NUM_FID_IMAGES / batch * seconds) if steps == 20 else "",
                                 diff=diff))
            if torch_device is None:
                rows.append(dict(task="sample", impl="torch", precision="-", batch=batch, steps=steps,
                                 throughput="skipped (torch has no CUDA)"))
    return rows


def bench_training(config, batch: int, steps: int, torch_device: str | None) -> list[dict]:
    config = config.copy_and_resolve_references()
    config.training.batch_size = batch
    runners, rows = {}, []
    for precision, dtype in PRECISIONS.items():
        config.model.dtype = dtype
        runners[("ours", precision)] = bench_train.jax_stepper(config.copy_and_resolve_references())[0]
    config.model.dtype = "float32"
    if torch_device is not None:
        for precision in TORCH_PRECISIONS:
            runners[("torch", precision)] = bench_train.torch_stepper(config, precision, torch_device)[0]
    named = {f"{impl}/{precision}": run for (impl, precision), run in runners.items()}
    results = bench_train.interleaved(named, steps, warmup=1)
    for (impl, precision) in runners:
        result = results[f"{impl}/{precision}"]
        rows.append(dict(task="train", impl=impl, precision=precision, batch=batch, compile_s=result["first_s"],
                         seconds=result["step_s"], throughput=f"{1.0 / result['step_s']:.2f} steps/s"))
    if torch_device is None:
        rows.append(dict(task="train", impl="torch", precision="-", batch=batch,
                         throughput="skipped (torch has no CUDA)"))
    return rows


def bench_memory(config, batch: int) -> list[dict]:
    model_config = config.copy_and_resolve_references()
    from ddim_jax.models import abstract_params, create_model

    model = create_model(model_config)
    size, channels = config.data.image_size, config.data.channels
    params = abstract_params(model, (size, size, channels))  # shapes suffice to compile
    memory = sampling_memory(model, params, make_alphas_cumprod(config.diffusion), batch, (size, size, channels))
    return [dict(task="memory", impl="ours", precision="fp32", batch=batch, steps=steps,
                 memory=f"{sizes['total'] / 2**20:,.1f} MiB (temp {sizes['temp'] / 2**20:,.1f})")
            for steps, sizes in memory.items()]


COLUMNS = [("task", "task"), ("impl", "implementation"), ("precision", "precision"), ("batch", "batch"),
           ("steps", "S"), ("compile_s", "compile / 1st call s"), ("seconds", "s per call"),
           ("throughput", "throughput"), ("projected", f"{NUM_FID_IMAGES:,} images at S=20"),
           ("memory", "XLA memory (temp + args + out)"), ("diff", "rel. diff vs torch fp32")]


def markdown_table(rows: list[dict]) -> str:
    def cell(key, value):
        if value is None or value == "":
            return ""
        if key == "compile_s":
            return f"{value:.1f}"
        if key == "seconds":
            return f"{value:.3f}"
        if key == "diff":
            return f"{value:.1e}"
        return str(value)

    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(key, row.get(key)) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny UNet, batch 2, S = 2, one repeat, on CPU")
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--steps", default="10,20,50,100", help="sampling step counts S")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per row (median)")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps per row (median)")
    args = parser.parse_args(argv)
    import torch

    if args.cpu_smoke:
        config, batches, step_counts, repeats = tiny_config(), [2], [2], 1
        train_batch, train_steps, torch_device = 2, 1, "cpu"
    else:
        config, repeats = cifar10_config(), args.repeats
        batches = [int(b) for b in args.batches.split(",")]
        step_counts = [int(s) for s in args.steps.split(",")]
        train_batch, train_steps = args.train_batch, args.train_steps
        torch_device = "cuda" if torch.cuda.is_available() else None
        if torch_device == "cuda":
            torch.backends.cudnn.benchmark = True
    rows = bench_sampling(config, batches, step_counts, repeats, torch_device)
    rows += bench_training(config, train_batch, train_steps, torch_device)
    rows += bench_memory(config, batches[0])
    device = jax.devices()[0]
    torch_name = torch.cuda.get_device_name() if torch_device == "cuda" else torch_device or "-"
    caption = (f"{'CPU smoke (tiny UNet)' if args.cpu_smoke else 'CIFAR-10 UNet (35.7M params, random weights)'}: "
               f"jax {jax.__version__} on {device.device_kind} ({device.platform}); torch {torch.__version__} "
               f"on {torch_name}; median of {repeats} interleaved calls")
    table = markdown_table(rows)
    print(caption + "\n\n" + table, flush=True)
    return table


if __name__ == "__main__":
    main()
