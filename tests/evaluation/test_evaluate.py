"""evaluate.py and the sampling it rests on: the same images for a seed whatever the batch size, the
device count or the process count; the table, its resume, and one-line errors.

All on ``configs/tiny.py`` with random params (the ``tiny_run`` fixture), so the digits metric runs
offline; the Inception metrics are covered by tests/metrics/test_metrics.py.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ddim_jax import evaluation
from ddim_jax.generation import loading, modes
from ddim_jax.generation.sampler_spec import SampleError, SamplerSpec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = dict(steps=3, skip="uniform", clip_x0=False)


def _samples(workdir, tmp_path, name, *, batch_size, eta, num=10):
    loaded = loading.load_run(workdir)
    return modes.run_samples(loaded, SamplerSpec(eta=eta, **SPEC), num=num, batch_size=batch_size, seed=3,
                                    out=str(tmp_path / f"{name}.npz"), progress=False)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_same_images_whatever_the_batch_size(tiny_run, tmp_path, eta):
    """Image i's x_T and per-step noise come from (seed, i) alone."""
    small = _samples(tiny_run, tmp_path, "b4", batch_size=4, eta=eta)
    large = _samples(tiny_run, tmp_path, "b8", batch_size=8, eta=eta)
    assert small.shape == (10, 8, 8, 1)
    np.testing.assert_array_equal(small, large)
    first_six = _samples(tiny_run, tmp_path, "n6", batch_size=8, eta=eta, num=6)
    np.testing.assert_array_equal(first_six, small[:6])          # a prefix of a larger run
    if eta > 0:   # the noise matters: another seed's noise with the same x_T differs
        deterministic = _samples(tiny_run, tmp_path, "eta0", batch_size=4, eta=0.0)
        assert not np.array_equal(deterministic, small)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sample_cli(workdir, out, *extra, env):
    return [sys.executable, os.path.join(REPO, "sample.py"), f"--workdir={workdir}", "--steps=3", "--eta=1",
            "--skip=uniform", "--no-clip", "--num=10", "--batch-size=4", "--seed=3", "--noprogress",
            f"--out={out}", *extra]


