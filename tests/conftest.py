"""Test-wide setup: run JAX on the CPU, whatever the machine has; shared fixtures."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
    """``subprocess_env(**extra)``: an environment for ``train.py`` / ``sample.py`` subprocesses on
    the CPU, with a persistent compilation cache shared by every subprocess of this session."""
    cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"

    def make(**extra: str) -> dict[str, str]:
        return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                    **extra)

    return make


def pytest_configure(config):
    # diffusers imports torchvision whenever it is installed; make that import work on the CPU torch.
    from benchmarks.torch_reference import import_torchvision

    import_torchvision()
