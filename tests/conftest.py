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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run workdir of ``configs/tiny.py`` (8x8x1 digits) with random params (no training), exported
    as a step-0 checkpoint: what ``sample.py`` / ``evaluate.py`` tests read."""
    import jax

    import configs.tiny
    from ddim_jax.checkpointing import export_workdir
    from ddim_jax.models import abstract_params, create_model
    from ddim_jax.train_state import image_shape

    config = configs.tiny.get_config()
    shapes = abstract_params(create_model(config), image_shape(config))
    rng = np.random.default_rng(0)

    def random_leaf(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        name = path[-1].key
        if name == "kernel":
            return noise / np.sqrt(np.prod(leaf.shape[:-1]))
        return (1.0 if name == "scale" else 0.0) + 0.1 * noise

    params = jax.tree_util.tree_map_with_path(random_leaf, shapes)
    path = str(tmp_path_factory.mktemp("tiny_run"))
    export_workdir(path, config, params)
    return path


def pytest_configure(config):
    # diffusers imports torchvision whenever it is installed; make that import work on the CPU torch.
    from benchmarks.torch_reference import import_torchvision

    import_torchvision()
