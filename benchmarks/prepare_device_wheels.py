"""Prepares the wheel folder that the offline GPU benchmark (``benchmarks/gpu_offline.sh``) carries.

    python -m benchmarks.prepare_device_wheels                 # downloads into .whl (needs the network)
    python -m benchmarks.prepare_device_wheels --dest DIR --limit-mib 64
    python -m benchmarks.prepare_device_wheels --from-installed --dest DIR   # offline, for this Python

The accelerator machine (one H200, Python 3.12, manylinux x86-64, no network) has its own jax, torch,
flax, ... (``DEVICE_PREINSTALLED``) but not what the benchmark also imports: diffusers (the PyTorch
side), ml-collections (the configs; grain and tensorflow-datasets are not needed: the training
step's modules do not import the input pipeline) and guided-diffusion-sdk with blobfile, its declared
dependency (the ADM rows' PyTorch side; blobfile brings pycryptodomex). This script starts from
those (``ROOTS``, at the versions pinned in pyproject.toml), reads each wheel's ``Requires-Dist``
(markers evaluated for CPython 3.12 on Linux x86-64, extras followed) and adds every requirement the
device does not have, one version per package: a pin from pyproject.toml, else the version installed
here if it fits, else pip's newest match. It prints the folder's size and exits non-zero (one line)
when the working tree plus the wheels exceed the limit of one device call.

``--from-installed`` builds the same set offline by re-packing the distributions installed in this
environment, tagged for this interpreter (the tests use it; such wheels only suit this Python).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ".whl"
LIMIT_MIB = 64.0  # the working tree plus carried paths of one device call

# What the benchmark imports that the device lacks; versions from pyproject.toml.
ROOTS = ("diffusers", "ml-collections", "guided-diffusion-sdk", "blobfile")

# The device's preinstalled Python packages (the device tool's KINDS.md, as read on 2026-11-17).
DEVICE_PREINSTALLED = frozenset(canonicalize_name(name) for name in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())

# PEP 508 marker environment of the device's python3 (CPython 3.12.3, Linux x86-64).
DEVICE_MARKERS = {
    "implementation_name": "cpython", "implementation_version": "3.12.3", "os_name": "posix",
    "platform_machine": "x86_64", "platform_python_implementation": "CPython", "platform_release": "",
    "platform_system": "Linux", "platform_version": "", "python_full_version": "3.12.3",
    "python_version": "3.12", "sys_platform": "linux",
}
# pip download's target (the device tool's README): CPython 3.12, manylinux x86-64.
PIP_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                 "manylinux2014_x86_64", "manylinux1_x86_64")


class PrepareError(Exception):
    """A one-line reason the wheel folder cannot be prepared."""


def pinned_versions(pyproject: Path = REPO_ROOT / "pyproject.toml") -> dict[str, str]:
    """{canonical name: version} of every ``"name==version"`` (extras allowed) in pyproject.toml."""
    text = pyproject.read_text()
    pins = re.findall(r'"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^";,\s]+)', text)
    return {canonicalize_name(name): version for name, version in pins}


def active_requirements(requires: Iterable[str], extras: Iterable[str] = (),
                        markers: dict[str, str] | None = None) -> list[Requirement]:
    """The ``Requires-Dist`` entries that apply for ``markers`` (default: this interpreter) with the
    given extras requested; ``extra == ...`` lines only for those extras."""
    active = []
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is None:
            active.append(requirement)
            continue
        for extra in ("", *extras):
            environment = dict(markers or {}, extra=extra)
            if requirement.marker.evaluate(environment):
                active.append(requirement)
                break
    return active


def wheel_requires(path: Path) -> list[str]:
    """``Requires-Dist`` lines of a wheel file."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    return metadata.get_all("Requires-Dist") or []


def installed_requires(name: str) -> list[str] | None:
    """``Requires-Dist`` of a distribution installed here, or None when it is not installed."""
    try:
        return importlib.metadata.distribution(name).requires or []
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack_installed(name: str, dest: Path) -> Path:
    """A wheel of the distribution ``name`` as installed here (sources, data and metadata; no
    ``__pycache__``, no scripts outside site-packages), tagged for this interpreter when it holds
    compiled extensions, else ``py3-none-any``."""
    dist = importlib.metadata.distribution(name)
    if dist.files is None:
        raise PrepareError(f"{name} has no RECORD here: cannot re-pack it")
    files = [f for f in dist.files
             if not str(f).startswith("..") and "__pycache__" not in f.parts and not str(f).endswith(".pyc")]
    info_dir = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    compiled = any(str(f).endswith((".so", ".pyd")) for f in files)
    tag = str(next(iter(sys_tags()))) if compiled else "py3-none-any"
    skip = {f"{info_dir}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL")}
    path = dest / f"{info_dir[: -len('.dist-info')]}-{tag}.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        def write(arcname: str, data: bytes) -> None:
            archive.writestr(arcname, data)
            record.append((arcname, _record_hash(data), str(len(data))))

        for f in files:
            arcname = "/".join(f.parts)
            source = Path(dist.locate_file(f))
            if arcname in skip or not source.is_file():
                continue
            write(arcname, source.read_bytes())
        write(f"{info_dir}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: ddim-jax repack\n"
                                    f"Root-Is-Purelib: {'false' if compiled else 'true'}\nTag: {tag}\n").encode())
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(record + [(f"{info_dir}/RECORD", "", "")])
        archive.writestr(f"{info_dir}/RECORD", out.getvalue())
    return path


