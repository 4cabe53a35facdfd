"""The GPU benchmark: one Markdown table of sampling and training speed, ours vs PyTorch.

    bash benchmarks/gpu_offline.sh                # on the offline accelerator machine (carried wheels)
    bash benchmarks/gpu.sh                        # on a CUDA machine with the network (cuda12 extra)
    python -m benchmarks.bench_gpu [--batches 256,1024] [--steps 10,20,50,100] [--repeats 2] [--budget-s 450]
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
  PyTorch it is a one-step warm-up call. Every timed call includes fetching x0 to the host. At
  S = 20 the projected wall time of 50,000 images.
- **measured run**: one real run of ``--measure-images`` (50,000, in whole batches of the largest
  batch) at ``--measure-steps`` (20) with ours (``--measure-precision``, fp32): fresh noise per batch,
  each batch fetched and converted to uint8 images; its wall time.
- **train**: training steps/s (``benchmarks/bench_train.py``: our jitted step vs the same recipe in
  PyTorch) at ``--train-batch``.
- **memory**: the compiled sampler's ``memory_analysis()`` (temp + argument + output bytes) at
  S = 10 and S = 1000: the scan carries one state, so memory does not grow with S.
- **adm64 / adm256 network, sample** (``benchmarks/bench_adm.py``): guided-diffusion's released
  class-conditional ImageNet 64 and 256 UNets (296M / 554M params) on the same random weights in
  both frameworks: one forward pass at ``--adm-batch`` and a whole DDIM run (``ddim{--adm-steps}``
  respacing, 25; eta 0, learned sigma, clipped), images/s, ours fp32 / bf16 (the sampler state
  float32) vs guided-diffusion's PyTorch fp32 (TF32 off; its ``ddim_sample_loop``); the last column
  against PyTorch fp32 as for the CIFAR-10 rows.

**Budget** (``--budget-s``): the blocks run in this order: the largest batch at S = 20 (always; it
calibrates the estimates), the measured run, training, the ADM models (64 then 256), the other
sampling cells from the cheapest (batch x S) up, memory. Before each block its cost is estimated
from what was measured so far (a compile at a batch already compiled costs what the last one did,
at a new batch what the slowest did; run time scales with batch x S; an ADM model costs four
compiles, guessed from the CIFAR-10 ones, and its runs, for ADM-256 guessed from ADM-64's), times
1.5; a block that does not fit in what is left becomes a row "skipped (budget: ...)".
``bench_gpu.md`` and ``bench_gpu.json`` (``--out``, default ``$OUT``)
are rewritten after every block, so a run killed at its time limit keeps what it measured.

Runs alternate between implementations (interleaved repeats, medians). When jax sees no GPU, or
torch has no CUDA, the PyTorch rows run on the CPU only with ``--cpu-smoke``; otherwise they are
marked as skipped. Nothing here checks the pinned versions: the versions in use are printed and
written (the offline machine runs its own jax 0.11.2 against the pinned 0.10.2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import configs.cifar10
from benchmarks import bench_adm, bench_train
from benchmarks.device_check import versions_line
from benchmarks.torch_unet import TORCH_PRECISIONS, make_torch_unet, set_torch_precision, torch_ddim
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


def _interleave(runners: dict[Any, Callable[[], Any]], repeats: int) -> tuple[dict[Any, float], dict[Any, Any]]:
    """({name: median seconds}, {name: last output}) of ``repeats`` rounds over the runners."""
    times: dict[Any, list[float]] = {name: [] for name in runners}
    outputs: dict[Any, Any] = {}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def _fmt_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


class Budget:
    """Wall-clock budget of the whole benchmark: a block runs only when its estimate fits in what is left."""

    def __init__(self, seconds: float | None):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - self.elapsed()

    def allows(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()

    def note(self, estimate_s: float) -> str:
        return f"skipped (budget: needs ~{estimate_s:.0f} s, {max(self.left(), 0):.0f} s left)"


SAFETY = 1.5  # estimates are scaled by this before they are compared with the budget
COLD_COMPILE_GUESS_S = 60.0  # one sampler compile before any was measured (GPU, 35.7M UNet)


class SamplingBench:
    """DDIM sampling of one UNet, ours vs PyTorch on the same weights, one (batch, S) cell at a time.

    Keeps what it measured (compile seconds per precision, seconds per image-step per implementation)
    to estimate the cost of the next cell, and the compiled samplers for reuse."""

    def __init__(self, config, repeats: int, torch_device: str | None):
        import torch

        self.repeats, self.torch_device = repeats, torch_device
        self.torch_model, self.model, self.params = same_weights(config, torch_device or "cpu")
        self.alphas_cumprod = make_alphas_cumprod(config.diffusion)
        self.torch_alphas = torch.from_numpy(np.array(self.alphas_cumprod)).to(torch_device or "cpu")
        size, channels = config.data.image_size, config.data.channels
        self.image_shape = (size, size, channels)
        self.compiled: dict[tuple[str, int, int], Any] = {}
        # (precision, batch) -> compile seconds in order: the first at a batch autotunes its kernels
        # (cold), the next ones at that batch reuse what it found (warm).
        self.compile_s: dict[tuple[str, int], list[float]] = {}
        self.step_s: dict[tuple[str, str], float] = {}  # (impl, precision) -> the largest s per image-step seen

    def sampler(self, precision: str, batch: int, steps: int):
        """(compiled sampler, compile seconds or None when reused)."""
        key = (precision, batch, steps)
        if key in self.compiled:
            return self.compiled[key], None
        start = time.perf_counter()
        compiled = compile_sampler(self.model.clone(dtype=PRECISIONS[precision]), self.params, self.alphas_cumprod,
                                   batch, steps, self.image_shape)
        seconds = time.perf_counter() - start
        self.compiled[key] = compiled
        self.compile_s.setdefault((precision, batch), []).append(seconds)
        return compiled, seconds

    def compile_estimate(self, precision: str, batch: int) -> float:
        """Seconds of the next compile: the last one at this batch, else the slowest (cold) one seen."""
        seen = self.compile_s.get((precision, batch))
        if seen:
            return seen[-1]
        return max((s for times in self.compile_s.values() for s in times), default=COLD_COMPILE_GUESS_S)

    def slowest_compile(self) -> float:
        return max((s for times in self.compile_s.values() for s in times), default=COLD_COMPILE_GUESS_S)

    def estimate(self, batch: int, steps: int) -> float:
        """Seconds one cell would take (compiles, warm-up, repeats), scaled by SAFETY."""
        compiles = sum(self.compile_estimate(p, batch) for p in PRECISIONS if (p, batch, steps) not in self.compiled)
        runs = sum(rate * batch * steps * (self.repeats + 1) for rate in self.step_s.values())
        return SAFETY * (compiles + runs)

    def cell(self, batch: int, steps: int) -> list[dict]:
        import torch

        x_T = np.random.default_rng(batch).standard_normal((batch,) + self.image_shape).astype(np.float32)
        x_T_jax = jnp.asarray(x_T)
        seq = timestep_sequence(steps, int(self.alphas_cumprod.shape[0]), "uniform")
        runners, compile_s = {}, {}
        for precision in PRECISIONS:
            compiled, compile_s[("ours", precision)] = self.sampler(precision, batch, steps)
            runners[("ours", precision)] = (lambda c=compiled: np.asarray(c(x_T_jax, self.params)))
        if self.torch_device is not None:
            x_T_torch = torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy()).to(self.torch_device)
            for precision in TORCH_PRECISIONS:
                runners[("torch", precision)] = (lambda p=precision, q=seq: torch_ddim(
                    self.torch_model, x_T_torch, q, self.torch_alphas, p).cpu().numpy().transpose(0, 2, 3, 1))
        for (impl, precision), run in runners.items():  # warm-up: ours a full call, PyTorch one step
            start = time.perf_counter()
            if impl == "ours":
                run()
            else:
                torch_ddim(self.torch_model, x_T_torch, seq[:1], self.torch_alphas, precision).cpu()
            if compile_s.get((impl, precision)) is None:
                compile_s[(impl, precision)] = time.perf_counter() - start
        medians, outputs = _interleave(runners, self.repeats)
        reference = outputs.get(("torch", "fp32"))
        rows = []
        for (impl, precision), seconds in medians.items():
            self.step_s[(impl, precision)] = max(self.step_s.get((impl, precision), 0.0), seconds / (batch * steps))
            diff = (float(np.abs(outputs[(impl, precision)] - reference).max() / np.abs(reference).max())
                    if reference is not None else None)
            rows.append(dict(task="sample", impl=impl, precision=precision, batch=batch, steps=steps,
                             compile_s=compile_s[(impl, precision)], seconds=seconds,
                             throughput=f"{batch / seconds:,.1f} img/s",
                             projected=_fmt_duration(NUM_FID_IMAGES / batch * seconds) if steps == 20 else "",
                             diff=diff))
        if self.torch_device is None:
            rows.append(dict(task="sample", impl="torch", precision="-", batch=batch, steps=steps,
                             throughput="skipped (torch has no CUDA)"))
        return rows

    def measure_run(self, num_images: int, batch: int, steps: int, budget: Budget,
                    precision: str = "fp32") -> list[dict]:
        """One measured run of ``num_images`` (rounded up to whole batches) with ours: fresh noise per
        batch, every batch fetched to the host as uint8 images; wall time of the whole."""
        calls = -(-num_images // batch)
        rate = self.step_s.get(("ours", precision))
        estimate = SAFETY * ((rate * batch * steps * calls) if rate else float("inf"))
        estimate += 0 if (precision, batch, steps) in self.compiled else self.compile_estimate(precision, batch)
        row = dict(task="measured run", impl="ours", precision=precision, batch=batch, steps=steps)
        if not budget.allows(estimate):
            return [dict(row, throughput=f"{calls * batch:,} images: " + budget.note(estimate))]
        compiled, _ = self.sampler(precision, batch, steps)
        noise = jax.jit(lambda key: jax.random.normal(key, (batch,) + self.image_shape, jnp.float32))
        jax.block_until_ready(noise(jax.random.key(0)))
        start = time.perf_counter()
        for i in range(calls):
            x0 = np.asarray(compiled(noise(jax.random.key(i)), self.params))
            np.clip(np.rint((x0 + 1.0) * 127.5), 0, 255).astype(np.uint8)
        seconds = time.perf_counter() - start
        images = calls * batch
        return [dict(row, seconds=seconds, throughput=f"{images / seconds:,.1f} img/s",
                     projected=f"measured: {_fmt_duration(seconds)} for {calls} x {batch} = {images:,} images")]


def bench_sampling(config, batches, step_counts, repeats, torch_device: str | None,
                   budget: Budget | None = None) -> list[dict]:
    """All (batch, S) cells in the order given, each run only if the budget allows it."""
    bench = SamplingBench(config, repeats, torch_device)
    budget = budget or Budget(None)
    rows: list[dict] = []
    for batch in batches:
        for steps in step_counts:
            rows += sampling_cell_or_skip(bench, batch, steps, budget)
    return rows


def sampling_cell_or_skip(bench: SamplingBench, batch: int, steps: int, budget: Budget) -> list[dict]:
    estimate = bench.estimate(batch, steps)
    if bench.step_s and not budget.allows(estimate):  # the first cell always runs: it calibrates
        return [dict(task="sample", impl="-", precision="-", batch=batch, steps=steps,
                     throughput=budget.note(estimate))]
    return bench.cell(batch, steps)


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


def bench_memory(config, batch: int, bench: SamplingBench | None = None) -> list[dict]:
    """The fp32 sampler's memory at S = 10 and S = 1000 (``bench``'s compiled samplers when given)."""
    if bench is not None:
        memory = {steps: memory_bytes(bench.sampler("fp32", batch, steps)[0]) for steps in (10, 1000)}
    else:
        from ddim_jax.models import abstract_params, create_model

        model = create_model(config.copy_and_resolve_references())
        size, channels = config.data.image_size, config.data.channels
        params = abstract_params(model, (size, size, channels))  # shapes suffice to compile
        memory = sampling_memory(model, params, make_alphas_cumprod(config.diffusion), batch, (size, size, channels))
    return [dict(task="memory", impl="ours", precision="fp32", batch=batch, steps=steps,
                 memory=f"{sizes['total'] / 2**20:,.1f} MiB (temp {sizes['temp'] / 2**20:,.1f})")
            for steps, sizes in memory.items()]


ADM_MODELS = ("adm64", "adm256")
ADM_COMPILES = 4  # network and sampler, fp32 and bf16
ADM_256_OVER_64 = 8.0  # guess of ADM-256's time over ADM-64's (16x the pixels at fewer channels per pixel)
ADM_FIRST_RUNS_GUESS_S = 30.0  # ADM-64's runs before anything was measured


def _adm_cell(task: str, runners: dict, warmups: dict, compile_s: dict, batch: int, steps: int | None,
              repeats: int, torch_device: str | None) -> list[dict]:
    """One ADM row per runner: one warm-up call each (timed for PyTorch: its compile column), then
    interleaved repeats; the difference against PyTorch fp32."""
    for key, warm in warmups.items():
        start = time.perf_counter()
        warm()
        if compile_s.get(key) is None:
            compile_s[key] = time.perf_counter() - start
    medians, outputs = _interleave(runners, repeats)
    reference = outputs.get(("torch", "fp32"))
    rows = []
    for (impl, precision), seconds in medians.items():
        rows.append(dict(task=task, impl=impl, precision=precision, batch=batch, steps=steps,
                         compile_s=compile_s[(impl, precision)], seconds=seconds,
                         throughput=f"{batch / seconds:,.1f} img/s",
                         diff=bench_adm.rel_diff(outputs[(impl, precision)], reference)
                         if reference is not None else None))
    if torch_device is None:
        rows.append(dict(task=task, impl="torch", precision="-", batch=batch, steps=steps,
                         throughput="skipped (torch has no CUDA)"))
    return rows


def bench_adm_model(name: str, smoke: bool, batch: int, steps: int, repeats: int,
                    torch_device: str | None) -> list[dict]:
    """ADM network and DDIM-sampler rows of one released flag set (reduced with ``smoke``): ours fp32
    and bf16 vs guided-diffusion's PyTorch fp32 on ``torch_device`` (none: ours only)."""
    import torch

    pair = bench_adm.build_unet(bench_adm.model_flags(name, smoke), device=torch_device or "cpu")
    set_torch_precision("fp32")
    x, labels = bench_adm.inputs(batch, pair.image_size)
    t = np.full(batch, bench_adm.NETWORK_T, np.int32)
    x_jax, t_jax, y_jax = jnp.asarray(x), jnp.asarray(t), jnp.asarray(labels)
    device = torch_device or "cpu"
    x_torch, y_torch = bench_adm.to_nchw(x, device), torch.from_numpy(labels.astype(np.int64)).to(device)
    t_torch = torch.from_numpy(t.astype(np.int64)).to(device)
    models = {precision: pair.model.clone(dtype=dtype) for precision, dtype in PRECISIONS.items()}

    runners, compile_s = {}, {}
    for precision, model in models.items():
        compiled, compile_s[("ours", precision)] = bench_adm.compile_network(model, pair.params, x_jax, t_jax, y_jax)
        runners[("ours", precision)] = lambda c=compiled: np.asarray(c(pair.params, x_jax, t_jax, y_jax))
    if torch_device is not None:
        def forward():
            with torch.inference_mode():
                return pair.torch_model(x_torch, t_torch, y_torch).cpu().numpy().transpose(0, 2, 3, 1)
        runners[("torch", "fp32")] = forward
    rows = _adm_cell(f"{name} network", runners, runners, compile_s, batch, None, repeats, torch_device)

    alphas_cumprod = bench_adm.schedule_of(pair.flags)
    x_T, labels = bench_adm.inputs(batch, pair.image_size, seed=1)
    x_T_jax, y_jax = jnp.asarray(x_T), jnp.asarray(labels)
    runners, compile_s = {}, {}
    for precision, model in models.items():
        compiled, compile_s[("ours", precision)] = bench_adm.compile_sampler(model, pair.params, alphas_cumprod,
                                                                             steps, x_T_jax, y_jax)
        runners[("ours", precision)] = lambda c=compiled: np.asarray(c(x_T_jax, pair.params, y_jax))
    warmups = dict(runners)
    if torch_device is not None:
        y_torch = torch.from_numpy(labels.astype(np.int64)).to(device)
        runners[("torch", "fp32")] = bench_adm.torch_sampler(pair.torch_model, alphas_cumprod, steps,
                                                             bench_adm.to_nchw(x_T, device), y_torch)
        # PyTorch's warm-up: a two-step run (ddim1 does not exist; the network rows chose its kernels).
        warmups[("torch", "fp32")] = bench_adm.torch_sampler(pair.torch_model, alphas_cumprod, min(steps, 2),
                                                             bench_adm.to_nchw(x_T, device), y_torch)
    return rows + _adm_cell(f"{name} sample", runners, warmups, compile_s, batch, steps, repeats, torch_device)


