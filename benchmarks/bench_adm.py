"""ADM (guided-diffusion) networks and DDIM sampling: ours vs guided-diffusion's PyTorch, side by side on the CPU.

Run:  python -m benchmarks.bench_adm [--models adm64,adm256] [--batch 1] [--steps 4] [--repeats 3]
      [--width-scale 1.0] [--no-guided] [--out DIR] [--cpu-smoke]

For each model, guided-diffusion's own ``UNetModel`` is built from the README's flags of the released
class-conditional ImageNet model (``adm64``: 295,904,454 parameters; ``adm256``: 553,838,086;
:data:`benchmarks.adm_reference.RELEASED_FLAGS`; float32 although the flags say ``use_fp16``), its
weights are randomized (speed does not depend on them; no branch is left zero), and its state dict
is converted to our :class:`~ddim_jax.models.adm.ADMUNet` with the project's converter
(``convert_adm_state_dict``, which checks every tensor). On the same input, in one process:

- **network**: one forward pass at batch B: ``model(x, t, y)`` under ``torch.inference_mode()`` vs our
  jitted ``apply``, both float32;
- **sampler**: a whole DDIM run (guided-diffusion's ``timestep_respacing="ddimS"``, eta 0, learned
  sigma, ``clip_denoised=True``) from the same x_T: ``SpacedDiffusion.ddim_sample_loop`` vs
  :func:`ddim_jax.sample` (``output_type="learned_range"``, one jit); the reference diffusion is
  built on our float32 schedule (:func:`benchmarks.adm_reference.reference_diffusion`), so only the
  implementations differ;
- **sampler + classifier** (ADM-64 unless ``--no-guided``): the same with the released 64x64 noisy
  classifier's flags (65,438,568 parameters) guiding at ``--classifier-scale``: guided-diffusion's
  ``cond_fn`` of ``classifier_sample.py`` vs :func:`ddim_jax.guidance.classifier_cond_fn`.

Ours is compiled ahead of time (``jit(...).lower(...).compile()``; that time is reported apart and
not in the throughput). Then each implementation gets one untimed call (PyTorch's oneDNN warm-up)
and ``--repeats`` timed calls alternating between the two (:func:`benchmarks.machine.interleaved`);
the table shows medians, the ratio PyTorch time / our time (> 1: ours is faster) and
``max |ours - torch| / max |torch|`` of the outputs. The machine and the load are printed before and
after (:class:`benchmarks.machine.LoadWatch`). ``--cpu-smoke`` runs the same on 16-px, 32-channel
versions of the flag sets (seconds; tested).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.adm_reference import (
    RELEASED_CLASSIFIER_FLAGS,
    RELEASED_FLAGS,
    randomize,
    reference_classifier,
    reference_cond_fn,
    reference_diffusion,
    reference_unet,
    state_dict_numpy,
)
from benchmarks.machine import LoadWatch, interleaved, machine_line
from ddim_jax.guidance import classifier_cond_fn
from ddim_jax.models.adm import create_adm_classifier, create_adm_model
from ddim_jax.models.adm_calls import ADMEpsFn, ADMLogitsFn
from ddim_jax.models.adm_config import DIFFUSION_DEFAULTS, parse_flag_string
from ddim_jax.pretrained.adm_convert import adm_schedule
from ddim_jax.pretrained.adm_mapping import convert_adm_state_dict
from ddim_jax.sampling import sample
from ddim_jax.schedules import alphas_cumprod_from_betas, timestep_sequence

MODELS = tuple(RELEASED_FLAGS)
# --cpu-smoke: every flag set at 16 px, width 32, two levels, attention at 8 px, 16-channel heads.
SMOKE_FLAGS = dict(image_size="16", num_channels="32", num_res_blocks="1", channel_mult="1,2",
                   attention_resolutions="8", num_head_channels="16")
SMOKE_CLASSIFIER_FLAGS = dict(image_size="16", classifier_width="32", classifier_depth="1",
                              classifier_attention_resolutions="8", classifier_channel_mult="1,2",
                              classifier_num_head_channels="16")
NETWORK_T = 500  # the timestep of the network rows (speed does not depend on it)


@dataclasses.dataclass
class Pair:
    """One network in both frameworks, on the same weights."""

    torch_model: Any
    model: Any  # ours (Flax module)
    params: Any
    num_params: int
    image_size: int
    convert_s: float
    flags: dict


def model_flags(name: str, smoke: bool = False, width_scale: float = 1.0) -> dict[str, str]:
    """The released flags of ``name`` (``"adm64"`` / ``"adm256"``), reduced for ``smoke``, with
    ``num_channels`` scaled by ``width_scale`` (the widths must still suit the heads and groups)."""
    flags = parse_flag_string(RELEASED_FLAGS[name])
    if smoke:
        flags.update(SMOKE_FLAGS)
    if width_scale != 1.0:
        flags["num_channels"] = str(round(int(flags["num_channels"]) * width_scale))
    return flags


def classifier_flags(name: str, smoke: bool = False) -> dict[str, str]:
    """The released noisy classifier's flags of ``name``, reduced for ``smoke``."""
    flags = parse_flag_string(RELEASED_CLASSIFIER_FLAGS[name])
    return dict(flags, **SMOKE_CLASSIFIER_FLAGS) if smoke else flags