def test_same_images_on_two_devices_and_two_processes(tiny_run, tmp_path, subprocess_env):
    """eta = 1 (noise at every step): 1 process x 1 device == 1 x 2 devices == 2 processes x 1 device."""
    reference = _samples(tiny_run, tmp_path, "ref", batch_size=4, eta=1.0)
    two_devices = tmp_path / "devices.npz"
    result = subprocess.run(_sample_cli(tiny_run, two_devices, env=None),
                            env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 device(s) x 1 process(es)" in result.stdout
    np.testing.assert_array_equal(np.load(two_devices)["images"], reference)

    port = _free_port()
    two_processes = tmp_path / "processes.npz"
    workers = [subprocess.Popen(_sample_cli(tiny_run, two_processes, f"--coordinator_address=127.0.0.1:{port}",
                                            "--num_processes=2", f"--process_id={index}", env=None),
                                env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
               for index in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
    assert "x 2 process(es)" in outputs[0][0]
    np.testing.assert_array_equal(np.load(two_processes)["images"], reference)


def _evaluate(*args, env):
    return subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_evaluate_end_to_end_table_and_resume(tiny_run, tmp_path, subprocess_env):
    out = tmp_path / "eval"
    args = [f"--workdir={tiny_run}", "--steps=2,4", "--eta=0,1", "--num=12", "--batch_size=8", f"--out={out}",
            "--noprogress"]
    first = _evaluate(*args, env=subprocess_env())
    assert first.returncode == 0, first.stderr[-3000:]
    records = json.loads((out / "table.json").read_text())
    assert len(records) == 4
    assert {(r["steps"], r["eta"]) for r in records} == {(2, 0.0), (4, 0.0), (2, 1.0), (4, 1.0)}
    for record in records:
        assert record["num"] == 12 and record["seed"] == 0 and record["skip"] == "uniform"
        assert record["solver"] == "ddim" and record["clip_x0"] is False       # the paper's defaults
        assert record["fd_digits"] > 0 and 0 < record["confidence"] <= 1 and record["images_per_second"] > 0
        assert np.load(record["samples"])["images"].shape == (12, 8, 8, 1)
    table = (out / "table.md").read_text()
    assert "| solver | eta | S = 2 | S = 4 |" in table and "| ddim | 1 |" in table
    assert (out / "fd_digits.png").stat().st_size > 0
    again = _evaluate(*args, "--steps=2,4,6", env=subprocess_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == 4
    assert len(json.loads((out / "table.json").read_text())) == 6


@pytest.mark.parametrize("args, message", [
    (["--metric=fid"], "needs --ref_stats"),
    (["--metric=is", "--num=10"], "--inception FILE.safetensors"),
    (["--metric=is", "--num=10", "--inception=/nonexistent.safetensors"], "pt_inception-2015-12-05-6726825d.pth"),
    (["--metric=bogus"], "unknown --metric bogus"),
    (["--steps=2,x"], "--steps must be comma-separated integers"),
    (["--solver=dpmpp_2m", "--eta=1"], "deterministic"),
    (["--steps=5000"], "above the model's number of training timesteps"),
    (["--metric=fid"], "--inception"),                        # every missing input named, not only the first
    (["--num=0"], "--num must be at least"),                  # not silently the default
    (["--batch_size=0"], "--batch_size must be at least 1"),
    (["--sigma_hat", "--solver=unipc"], "--sigma_hat"),        # not silently ignored
    (["--seed=99999999999"], "32 bits"),                      # would give the images of seed 1215752191
    (["--seeds=0,-1"], "32 bits"),
    (["--metric=is", "--num=5"], "at least 10"),
    (["--classifier_scale=1"], "--classifier_scale needs --classifier DIR"),
    (["--classifier=/nonexistent"], "cannot load classifier '/nonexistent'"),
])
def test_evaluate_user_errors_are_one_line(tiny_run, tmp_path, subprocess_env, args, message):
    result = _evaluate(f"--workdir={tiny_run}", f"--out={tmp_path}", "--num=4", *args, env=subprocess_env())
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "table.json").exists()


def test_markdown_table_is_laid_out_like_table_1():
    records = [dict(skip="quad", solver="ddim", eta=eta, sigma_hat=False, steps=steps, num=100, seed=seed,
                    fid=10.0 * eta + 100.0 / steps + seed)
               for eta in (0.0, 1.0) for steps in (10, 20) for seed in (0, 1)]
    table = evaluation.markdown_table(records, "fid")
    lines = table.splitlines()
    assert lines[2] == "| solver | eta | S = 10 | S = 20 |"
    assert lines[4] == "| ddim | 0 | 10.5 ± 0.71 | 5.5 ± 0.71 |"    # mean ± std over the two seeds
    assert lines[5] == "| ddim | 1 | 20.5 ± 0.71 | 15.5 ± 0.71 |"


def test_prepare_metrics_refuses_reference_files_it_cannot_use(tmp_path):
    """A reference of another dimension than Inception's 2048 features, or features of another
    dimension than its mu, fails before sampling (not after it)."""
    small = tmp_path / "small.npz"
    np.savez(small, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(SampleError, match="2048"):
        evaluation.prepare_metrics(["fid"], image_shape=(8, 8, 1), inception_weights=str(tmp_path / "w.safetensors"),
                                   ref_stats=str(small))
    mixed = tmp_path / "mixed.npz"
    np.savez(mixed, mu=np.zeros(2048), sigma=np.eye(2048), features=np.zeros((20, 64), np.float32))
    with pytest.raises(SampleError, match="features"):
        evaluation.prepare_metrics(["kid"], image_shape=(8, 8, 1), inception_weights=str(tmp_path / "w.safetensors"),
                                   ref_stats=str(mixed))


def test_non_finite_guidance_is_refused():
    with pytest.raises(SampleError, match="guidance"):
        evaluation.make_cells(steps=[2], etas=[0], skips=["uniform"], solvers=["ddim"], seeds=[0], sigma_hat=False,
                              clip_x0=False, num_timesteps=1000, guidances=[float("nan")])


def test_prepare_metrics_checks_before_sampling(tmp_path):
    with pytest.raises(SampleError, match="8x8x1 digits"):
        evaluation.prepare_metrics(["digits"], image_shape=(32, 32, 3), inception_weights=None, ref_stats=None)
    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(SampleError, match="no 'features'"):
        evaluation.prepare_metrics(["kid"], image_shape=(8, 8, 1), inception_weights="w.safetensors",
                                   ref_stats=str(stats))
    cells = evaluation.make_cells(steps=[10, 20], etas=[0, 1], skips=["uniform"], solvers=["ddim", "unipc"],
                                  seeds=[0, 1], sigma_hat=True, clip_x0=False, num_timesteps=1000)
    # ddim: eta 0, eta 1, sigma-hat; unipc: eta 0 only -> 4 variants x 2 S x 2 seeds
    assert len(cells) == 16 and len({cell.name for cell in cells}) == 16
    guided = evaluation.make_cells(steps=[20], etas=[0], skips=["uniform"], solvers=["ddim"], seeds=[0],
                                   sigma_hat=False, clip_x0=False, num_timesteps=1000, guidances=[0, 1, 4])
    assert [cell.guidance for cell in guided] == [0.0, 1.0, 4.0]
    records = [dict(skip="uniform", solver="ddim", eta=0.0, sigma_hat=False, steps=20, num=10, seed=0,
                    guidance=scale, accuracy=0.1 * scale) for scale in (0.0, 1.0, 4.0)]
    table = evaluation.markdown_table(records, "accuracy").splitlines()
    assert table[2] == "| solver | eta | guidance | S = 20 |"
    assert table[4:7] == ["| ddim | 0 | 0 | 0 |", "| ddim | 0 | 1 | 0.1 |", "| ddim | 0 | 4 | 0.4 |"]


def test_guidance_axis_reports_accuracy_for_a_conditional_model(tmp_path):
    """A class-conditional run: one cell per guidance scale, labels i mod K, digits accuracy recorded."""
    import jax

    import configs.tiny_cond
    from ddim_jax.models import abstract_params, create_model
    from ddim_jax.training.checkpoints import export_workdir
    from ddim_jax.training.train_state import image_shape

    config = configs.tiny_cond.get_config()
    shapes = abstract_params(create_model(config), image_shape(config))
    params = jax.tree.map(lambda leaf: np.full(leaf.shape, 0.02, np.float32), shapes)
    export_workdir(str(tmp_path / "run"), config, params)
    loaded = loading.load_run(str(tmp_path / "run"))
    setup = evaluation.prepare_metrics(["digits"], image_shape=loaded.image_shape, inception_weights=None,
                                       ref_stats=None)
    cells = evaluation.make_cells(steps=[2], etas=[0], skips=["uniform"], solvers=["ddim"], seeds=[0],
                                  sigma_hat=False, clip_x0=False, num_timesteps=loaded.num_timesteps,
                                  guidances=[0, 2])
    records = [evaluation.evaluate_cell(loaded, cell, setup, num=10, batch_size=10, out_dir=str(tmp_path / "eval"),
                                        progress=False) for cell in cells]
    assert [record["guidance"] for record in records] == [0.0, 2.0]
    for record in records:
        assert 0.0 <= record["accuracy"] <= 1.0 and record["fd_digits"] > 0
        np.testing.assert_array_equal(np.load(record["samples"])["labels"], np.arange(10) % 10)
