"""The GPU benchmark's CPU smoke mode runs end to end (so the script cannot rot without a GPU), and
the PyTorch twin of a run config's UNet is the published CIFAR-10 layout."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

import configs.cifar10
from benchmarks import bench_gpu, device_check, prepare_device_wheels
from benchmarks.torch_unet import diffusers_unet_kwargs
from ddim_jax.pretrained import DDPM_CIFAR10_LAYOUT

REPO = Path(__file__).resolve().parent.parent.parent


def test_torch_twin_of_the_cifar10_config_is_the_published_layout():
    kwargs = diffusers_unet_kwargs(configs.cifar10.get_config())
    assert kwargs.pop("norm_num_groups") == 32  # UNet2DModel's default, left out of the layout
    assert kwargs == DDPM_CIFAR10_LAYOUT


def test_cpu_smoke_prints_one_markdown_table(capsys, tmp_path):
    table = bench_gpu.main(["--cpu-smoke", "--out", str(tmp_path)])
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
    # The ADM models (reduced flag sets): ours fp32/bf16 and guided-diffusion's PyTorch fp32, same weights.
    for task in ("adm64 network", "adm64 sample", "adm256 network", "adm256 sample"):
        assert [(r["implementation"], r["precision"]) for r in by_task[task]] == [
            ("ours", "fp32"), ("ours", "bf16"), ("torch", "fp32")], task
        diffs = {r["implementation"] + r["precision"]: float(r["rel. diff vs torch fp32"]) for r in by_task[task]}
        assert diffs["oursfp32"] < 1e-3 and diffs["torchfp32"] == 0 and 0 < diffs["oursbf16"] < 0.5, (task, diffs)
        assert all("img/s" in r["throughput"] for r in by_task[task])
    assert {r["S"] for r in by_task["adm64 sample"]} == {"2"}


def test_cells_run_headline_first_then_cheapest_first():
    cells = bench_gpu.plan_cells([256, 1024], [10, 20, 50, 100])
    assert cells[0] == (1024, 20) and len(set(cells)) == 8
    costs = [batch * steps for batch, steps in cells[1:]]
    assert costs == sorted(costs)


def test_budget_skips_what_does_not_fit_with_a_note(tmp_path):
    bench_gpu.main(["--cpu-smoke", "--steps", "2,3", "--budget-s", "0.001", "--skip", "train,memory",
                    "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())["rows"]
    measured = [r for r in rows if r["task"] == "sample" and r.get("seconds")]
    assert {(r["batch"], r["steps"]) for r in measured} == {(2, 2)} and len(measured) == 5  # calibration cell
    skipped = [(r["task"], r.get("steps")) for r in rows if "skipped (budget" in str(r.get("throughput"))]
    assert skipped == [("sample", 3), ("measured run", 2), ("adm64 network", None), ("adm256 network", None)]
    assert "skipped (budget" in (tmp_path / "bench_gpu.md").read_text()


# --- The offline device entry point (benchmarks/gpu_offline.sh), simulated on the CPU --------------
#
# The accelerator machine has no network, its own python3 with jax/torch/... (DEVICE_PREINSTALLED)
# and gets the rest as carried wheels. Here we rebuild that situation without any download:
# - a "device" python: a fresh venv whose site-packages holds symlinks to this environment's
#   installed distributions that the device also has, and nothing else (so diffusers, ml_collections,
#   grain, ... are not importable from it), plus a sitecustomize that refuses and logs every
#   internet-socket connection and name lookup;
# - the wheel folder: what `prepare_device_wheels --from-installed` re-packs from this environment
#   (the same resolution the real, downloading run does, minus the network);
# - no package index: PIP_INDEX_URL points at a closed local port.
# The entry point must install the wheels, pass its preflight and run the CPU smoke benchmark; with a
# wheel missing it must stop in its preflight with one line.

NETGUARD = '''
import os, socket

_log = os.environ.get("NETGUARD_LOG")


def _refuse(what):
    if _log:
        with open(_log, "a") as f:
            f.write(what + "\\n")
    raise OSError("network access refused in the offline test: " + what)


_connect = socket.socket.connect


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(f"connect {address}")
    return _connect(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    _refuse(f"getaddrinfo {host}")


socket.socket.connect = _guarded_connect
socket.getaddrinfo = _guarded_getaddrinfo
'''


def _device_python(root: Path) -> Path:
    """A python whose packages are this environment's ones that the device also has, with what they
    require here (symlinked), and nothing else."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    (site,) = root.glob("lib/python*/site-packages")
    here = Path(sysconfig.get_paths()["purelib"])
    names, queue = set(), list(prepare_device_wheels.DEVICE_PREINSTALLED)
    while queue:  # the device's packages come with their requirements met
        name = canonicalize_name(queue.pop())
        requires = prepare_device_wheels.installed_requires(name)
        if name in names or requires is None:
            continue
        names.add(name)
        queue += [r.name for r in prepare_device_wheels.active_requirements(requires)]
    for name in names:
        dist = importlib.metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source, link = Path(dist.locate_file(top)), site / top
            if source.parent == here and source.exists() and not link.exists():
                link.symlink_to(source)
    (site / "sitecustomize.py").write_text(NETGUARD)
    return root / "bin" / "python"


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """(device python, wheel folder) for the offline entry point."""
    root = tmp_path_factory.mktemp("device")
    python = _device_python(root / "venv")
    wheels = root / "wheels"
    assert prepare_device_wheels.main(["--from-installed", "--dest", str(wheels)]) == 0
    return python, wheels