def same_weights(torch_model: Any, model: Any, image_size: int, flags: dict, seed: int,
                 device: str = "cpu") -> Pair:
    """Randomizes ``torch_model`` and converts its state dict into ``model``'s params."""
    randomize(torch_model, seed)
    start = time.perf_counter()
    state = state_dict_numpy(torch_model)
    params = jax.device_put(convert_adm_state_dict(state, model, image_size, "the random reference"))
    convert_s = time.perf_counter() - start
    num_params = sum(p.numel() for p in torch_model.parameters())
    return Pair(torch_model.to(device), model, params, num_params, image_size, convert_s, flags)


def build_unet(flags: dict, seed: int = 0, device: str = "cpu") -> Pair:
    """guided-diffusion's UNetModel and our ADMUNet (float32) for ``flags``, on the same random weights."""
    model = create_adm_model(dtype="float32", **flags)
    return same_weights(reference_unet(flags), model, int(flags["image_size"]), flags, seed, device)


def build_classifier(flags: dict, seed: int = 1, device: str = "cpu") -> Pair:
    """guided-diffusion's noisy classifier and our ADMClassifier (float32) on the same random weights."""
    model = create_adm_classifier(dtype="float32", **flags)
    return same_weights(reference_classifier(flags), model, int(flags["image_size"]), flags, seed, device)


def schedule_of(flags: dict) -> np.ndarray:
    """Our float32 ``alphas_cumprod`` of the flags' diffusion settings."""
    settings = {key: flags.get(key, default) for key, default in DIFFUSION_DEFAULTS.items()}
    settings.update(diffusion_steps=int(settings["diffusion_steps"]),
                    learn_sigma=str(settings["learn_sigma"]) == "True",
                    rescale_timesteps=str(settings["rescale_timesteps"]) == "True")
    return np.asarray(alphas_cumprod_from_betas(adm_schedule(settings)["betas"]))


def rel_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    """``max |ours - reference| / max |reference|``."""
    reference = np.asarray(reference, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / np.abs(reference).max())


