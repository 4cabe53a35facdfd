"""The main job runs on ``pip install -e .`` alone: PyTorch and its kin are test-only extras.

``train.py``, ``sample.py`` and ``evaluate.py`` (digits metric) run here in subprocesses in which
importing torch, torchvision, diffusers or pytorch_fid fails as it does where they are not installed;
a module on the main path that imports one of them makes its program fail.
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEV_ONLY = ("torch", "torchvision", "diffusers", "pytorch_fid")

# Runs the script named in argv[1] (its arguments follow) with the dev-only packages made absent.
RUN_WITHOUT_DEV_PACKAGES = f"""
import importlib.abc, runpy, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {DEV_ONLY!r}:
            print(f"imported a dev-only package: {{name}}", file=sys.stderr)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_without_dev_packages(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT_DEV_PACKAGES, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script, args", [
    ("train.py", ["--config", "configs/tiny.py", "--workdir", "{tmp}/run"]),
    ("sample.py", ["--workdir", "{run}", "--steps", "2", "--num", "2", "--out", "{tmp}/x.png", "--noprogress"]),
    ("evaluate.py", ["--workdir", "{run}", "--steps", "2", "--num", "8", "--metric", "digits", "--out", "{tmp}/eval",
                     "--noprogress"]),
])
def test_the_main_job_runs_without_torch_and_diffusers(script, args, tiny_run, tmp_path, subprocess_env):
    args = [arg.format(tmp=tmp_path, run=tiny_run) for arg in args]
    result = _run_without_dev_packages(subprocess_env(), script, *args)
    assert "imported a dev-only package" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
