"""The GPU benchmark's CPU smoke mode runs end to end (so the script cannot rot without a GPU), and
the PyTorch twin of a run config's UNet is the published CIFAR-10 layout."""

import numpy as np

import configs.cifar10
from benchmarks import bench_gpu
from benchmarks.torch_unet import diffusers_unet_kwargs
from ddim_jax.pretrained import DDPM_CIFAR10_LAYOUT


def test_torch_twin_of_the_cifar10_config_is_the_published_layout():
    kwargs = diffusers_unet_kwargs(configs.cifar10.get_config())
    assert kwargs.pop("norm_num_groups") == 32  # UNet2DModel's default, left out of the layout
    assert kwargs == DDPM_CIFAR10_LAYOUT


def test_cpu_smoke_prints_one_markdown_table(capsys):
    table = bench_gpu.main(["--cpu-smoke"])
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert "\n".join(lines) == table  # one table, printed in one block
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert len(header) == len(bench_gpu.COLUMNS) and all(len(row) == len(header) for row in rows)
    by_task = {}
    for row in rows:
        by_task.setdefault(row[0], []).append(dict(zip(header, row)))
    # ours fp32/bf16 and torch fp32/tf32/bf16, for sampling and training
    assert [(r["implementation"], r["precision"]) for r in by_task["sample"]] == [
        ("ours", "fp32"), ("ours", "bf16"), ("torch", "fp32"), ("torch", "tf32"), ("torch", "bf16")]
    assert len(by_task["train"]) == 5 and all("steps/s" in r["throughput"] for r in by_task["train"])
    # Same weights: ours fp32 agrees with PyTorch fp32; bf16 is close but not equal.
    diffs = {r["implementation"] + r["precision"]: float(r["rel. diff vs torch fp32"]) for r in by_task["sample"]}
    assert diffs["oursfp32"] < 1e-5 and diffs["torchfp32"] == 0 and 0 < diffs["oursbf16"] < 0.1
    memory = {r["S"]: r["XLA memory (temp + args + out)"] for r in by_task["memory"]}
    assert set(memory) == {"10", "1000"} and memory["10"] == memory["1000"]
    assert all(np.isfinite(float(r["s per call"])) for r in by_task["sample"])