def inputs(batch: int, size: int, num_classes: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x [B, H, W, 3] standard normal float32, labels int32 [B] = 0, 1, ...)."""
    x = np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)
    return x, (np.arange(batch) % num_classes).astype(np.int32)


def to_nchw(x: np.ndarray, device: str = "cpu"):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)


def compile_network(model: Any, params: Any, x: Any, t: Any, labels: Any):
    """(compiled ``apply(params, x, t, labels)``, seconds to lower and compile)."""
    start = time.perf_counter()
    compiled = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y)).lower(params, x, t, labels).compile()
    return compiled, time.perf_counter() - start


def compile_sampler(model: Any, params: Any, alphas_cumprod: np.ndarray, steps: int, x_T: Any, labels: Any,
                    classifier: Pair | None = None, scale: float = 1.0):
    """(compiled ``run(x_T, params, labels[, classifier params]) -> x0``: guided-diffusion's
    ``ddim{steps}`` respacing, eta 0, learned range, clipped; seconds to lower and compile)."""
    seq = timestep_sequence(steps, int(alphas_cumprod.shape[0]), "ddim")
    eps_fn = ADMEpsFn(model)
    cond_fn = classifier_cond_fn(ADMLogitsFn(classifier.model)) if classifier is not None else None

    def run(x_T, params, labels, classifier_params=None):
        guidance = dict(cond_fn=cond_fn, cond_fn_args=(classifier_params, labels, scale)) if cond_fn else {}
        return sample(eps_fn, x_T, seq, alphas_cumprod, eps_fn_args=(params, labels), clip_x0=True,
                      output_type="learned_range", **guidance)

    args = (x_T, params, labels) + ((classifier.params,) if classifier is not None else ())
    start = time.perf_counter()
    compiled = jax.jit(run).lower(*args).compile()
    return compiled, time.perf_counter() - start


def torch_sampler(torch_model: Any, alphas_cumprod: np.ndarray, steps: int, x_T: Any, labels: Any,
                  classifier: Any = None, scale: float = 1.0):
    """``run() -> x0 [B, H, W, 3]`` of guided-diffusion's ``ddim_sample_loop`` (eta 0, clipped) on the
    ``ddim{steps}`` respacing of ``alphas_cumprod``, from ``x_T`` (NCHW), guided when ``classifier``."""
    import torch

    diffusion = reference_diffusion(alphas_cumprod, f"ddim{steps}")
    cond_fn = reference_cond_fn(classifier, scale) if classifier is not None else None

    def run() -> np.ndarray:
        with torch.no_grad():  # not inference_mode: the classifier's gradient needs autograd
            out = diffusion.ddim_sample_loop(torch_model, tuple(x_T.shape), noise=x_T, clip_denoised=True,
                                             model_kwargs={"y": labels}, cond_fn=cond_fn, device=x_T.device,
                                             progress=False, eta=0.0)
        return out.cpu().numpy().transpose(0, 2, 3, 1)

    return run


def _timed_pair(ours, theirs, repeats: int) -> tuple[dict, dict]:
    """Interleaved timing of two callables that return arrays: (results, last outputs)."""
    outputs: dict[str, np.ndarray] = {}

    def keep(name, run):
        def call():
            outputs[name] = run()
        return call

    results = interleaved({"ours": keep("ours", ours), "torch": keep("torch", theirs)}, repeats, warmup=0)
    return results, outputs


def bench_network(name: str, pair: Pair, batch: int, repeats: int) -> dict:
    """One forward pass, ours vs guided-diffusion's: a row."""
    import torch

    x, labels = inputs(batch, pair.image_size)
    t = np.full(batch, NETWORK_T, np.int32)
    compiled, compile_s = compile_network(pair.model, pair.params, jnp.asarray(x), jnp.asarray(t), jnp.asarray(labels))
    x_jax, t_jax, y_jax = jnp.asarray(x), jnp.asarray(t), jnp.asarray(labels)
    x_torch, t_torch, y_torch = to_nchw(x), torch.from_numpy(t.astype(np.int64)), torch.from_numpy(labels.astype(
        np.int64))

    def theirs():
        with torch.inference_mode():
            return pair.torch_model(x_torch, t_torch, y_torch).numpy().transpose(0, 2, 3, 1)

    results, outputs = _timed_pair(lambda: np.asarray(compiled(pair.params, x_jax, t_jax, y_jax)), theirs, repeats)
    return _row(name, pair, "network", batch, 1, compile_s, results, rel_diff(outputs["ours"], outputs["torch"]))


def bench_sampler(name: str, pair: Pair, batch: int, steps: int, repeats: int, classifier: Pair | None = None,
                  scale: float = 1.0) -> dict:
    """A whole DDIM run, ours vs guided-diffusion's ``ddim_sample_loop``: a row."""
    import torch

    alphas_cumprod = schedule_of(pair.flags)
    x_T, labels = inputs(batch, pair.image_size, seed=1)
    compiled, compile_s = compile_sampler(pair.model, pair.params, alphas_cumprod, steps, jnp.asarray(x_T),
                                          jnp.asarray(labels), classifier, scale)
    args = (jnp.asarray(x_T), pair.params, jnp.asarray(labels)) + ((classifier.params,) if classifier else ())
    theirs = torch_sampler(pair.torch_model, alphas_cumprod, steps, to_nchw(x_T),
                           torch.from_numpy(labels.astype(np.int64)),
                           classifier.torch_model if classifier else None, scale)
    results, outputs = _timed_pair(lambda: np.asarray(compiled(*args)), theirs, repeats)
    task = f"DDIM-{steps} sampler" + (f" + classifier (scale {scale:g})" if classifier else "")
    return _row(name, pair, task, batch, steps, compile_s, results, rel_diff(outputs["ours"], outputs["torch"]),
                classifier)


def _row(name: str, pair: Pair, task: str, batch: int, steps: int, compile_s: float, results: dict, diff: float,
         classifier: Pair | None = None) -> dict:
    ours, theirs = results["ours"]["step_s"], results["torch"]["step_s"]
    params = pair.num_params + (classifier.num_params if classifier else 0)
    return dict(model=name, params=params, task=task, batch=batch, steps=steps, compile_s=compile_s,
                ours_s=ours, torch_s=theirs, ours_step_s=ours / steps, torch_step_s=theirs / steps,
                ratio=theirs / ours, rel_diff=diff, ours_times=results["ours"]["times"],
                torch_times=results["torch"]["times"])


