"""Where a training step's time goes on the CPU, ours (XLA) vs PyTorch, per phase and per op class.

    python -m benchmarks.profile_cpu [--model cifar10|digits] [--batch N] [--steps 3] [--side both|ours|torch]

For the config's UNet at the given batch (defaults: CIFAR-10 at 8, digits at 64) it prints

1. **phases**, both sides, timed interleaved (medians): the forward pass (train mode, dropout on),
   forward + backward (``value_and_grad`` of L_simple / ``loss.backward()``), and the whole step
   (+ grad-norm clip, Adam, EMA); the optimizer's share is step minus forward-backward.
   With XLA's ``cost_analysis()`` flops of our step: the effective GFLOP/s of each side.
2. **op classes** of one profiled run of ``--steps`` steps per side: convolutions (forward,
   input-grad, weight-grad), dense matmuls, attention core (QK^T, softmax, AV), GroupNorm, SiLU,
   the Adam / clip and EMA updates, layout transposes / copies and the rest, as a share of the
   profiled op time. Ours: ``jax.profiler`` traces of the compiled step, each XLA thunk (named
   after its HLO instruction) classified from the optimized HLO (the convolution or dot it fuses,
   the Flax module path and the ``optimizer`` / ``ema`` scopes in its metadata, forward vs
   ``transpose(jvp(...))`` for the backward). PyTorch: ``torch.profiler`` self CPU time per aten
   op (oneDNN computes a convolution's input- and weight-gradients in one
   ``convolution_backward`` op, so that row is their sum).

Shares within one run are comparable even on a shared machine (every op sees the same load, to
first order; memory-bound ops suffer a little more than compute-bound ones); absolute times and
cross-side ratios are only usable where :mod:`benchmarks.machine` says the machine was not shared.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import configs.cifar10
import configs.digits
from benchmarks.bench_train import jax_state, jax_stepper, torch_stepper
from benchmarks.machine import LoadWatch, interleaved
from ddim_jax.models import apply_model, create_model
from ddim_jax.schedules import make_alphas_cumprod
from ddim_jax.training import objective

CLASSES = ("conv forward", "conv input-grad", "conv weight-grad", "conv backward (input + weight)",
           "dense matmul", "attention core", "GroupNorm", "SiLU", "Adam + clip", "EMA", "layout transpose/copy",
           "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """``({computation: [instruction]}, {entry instruction name: instruction})`` of optimized HLO
    text; an instruction is ``{"name", "shape", "opcode", "calls", "op_name"}``."""
    computations, current, entry = {}, None, None
    for line in text.splitlines():
        if line.startswith(("%", "ENTRY")) and line.endswith("{"):
            current = line.split()[1] if line.startswith("ENTRY") else _COMPUTATION.match(line).group(1)
            current = current.lstrip("%")
            computations[current] = []
            entry = current if line.startswith("ENTRY") else entry
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            rest = match.group(4)
            calls = re.search(r"calls=%([\w.\-]+)", rest)
            op_name = re.search(r'op_name="([^"]*)"', rest)
            computations[current].append({
                "name": match.group(1), "shape": match.group(2), "opcode": match.group(3),
                "calls": calls.group(1) if calls else None, "op_name": op_name.group(1) if op_name else ""})
    return computations, {inst["name"]: inst for inst in computations.get(entry, [])}


def _dims(shape: str) -> list[int]:
    found = re.search(r"\[([\d,]*)\]", shape)
    return [int(d) for d in found.group(1).split(",") if d] if found else []


def _class_of_leaf(inst: dict) -> str | None:
    """The op class of one (fused) instruction from its opcode and metadata; None if unknown."""
    op_name, opcode = inst["op_name"], inst["opcode"]
    if "/optimizer/" in op_name:
        return "Adam + clip"
    if "/ema/" in op_name:
        return "EMA"
    if opcode == "convolution":
        # A kernel-shaped output (two dims of 1 or 3) is a weight gradient (XLA leaves those without
        # metadata); the others are forward unless their metadata says transpose(jvp(...)).
        if sum(d <= 3 for d in _dims(inst["shape"])) >= 2:
            return "conv weight-grad"
        return "conv input-grad" if "transpose(" in op_name else "conv forward"
    in_attention = "/attentions_" in op_name
    if opcode == "dot":
        projection = re.search(r"/(to_q|to_k|to_v|to_out_0)/", op_name)
        return "attention core" if in_attention and not projection else "dense matmul"
    if re.search(r"/(norm1|norm2|group_norm|conv_norm_out)/", op_name):
        return "GroupNorm"
    if "logistic" in op_name or "swish" in op_name or "silu" in op_name:
        return "SiLU"
    if in_attention and re.search(r"softmax|/exp|reduce_max|/div", op_name):
        return "attention core"
    return None


def classify(inst: dict, computations: dict) -> str:
    """The op class of an entry instruction: a fused convolution or dot decides; else the most
    frequent class among the fused instructions; layout copies by name."""
    leaves, stack = [], [inst]
    while stack:
        current = stack.pop()
        leaves.append(current)
        if current["calls"]:
            stack.extend(computations.get(current["calls"], []))
    classes = [c for c in map(_class_of_leaf, leaves) if c]
    for heavy in ("conv forward", "conv input-grad", "conv weight-grad", "attention core", "dense matmul"):
        if heavy in classes and any(leaf["opcode"] in ("convolution", "dot") for leaf in leaves):
            return heavy
    if inst["name"].startswith(("transpose", "copy", "bitcast_copy")) or inst["opcode"] in ("transpose", "copy"):
        return "layout transpose/copy"
    return collections.Counter(classes).most_common(1)[0][0] if classes else "other"


def phase_of(op_name: str) -> str:
    if "/optimizer/" in op_name or "/ema/" in op_name:
        return "update"
    return "backward" if "transpose(jvp(" in op_name else "forward" if "jvp(" in op_name else "other"


def profile_ours(config, batch: np.ndarray, steps: int) -> tuple[dict, float]:
    """({op class: seconds of thunk time}, flops per step) of ``steps`` profiled train steps."""
    state = jax_state(config)
    step = jax.jit(objective.make_train_step(config), donate_argnums=(0,))
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", float("nan")))
    computations, entry = parse_hlo(compiled.as_text())
    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            for _ in range(steps):
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
        profile = jax.profiler.ProfileData.from_file(glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0])
    seconds: dict = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                inst = entry.get(event.name)
                if inst is not None:
                    seconds[classify(inst, computations)] += event.duration_ns * 1e-9 / steps
    return dict(seconds), flops


def torch_class(name: str) -> str:
    """The op class of an aten op (by name)."""
    rules = (("convolution_backward", "conv backward (input + weight)"), ("convolution", "conv forward"),
             ("group_norm", "GroupNorm"), ("silu", "SiLU"), ("scaled_dot_product", "attention core"),
             ("softmax", "attention core"), ("bmm", "attention core"), ("_foreach_lerp", "EMA"),
             ("_foreach", "Adam + clip"), ("vector_norm", "Adam + clip"), ("addmm", "dense matmul"),
             ("aten::mm", "dense matmul"), ("copy_", "layout transpose/copy"), ("clone", "layout transpose/copy"),
             ("contiguous", "layout transpose/copy"), ("aten::cat", "layout transpose/copy"))
    return next((cls for key, cls in rules if key in name), "other")


def profile_torch(run, steps: int) -> dict:
    """{op class: self CPU seconds per step} of ``steps`` profiled PyTorch steps."""
    import torch.profiler

    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    seconds: dict = collections.Counter()
    for event in prof.key_averages():
        seconds[torch_class(event.key)] += event.self_cpu_time_total * 1e-6 / steps
    return dict(seconds)


def phase_runners(config, batch: np.ndarray, side: str) -> dict:
    """{"<side> forward" / "<side> fwd+bwd" / "<side> step": synchronised callable}."""
    if side == "ours":
        model, alphas_cumprod = create_model(config), make_alphas_cumprod(config.diffusion)
        params = jax_state(config).params
        key, t = jax.random.key(0), jnp.arange(batch.shape[0], dtype=jnp.int32)
        forward = jax.jit(lambda p, x, k: apply_model(model, x, t, p, dropout_key=k))
        apply_fn = lambda x, tt, p, k: apply_model(model, x, tt, p, dropout_key=k)  # noqa: E731
        grad = jax.jit(jax.value_and_grad(
            lambda p, x, k: objective.l_simple_loss(p, apply_fn, x, k, alphas_cumprod)))
        step, _ = jax_stepper(config)
        return {"ours forward": lambda: jax.block_until_ready(forward(params, batch, key)),
                "ours fwd+bwd": lambda: jax.block_until_ready(grad(params, batch, key)),
                "ours step": step}
    import torch

    from benchmarks.torch_unet import TorchTrainer

    trainer = TorchTrainer(config)
    x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    t = torch.arange(x.shape[0])

    def fwd_bwd():
        trainer.optimizer.zero_grad(set_to_none=True)
        torch.mean(torch.square(trainer.model(x, t).sample - x)).backward()

    return {"torch forward": lambda: trainer.model(x, t).sample.sum().item(),
            "torch fwd+bwd": fwd_bwd,
            "torch step": lambda: trainer.step(x).item()}


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def class_table(classes: dict, sides: tuple, steps: int) -> None:
    rows = []
    for cls in CLASSES:
        cells = []
        for side in sides:
            total, value = sum(classes[side].values()), classes[side].get(cls, 0.0)
            cells.append(f"{value * 1e3:.0f} ms ({value / total:.0%})" if value else "-")
        rows.append([cls] + cells)
    rows.append(["total profiled op time"] + [f"{sum(classes[s].values()) * 1e3:.0f} ms" for s in sides])
    _table(f"Op classes of one train step (mean of {steps} profiled steps; share of the profiled op time)",
           ["op class"] + list(sides), rows)


def phase_table(config, batch: np.ndarray, sides: tuple, steps: int, flops: float, watch: LoadWatch) -> None:
    runners = {}
    for side in sides:
        runners.update(phase_runners(config, batch, side))
    timed = interleaved(runners, steps, warmup=1)
    rows = []
    for phase in ("forward", "fwd+bwd", "step"):
        row = [phase] + [f"{timed[f'{side} {phase}']['step_s'] * 1e3:.0f}" for side in sides]
        if len(sides) == 2:
            row.append(watch.ratio(timed["torch " + phase]["step_s"] / timed["ours " + phase]["step_s"]))
        rows.append(row)
    if "ours" in sides:
        rows.append([f"GFLOP/s of the step ({flops / 1e9:.1f} GFLOP per step, XLA's count)"]
                    + [f"{flops / timed[f'{side} step']['step_s'] / 1e9:.1f}" for side in sides]
                    + ([""] if len(sides) == 2 else []))
    header = ["phase (ms, median)"] + list(sides) + (["ours speed / torch"] if len(sides) == 2 else [])
    _table(f"Phases, median of {steps} interleaved repeats", header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("cifar10", "digits"), default="cifar10")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 for cifar10, 64 for digits")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps and timed repeats per side")
    parser.add_argument("--side", choices=("both", "ours", "torch"), default="both")
    parser.add_argument("--no-phases", action="store_true", help="only the op-class profile (one compile)")
    args = parser.parse_args()
    config = (configs.cifar10 if args.model == "cifar10" else configs.digits).get_config()
    config.training.batch_size = args.batch or (8 if args.model == "cifar10" else 64)
    size, channels = config.data.image_size, config.data.channels
    batch = np.random.default_rng(0).uniform(-1, 1, (config.training.batch_size, size, size, channels))
    batch = batch.astype(np.float32)
    sides = ("ours", "torch") if args.side == "both" else (args.side,)
    import torch

    watch = LoadWatch()
    print(f"{args.model} UNet, batch {config.training.batch_size}, fp32; torch {torch.get_num_threads()} threads")
    classes, flops = {}, float("nan")
    for side in sides:  # the profiles first: a trace is a separate, short run per side
        if side == "ours":
            classes[side], flops = profile_ours(config, batch, args.steps)
        else:
            classes[side] = profile_torch(torch_stepper(config)[0], args.steps)
    class_table(classes, sides, args.steps)
    if "ours" in sides:
        print(f"\nXLA cost analysis of our step: {flops / 1e9:.2f} GFLOP", flush=True)
    if not args.no_phases:
        phase_table(config, batch, sides, args.steps, flops, watch)
    watch.close()


if __name__ == "__main__":
    main()