def _run_offline(python: Path, wheels: Path, tmp_path: Path, *bench_args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "OUT"))}
    env.update(PYTHON=str(python), PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2",
               NETGUARD_LOG=str(tmp_path / "network.log"), JAX_PLATFORMS="cpu")
    command = ["bash", str(REPO / "benchmarks" / "gpu_offline.sh"), "--wheels", str(wheels),
               "--site", str(tmp_path / "site"), "--cpu-smoke", "--skip", "train,memory",
               "--out", str(tmp_path / "out"), *bench_args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_device_python_lacks_what_the_wheels_carry(device):
    python, wheels = device
    carried = {canonicalize_name(parse_wheel_filename(p.name)[0]) for p in wheels.glob("*.whl")}
    assert {"diffusers", "ml-collections", "guided-diffusion-sdk", "blobfile"} <= carried
    assert not carried & prepare_device_wheels.DEVICE_PREINSTALLED  # one version each, nothing the device has
    for name in ("diffusers", "ml_collections", "guided_diffusion"):
        probe = subprocess.run([str(python), "-c", f"import {name}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"the simulated device python imports {name} without the wheels"
    # Every requirement of a carried wheel is either carried or on the device.
    for path in wheels.glob("*.whl"):
        for requirement in prepare_device_wheels.active_requirements(prepare_device_wheels.wheel_requires(path)):
            name = canonicalize_name(requirement.name)
            assert name in carried | prepare_device_wheels.DEVICE_PREINSTALLED, (path.name, str(requirement))


def test_offline_entry_point_installs_the_wheels_and_runs_the_smoke_benchmark(device, tmp_path):
    python, wheels = device
    result = _run_offline(python, wheels, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert not (tmp_path / "network.log").exists(), (tmp_path / "network.log").read_text()
    assert "device_check: ok: python" in result.stdout and "jax " in result.stdout
    assert (tmp_path / "site" / "diffusers").is_dir() and (tmp_path / "site" / "guided_diffusion").is_dir()
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"bench_gpu.md", "bench_gpu.json", "bench_gpu.log"}
    report = json.loads((out / "bench_gpu.json").read_text())
    tasks = [row["task"] for row in report["rows"]]
    assert tasks.count("sample") == 5 and tasks.count("measured run") == 1 and "train" not in tasks
    assert tasks.count("adm64 sample") == 3 and tasks.count("adm256 network") == 3  # guided-diffusion from the wheels
    assert "diffusers 0.42.1" in report["versions"] and report["budget_s"] == 450
    assert "| sample | ours | fp32 | 2 | 2 |" in (out / "bench_gpu.md").read_text()


@pytest.mark.parametrize("missing", ["diffusers", "lazy_importer", "blobfile"])
def test_offline_entry_point_stops_in_one_line_when_a_wheel_is_missing(device, tmp_path, missing):
    python, wheels = device
    partial = tmp_path / "wheels"
    partial.mkdir()
    for path in wheels.glob("*.whl"):
        if not path.name.startswith(missing + "-"):
            shutil.copy(path, partial)
    assert len(list(partial.glob("*.whl"))) == len(list(wheels.glob("*.whl"))) - 1
    result = _run_offline(python, partial, tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("device_check: ") and missing.replace("_", "-") in last.replace("_", "-"), last
    assert not (tmp_path / "out" / "bench_gpu.md").exists()  # stopped before the benchmark


def test_prepare_refuses_when_tree_and_wheels_exceed_the_limit(tmp_path):
    with pytest.raises(prepare_device_wheels.PrepareError, match="exceed the 0.5 MiB"):
        prepare_device_wheels.prepare(tmp_path, from_installed=True, limit_mib=0.5, roots=("ml-collections",))


def test_preflight_stops_on_a_missing_requirement_and_warns_on_a_version(tmp_path):
    info = tmp_path / "carried-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: carried\nVersion: 1.0\n"
                                   "Requires-Dist: numpy<1\nRequires-Dist: surely-not-installed-here\n"
                                   "Requires-Dist: absent-on-this-os; sys_platform == 'nonexistent'\n")
    problems = device_check.unmet_requirements(tmp_path)
    assert sorted(problems) == [
        (False, f"carried 1.0 needs numpy<1, but numpy {importlib.metadata.version('numpy')} is installed"),
        (True, "carried 1.0 needs surely-not-installed-here, which is not installed")]
    with pytest.raises(device_check.CheckError, match="surely-not-installed-here, which is not installed"):
        device_check.check(tmp_path, "cpu")