COLUMNS = [("model", "model"), ("params", "params"), ("task", "task"), ("batch", "batch"),
           ("compile_s", "ours compile s"), ("ours_s", "ours s/call"), ("torch_s", "PyTorch s/call"),
           ("ours_step_s", "ours s/step"), ("torch_step_s", "PyTorch s/step"), ("ratio", "PyTorch / ours"),
           ("rel_diff", "max rel. diff")]


def markdown_table(rows: list[dict], watch: LoadWatch | None = None) -> str:
    """The rows as a Markdown table (ratios marked UNRELIABLE through ``watch`` on a shared machine)."""
    def cell(key: str, row: dict) -> str:
        value = row[key]
        if key == "params":
            return f"{value:,}"
        if key in ("compile_s",):
            return f"{value:.1f}"
        if key in ("ours_s", "torch_s", "ours_step_s", "torch_step_s"):
            return f"{value:.3f}"
        if key == "ratio":
            return watch.ratio(value) if watch is not None else f"{value:.2f}x"
        if key == "rel_diff":
            return f"{value:.1e}"
        return str(value)

    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(key, row) for key, _ in COLUMNS) + " |" for row in rows])


def main(argv: Sequence[str] | None = None) -> tuple[list[dict], str]:
    """Runs the benchmark; prints and returns (rows, Markdown table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="S of the DDIM runs (timestep_respacing ddimS)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per implementation (median)")
    parser.add_argument("--width-scale", type=float, default=1.0, help="scale num_channels of every flag set")
    parser.add_argument("--classifier-scale", type=float, default=1.0)
    parser.add_argument("--no-guided", action="store_true", help="no classifier-guided row")
    parser.add_argument("--out", default=None, help="folder to write bench_adm.md and bench_adm.json into")
    parser.add_argument("--cpu-smoke", action="store_true", help="16-px, 32-channel networks: seconds")
    args = parser.parse_args(argv)
    names = [name for name in args.models.split(",") if name]
    if not names or set(names) - set(MODELS):
        parser.error(f"--models takes {', '.join(MODELS)}; got {args.models!r}")
    import torch

    watch = LoadWatch(sys.stdout)  # the current stdout (the default is bound at import)
    print(f"PyTorch {torch.__version__} with {torch.get_num_threads()} threads; JAX {jax.__version__} on "
          f"{jax.devices()[0].platform}; batch {args.batch}, DDIM S = {args.steps}, {args.repeats} interleaved "
          f"repeats (median){', CPU SMOKE (reduced networks)' if args.cpu_smoke else ''}", flush=True)
    rows: list[dict] = []
    for name in names:
        pair = build_unet(model_flags(name, args.cpu_smoke, args.width_scale))
        print(f"{name}: {pair.num_params:,} parameters, converted in {pair.convert_s:.1f} s", flush=True)
        rows.append(bench_network(name, pair, args.batch, args.repeats))
        rows.append(bench_sampler(name, pair, args.batch, args.steps, args.repeats))
        if not args.no_guided and name == "adm64":
            classifier = build_classifier(classifier_flags(name, args.cpu_smoke))
            print(f"{name} classifier: {classifier.num_params:,} parameters", flush=True)
            rows.append(bench_sampler(name, pair, args.batch, args.steps, args.repeats, classifier,
                                      args.classifier_scale))
            del classifier
        for row in rows[-3:]:
            if row["model"] == name:
                print(f"  {row['task']}: ours {row['ours_s']:.3f} s, PyTorch {row['torch_s']:.3f} s "
                      f"({row['ratio']:.2f}x), rel. diff {row['rel_diff']:.1e}; all runs ours "
                      f"{', '.join(f'{t:.3f}' for t in row['ours_times'])}; PyTorch "
                      f"{', '.join(f'{t:.3f}' for t in row['torch_times'])}", flush=True)
        del pair
    table = markdown_table(rows, watch)
    print(table, flush=True)
    watch.close()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_adm.md").write_text(table + "\n")
        (out / "bench_adm.json").write_text(json.dumps(dict(args=vars(args), machine=machine_line(),
                                                            load_before=watch.load_before,
                                                            date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), rows=rows),
                                                       indent=1) + "\n")
    return rows, table


if __name__ == "__main__":
    main()
