"""The offline GPU benchmark's preflight: before any time is spent, check what it will run with.

    python -m benchmarks.device_check --site /tmp/site [--backend gpu|cpu]

1. Every distribution installed from the carried wheels (``--site``) has its requirements installed
   here (markers evaluated for this interpreter; extras followed one level): a missing one stops the
   run; one at a version outside the declared range is printed as a warning (the imports decide).
2. The modules the benchmark imports import: diffusers, ml_collections, guided_diffusion (its
   network and diffusion modules), ddim_jax, benchmarks.bench_gpu (and through them jax, flax, torch).
3. jax's default backend is ``--backend`` and, for ``gpu``, torch sees CUDA.

Prints one line of versions (noting where they differ from pyproject.toml's pins, e.g. the device's
jax 0.11.2 against the pinned 0.10.2: the benchmark runs with what is there) and exits 0, or prints
one line naming the first problem and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical
from packaging.version import Version

from benchmarks.prepare_device_wheels import active_requirements, pinned_versions
from benchmarks.torch_reference import import_torchvision

MODULES = ("diffusers", "ml_collections", "guided_diffusion.script_util", "ddim_jax", "benchmarks.bench_gpu")
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "diffusers", "ml-collections",
            "guided-diffusion-sdk")


class CheckError(Exception):
    """A one-line reason the benchmark would not run as intended."""


def _default_markers() -> dict[str, str]:
    return dict(default_environment())


def unmet_requirements(site: Path) -> list[tuple[bool, str]]:
    """(missing, message) for each requirement of the distributions in ``site`` that is not met here:
    ``missing`` when no such distribution is installed, else its version is outside the specifier."""
    problems: list[tuple[bool, str]] = []
    markers = _default_markers()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        for requirement in active_requirements(dist.requires or [], (), markers):
            problems += _check(requirement, f"{dist.metadata['Name']} {dist.version}", markers)
    return problems


def _check(requirement: Requirement, who: str, markers: dict[str, str]) -> list[tuple[bool, str]]:
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return [(True, f"{who} needs {requirement}, which is not installed")]
    if not requirement.specifier.contains(version, prereleases=True):
        return [(False, f"{who} needs {requirement}, but {requirement.name} {version} is installed")]
    if not requirement.extras:
        return []
    base = {str(r) for r in active_requirements(importlib.metadata.requires(requirement.name) or [], (), markers)}
    extra = active_requirements(importlib.metadata.requires(requirement.name) or [], requirement.extras, markers)
    problems: list[tuple[bool, str]] = []
    for inner in extra:
        if str(inner) not in base and canonical(inner.name) != canonical(requirement.name):
            problems += _check(Requirement(str(inner).split(";")[0]), f"{who} (via {requirement})", markers)
    return problems


def versions_line() -> str:
    """``python 3.12.3; jax 0.11.2 (pinned 0.10.2); ...``: what the benchmark runs with."""
    pins = pinned_versions()
    parts = [f"python {platform.python_version()}"]
    for name in VERSIONS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        pin = pins.get(canonical(name))
        differs = pin and version != "absent" and Version(version).public != Version(pin).public
        parts.append(f"{name} {version}" + (f" (pinned {pin})" if differs else ""))
    return "; ".join(parts)


def check(site: Path | None, backend: str) -> str:
    """Runs the checks; returns the versions-and-devices line or raises :class:`CheckError`."""
    if site is not None:
        problems = unmet_requirements(site)
        missing = [message for is_missing, message in problems if is_missing]
        if missing:
            raise CheckError(missing[0] + " (add its wheel: python -m benchmarks.prepare_device_wheels)")
        for _, message in problems:  # another version than declared: the imports below decide
            print(f"device_check: warning: {message}", file=sys.stderr, flush=True)
    import_torchvision()  # diffusers imports torchvision when it is installed: make that import work
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as error:  # any import failure, reported in one line
            last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
            raise CheckError(f"import {module} failed: {type(error).__name__}: {last}") from error
    import jax
    import torch

    if jax.default_backend() != backend:
        raise CheckError(f"jax's backend is {jax.default_backend()} ({jax.devices()}), expected {backend}")
    cuda = torch.cuda.is_available()
    if backend == "gpu" and not cuda:
        raise CheckError(f"torch {torch.__version__} sees no CUDA device")
    torch_device = torch.cuda.get_device_name() if cuda else "cpu"
    return f"{versions_line()}; jax devices {jax.devices()}; torch device {torch_device}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, default=None, help="folder the carried wheels were installed into")
    parser.add_argument("--backend", default="gpu", choices=("gpu", "cpu"), help="the jax backend to expect")
    args = parser.parse_args(argv)
    try:
        print(f"device_check: ok: {check(args.site, args.backend)}", flush=True)
    except CheckError as error:
        print(f"device_check: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
