"""Test-wide setup: run JAX on the CPU, whatever the machine has; shared fixtures."""

import os

import numpy as np
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


def _random_tiny_params(seed=0):
    """Random params of configs/tiny.py's UNet drawn from its shapes (no compile), scaled so the
    network's outputs are moderate (not the near-zero output of a fresh init)."""
    import jax

    import configs.tiny
    from ddim_jax.models import abstract_params, create_model

    config = configs.tiny.get_config()
    shapes = abstract_params(create_model(config), (config.data.image_size,) * 2 + (config.data.channels,))
    rng = np.random.default_rng(seed)

    def random_leaf(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        name = path[-1].key
        if name == "kernel":
            return (noise / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
        return ((1.0 if name == "scale" else 0.0) + 0.1 * noise).astype(np.float32)

    return jax.tree_util.tree_map_with_path(random_leaf, shapes)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A step-0 workdir of configs/tiny.py with random params, shared by the whole session (read-only:
    tests that change a workdir use ``workdir``)."""
    import configs.tiny
    from ddim_jax.training.checkpoints import export_workdir

    path = str(tmp_path_factory.mktemp("tiny_run_shared"))
    export_workdir(path, configs.tiny.get_config(), _random_tiny_params())
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A step-0 workdir of configs/tiny.py with random params (``export_workdir``), once per module."""
    import configs.tiny
    from ddim_jax.training.checkpoints import export_workdir

    path = str(tmp_path_factory.mktemp("tiny_run"))
    export_workdir(path, configs.tiny.get_config(), _random_tiny_params())
    return path


@pytest.fixture(scope="session")
def random_tiny_params():
    """``random_tiny_params(seed=0)``: random NumPy params of configs/tiny.py's UNet (no compile)."""
    return _random_tiny_params