def bench_adm_models(smoke: bool, batch: int, steps: int, repeats: int, torch_device: str | None,
                     budget: Budget, compile_guess_s: float, flush: Callable[[list[dict]], None]) -> None:
    """:func:`bench_adm_model` for ADM-64 then ADM-256, each only if its estimate fits the budget."""
    measured: dict[str, float] = {}
    for name in ADM_MODELS:
        runs = (measured["adm64"] * ADM_256_OVER_64 if "adm64" in measured and name == "adm256"
                else ADM_FIRST_RUNS_GUESS_S)
        estimate = SAFETY * (ADM_COMPILES * compile_guess_s * (2 if name == "adm256" else 1) + runs)
        if not budget.allows(estimate):
            flush([dict(task=f"{name} network", impl="-", precision="-", batch=batch,
                        throughput=budget.note(estimate))])
            continue
        start = time.perf_counter()
        rows = bench_adm_model(name, smoke, batch, steps, repeats, torch_device)
        compiles = sum(row.get("compile_s") or 0.0 for row in rows if row["impl"] == "ours")
        measured[name] = time.perf_counter() - start - compiles
        flush(rows)


COLUMNS = [("task", "task"), ("impl", "implementation"), ("precision", "precision"), ("batch", "batch"),
           ("steps", "S"), ("compile_s", "compile / 1st call s"), ("seconds", "s per call"),
           ("throughput", "throughput"), ("projected", f"{NUM_FID_IMAGES:,} images at S=20 (projected / measured)"),
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


def plan_cells(batches: Sequence[int], step_counts: Sequence[int]) -> list[tuple[int, int]]:
    """The sampling cells in the order they run: the largest batch at S = 20 (else the first S) first,
    then the others from the cheapest (batch x S) up, so that a budget cuts the costliest ones."""
    first = (max(batches), 20 if 20 in step_counts else step_counts[0])
    rest = sorted({(b, s) for b in batches for s in step_counts} - {first}, key=lambda cell: (cell[0] * cell[1], cell))
    return [first] + rest


TASK_ORDER = ("sample", "measured run", "train") + tuple(
    f"{name} {part}" for name in ADM_MODELS for part in ("network", "sample")) + ("memory",)


def sorted_rows(rows: list[dict]) -> list[dict]:
    """Rows in table order (task, batch, S); cells keep their implementation order."""
    return sorted(rows, key=lambda row: (TASK_ORDER.index(row["task"]), row.get("batch") or 0, row.get("steps") or 0))


def write_outputs(out_dir: Path, caption: str, rows: list[dict], meta: dict) -> str:
    """Writes ``bench_gpu.md`` (caption + table) and ``bench_gpu.json`` (meta + rows); returns the table."""
    table = markdown_table(sorted_rows(rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_gpu.md").write_text(caption + "\n\n" + table + "\n")
    (out_dir / "bench_gpu.json").write_text(json.dumps(dict(meta, caption=caption, rows=sorted_rows(rows)),
                                                       indent=1, default=str) + "\n")
    return table


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny UNet, batch 2, S = 2, one repeat, on CPU")
    parser.add_argument("--batches", default=None, help="sampling batches (default 256,1024; smoke: 2)")
    parser.add_argument("--steps", default=None, help="sampling step counts S (default 10,20,50,100; smoke: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per row (median; smoke: 1)")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps per row (median)")
    parser.add_argument("--measure-images", type=int, default=NUM_FID_IMAGES,
                        help="images of the one measured run (ours, largest batch; 0: none)")
    parser.add_argument("--measure-steps", type=int, default=20, help="S of the measured run (smoke: 2)")
    parser.add_argument("--measure-precision", default="fp32", choices=tuple(PRECISIONS),
                        help="precision of the measured run")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget: a block whose estimate does not fit is skipped with a note")
    parser.add_argument("--adm-batch", type=int, default=16, help="batch of the ADM rows (smoke: 1)")
    parser.add_argument("--adm-steps", type=int, default=25, help="DDIM steps of the ADM sampler rows (smoke: 2)")
    parser.add_argument("--skip", default="", help="comma-separated blocks not to run: measured,train,memory,adm")
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench_gpu_out",
                        help="folder for bench_gpu.md and bench_gpu.json (default: $OUT, else bench_gpu_out)")
    args = parser.parse_args(argv)
    skip = {block for block in args.skip.split(",") if block}
    if skip - {"measured", "train", "memory", "adm"}:
        parser.error(f"--skip takes measured, train, memory, adm; got {args.skip!r}")
    import torch

    budget = Budget(args.budget_s)
    if args.cpu_smoke:
        config, batches, step_counts, repeats = tiny_config(), args.batches or "2", args.steps or "2", 1
        train_batch, train_steps, torch_device = 2, 1, "cpu"
        measure_images, measure_steps = min(args.measure_images, 4), 2
        adm_batch, adm_steps = 1, 2
    else:
        config, repeats = cifar10_config(), args.repeats
        batches, step_counts = args.batches or "256,1024", args.steps or "10,20,50,100"
        train_batch, train_steps = args.train_batch, args.train_steps
        measure_images, measure_steps = args.measure_images, args.measure_steps
        adm_batch, adm_steps = args.adm_batch, args.adm_steps
        torch_device = "cuda" if torch.cuda.is_available() else None
        if torch_device == "cuda":
            torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in batches.split(",")]
    step_counts = [int(s) for s in step_counts.split(",")]
    device = jax.devices()[0]
    torch_name = torch.cuda.get_device_name() if torch_device == "cuda" else torch_device or "-"
    meta = dict(versions=versions_line(), jax_device=f"{device.device_kind} ({device.platform})",
                torch_device=torch_name, repeats=repeats, budget_s=args.budget_s,
                jax_default_matmul_precision=str(jax.config.jax_default_matmul_precision),
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print(f"bench_gpu: {meta['versions']}; jax on {meta['jax_device']}; torch on {torch_name}", flush=True)
    rows: list[dict] = []
    out_dir = Path(args.out)

    def caption() -> str:
        model = "CPU smoke (tiny UNet)" if args.cpu_smoke else "CIFAR-10 UNet (35.7M params, random weights)"
        budget_text = f"budget {args.budget_s:.0f} s, " if args.budget_s else ""
        return (f"{model}: jax {jax.__version__} on {device.device_kind} ({device.platform}); torch "
                f"{torch.__version__} on {torch_name}; median of {repeats} interleaved calls; ours fp32 runs at "
                f"XLA's default matmul/conv precision (jax_default_matmul_precision = "
                f"{meta['jax_default_matmul_precision']}); {budget_text}{budget.elapsed():.0f} s used; "
                f"{meta['date']}")

    def flush(new_rows: list[dict]) -> None:
        rows.extend(new_rows)
        write_outputs(out_dir, caption(), rows, dict(meta, elapsed_s=budget.elapsed()))
        for row in new_rows:
            where = f"batch {row.get('batch')} S {row.get('steps', '-')}"
            print(f"  {row['task']} {row['impl']} {row['precision']} {where}: "
                  f"{row.get('throughput') or row.get('memory')} ({budget.elapsed():.0f} s elapsed)", flush=True)

    bench = SamplingBench(config, repeats, torch_device)
    cells = plan_cells(batches, step_counts)
    flush(sampling_cell_or_skip(bench, *cells[0], budget))
    if measure_images > 0 and "measured" not in skip:
        flush(bench.measure_run(measure_images, cells[0][0], measure_steps, budget, args.measure_precision))
    # Training: two train-step compiles (forward + backward, about twice a sampler's) and PyTorch's warm-up.
    estimate = SAFETY * (2 * 2 * bench.slowest_compile() + 10.0)
    if "train" not in skip:
        flush(bench_training(config, train_batch, train_steps, torch_device) if budget.allows(estimate) else
              [dict(task="train", impl="-", precision="-", batch=train_batch, throughput=budget.note(estimate))])
    if "adm" not in skip:
        bench_adm_models(args.cpu_smoke, adm_batch, adm_steps, repeats, torch_device, budget,
                         bench.slowest_compile(), flush)
    for batch, steps in cells[1:]:
        flush(sampling_cell_or_skip(bench, batch, steps, budget))
    estimate = SAFETY * sum(bench.compile_estimate("fp32", batches[0]) for steps in (10, 1000)
                            if ("fp32", batches[0], steps) not in bench.compiled)
    if "memory" not in skip:
        flush(bench_memory(config, batches[0], bench) if budget.allows(estimate) else
              [dict(task="memory", impl="ours", precision="fp32", batch=batches[0], memory=budget.note(estimate))])
    table = write_outputs(out_dir, caption(), rows, dict(meta, elapsed_s=budget.elapsed()))
    print(caption() + "\n\n" + table, flush=True)
    print(f"bench_gpu: wrote {out_dir / 'bench_gpu.md'} and {out_dir / 'bench_gpu.json'}", flush=True)
    return table


if __name__ == "__main__":
    main()