def pip_download(name: str, version: str | None, spec: str, dest: Path) -> Path:
    """Downloads one wheel for the device (no dependencies) into ``dest``; returns its path."""
    with tempfile.TemporaryDirectory() as staging:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", DEVICE_MARKERS["python_version"], "--implementation", "cp",
                   *[arg for platform in PIP_PLATFORMS for arg in ("--platform", platform)],
                   "-d", staging, f"{name}=={version}" if version else f"{name}{spec}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise PrepareError(f"pip download {name} failed: {last}")
        (wheel,) = Path(staging).glob("*.whl")
        target = dest / wheel.name
        os.replace(wheel, target)
        return target


def resolve(roots: Iterable[str], fetch: Callable[[str, str | None, str], Path], pins: dict[str, str],
            preinstalled: frozenset[str] = DEVICE_PREINSTALLED,
            markers: dict[str, str] | None = DEVICE_MARKERS) -> dict[str, Path]:
    """{canonical name: wheel} of ``roots`` and every requirement of theirs not in ``preinstalled``.

    ``fetch(name, version or None, specifier)`` returns a wheel. Extras requested of a preinstalled
    package are followed through its metadata installed here, when it is installed here.
    """
    queue = [Requirement(canonicalize_name(root)) for root in roots]
    wheels: dict[str, Path] = {}
    seen_extras: set[tuple[str, str]] = set()
    while queue:
        requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in preinstalled:
            new = [extra for extra in requirement.extras if (name, extra) not in seen_extras]
            seen_extras.update((name, extra) for extra in new)
            requires = installed_requires(name) if new else None
            if requires:  # only what the extras add to the (preinstalled) base requirements
                base = set(map(str, active_requirements(requires, (), markers)))
                queue += [r for r in active_requirements(requires, new, markers) if str(r) not in base]
            continue
        if name in wheels:
            version = parse_wheel_filename(wheels[name].name)[1]
            if not requirement.specifier.contains(version, prereleases=True):
                raise PrepareError(f"{name} {version} does not satisfy {requirement} (one version per package)")
            continue
        version = pins.get(name)
        here = installed_version(name)
        if version is None and here is not None and requirement.specifier.contains(here, prereleases=True):
            version = here
        wheels[name] = fetch(name, version, str(requirement.specifier))
        queue += active_requirements(wheel_requires(wheels[name]), requirement.extras, markers)
    return wheels


def tree_bytes(repo: Path = REPO_ROOT, dest: Path | None = None) -> int:
    """Bytes of what a device call sends besides carried paths: tracked and untracked-not-ignored files
    (without git: every file but .git, virtual environments, caches and ``dest``)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                                capture_output=True, check=True).stdout.decode().split("\0")
        paths = [repo / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache"}
        paths = [p for p in repo.rglob("*") if not skip & set(p.relative_to(repo).parts)
                 and (dest is None or dest.resolve() not in p.resolve().parents)]
    return sum(path.stat().st_size for path in paths if path.is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare(dest: Path, from_installed: bool = False, limit_mib: float = LIMIT_MIB,
            roots: Iterable[str] = ROOTS) -> dict[str, Path]:
    """Fills ``dest`` with the wheels (removing any other wheel there), prints sizes, raises
    :class:`PrepareError` when the tree plus the wheels exceed ``limit_mib``."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = pinned_versions()
    existing = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in dest.glob("*.whl")}

    def fetch(name: str, version: str | None, spec: str) -> Path:
        old = existing.get(name)
        if old is not None and not from_installed and version == str(parse_wheel_filename(old.name)[1]):
            return old  # already downloaded
        if from_installed:
            here = installed_version(name)
            if here is None:
                raise PrepareError(f"{name} is not installed here: cannot re-pack it (drop --from-installed)")
            if version is not None and here != version:
                raise PrepareError(f"{name} {here} is installed here, but {version} is pinned")
            return repack_installed(name, dest)
        return pip_download(name, version, spec, dest)

    wheels = resolve(roots, fetch, pins, markers=None if from_installed else DEVICE_MARKERS)
    keep = {path.resolve() for path in wheels.values()}
    for path in dest.glob("*.whl"):
        if path.resolve() not in keep:
            path.unlink()  # another version, or no longer needed: one version per package
    for _, path in sorted(wheels.items()):
        print(f"  {path.name}  {path.stat().st_size / 2**20:.2f} MiB")
    wheel_mib, tree_mib = folder_bytes(dest) / 2**20, tree_bytes(dest=dest) / 2**20
    print(f"{dest}: {len(wheels)} wheels, {wheel_mib:.1f} MiB; working tree {tree_mib:.1f} MiB; "
          f"together {wheel_mib + tree_mib:.1f} of {limit_mib:g} MiB")
    if wheel_mib + tree_mib > limit_mib:
        raise PrepareError(f"the working tree ({tree_mib:.1f} MiB) plus {dest} ({wheel_mib:.1f} MiB) exceed the "
                           f"{limit_mib:g} MiB a device call carries")
    return wheels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=DEFAULT_DEST, help="wheel folder (relative to the repository root)")
    parser.add_argument("--from-installed", action="store_true",
                        help="re-pack this environment's installed distributions instead of downloading")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="refuse above this tree + wheels size")
    args = parser.parse_args(argv)
    try:
        prepare(REPO_ROOT / args.dest, args.from_installed, args.limit_mib)
    except PrepareError as error:
        print(f"prepare_device_wheels: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
