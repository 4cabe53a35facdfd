"""Data parallelism: 2 simulated devices == 1 device; 2 real processes (jax.distributed) == 1 process.

JAX is already initialised with one CPU device in the pytest process, so both checks run in
subprocesses. This file is also the worker script of the first check:
``python tests/training/test_distributed.py devices`` (with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import configs.tiny  # noqa: E402  (after the path set-up, for the script mode below)


def devices_worker() -> None:
    """Three train steps of the tiny config on a 1-device mesh and on a 2-device mesh; prints JSON."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from ddim_jax.training import input_pipeline, objective

    assert jax.device_count() == 2, jax.devices()
    config = configs.tiny.get_config()
    dataset = input_pipeline.train_dataset(config)
    results = {}
    for count in (1, 2):
        mesh = Mesh(np.asarray(jax.devices()[:count]), ("data",))
        replicated = NamedSharding(mesh, PartitionSpec())
        data_sharding = NamedSharding(mesh, PartitionSpec("data"))
        state = objective.jitted_init(config, replicated)()
        step = objective.jitted_train_step(config, replicated, data_sharding)
        losses = []
        for index in range(3):
            batch = jax.device_put(dataset[index], data_sharding)
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        results[count] = {"losses": losses,
                          "shards": len(batch.addressable_shards),
                          "params": [np.asarray(leaf).ravel().tolist() for leaf in jax.tree.leaves(state.params)]}
    print("RESULT " + json.dumps(results))


def test_one_train_step_on_two_simulated_devices_equals_one_device(subprocess_env):
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "devices"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    results = json.loads(line[len("RESULT "):])
    one, two = results["1"], results["2"]
    assert one["shards"] == 1 and two["shards"] == 2  # the batch really was split over two devices
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert one["losses"][0] > 0.5  # a real loss, not a degenerate zero
    for a, b in zip(one["params"], two["params"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


OVERRIDES = ("--config.training.num_train_steps=4", "--config.training.log_every_steps=1",
             "--config.training.checkpoint_every_steps=4", "--config.training.num_grid_samples=0")


def train_command(workdir, *extra):
    return [sys.executable, os.path.join(REPO, "train.py"), "--config", "configs/tiny.py",
            "--workdir", str(workdir), *OVERRIDES, *extra]


def read_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.mark.slow  # two processes compile and join over gloo: ~40-60 s on 2 cores
def test_two_processes_joined_by_jax_distributed_match_one_process(tmp_path, subprocess_env):
    env = subprocess_env()
    single = subprocess.run(train_command(tmp_path / "single"), cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]

    address = f"127.0.0.1:{free_port()}"
    workers = [subprocess.Popen(train_command(tmp_path / "multi", f"--coordinator_address={address}",
                                              "--num_processes=2", f"--process_id={index}"),
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    assert "2 devices, 2 processes" in outputs[0][1]

    want, got = read_losses(tmp_path / "single"), read_losses(tmp_path / "multi")
    assert len(want) == len(got) == 4
    np.testing.assert_allclose(got, want, rtol=1e-5)

    from ddim_jax.training.checkpoints import load_for_sampling  # after the subprocesses: keeps this test light

    _, single_params, _ = load_for_sampling(str(tmp_path / "single"), use_ema=False)
    _, multi_params, step = load_for_sampling(str(tmp_path / "multi"), use_ema=False)
    assert step == 4
    import jax

    for a, b in zip(jax.tree.leaves(single_params), jax.tree.leaves(multi_params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def _workdir_with_a_corrupt_newest_step(path, random_tiny_params):
    """Checkpoints 2 and 4 of the tiny config (saved as training saves them, no compile); every EMA
    data file of step 4 has bytes flipped."""
    import jax.numpy as jnp

    from ddim_jax.training import checkpoints, train_state

    config = configs.tiny.get_config()
    manager = checkpoints.make_manager(str(path), keep=3, async_save=False)
    for step in (2, 4):
        state = train_state.state_from_params(config, random_tiny_params(seed=step))
        checkpoints.save_checkpoint(manager, state.replace(step=jnp.asarray(step, jnp.int32)), config)
    manager.close()
    ema = os.path.join(str(path), "checkpoints", "4", "ema_params")
    for folder, _, files in os.walk(ema):
        for name in files if os.path.basename(folder) == "d" else ():
            data = bytearray(open(os.path.join(folder, name), "rb").read())
            data[len(data) // 2:] = bytes(b ^ 0xFF for b in data[len(data) // 2:])
            open(os.path.join(folder, name), "wb").write(bytes(data))


def test_two_processes_fall_back_from_a_corrupt_step_together(tmp_path, subprocess_env, random_tiny_params):
    """Both processes of a jax.distributed run verify, skip step 4 for step 2 (one warning line
    each), process 0 alone moves step 4 aside, and both resume from step 2 (nothing to train: no
    compile)."""
    workdir = tmp_path / "run"
    _workdir_with_a_corrupt_newest_step(workdir, random_tiny_params)
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, os.path.join(REPO, "train.py"), "--config", "configs/tiny.py", "--workdir",
               str(workdir), "--config.training.num_train_steps=2", "--config.training.num_grid_samples=0",
               f"--coordinator_address={address}", "--num_processes=2"]
    workers = [subprocess.Popen(command + [f"--process_id={index}"], cwd=REPO, env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in range(2)]
    outputs = [worker.communicate(timeout=600)[1] for worker in workers]
    for worker, stderr in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
        warnings = [line for line in stderr.splitlines() if "checkpoint 4 is unusable" in line]
        assert len(warnings) == 1 and "using checkpoint 2" in warnings[0], stderr[-3000:]
        assert "Resumed from checkpoint 2" in stderr, stderr[-3000:]
    assert "moved the unusable checkpoint 4 aside" in outputs[0]
    assert "moved the unusable checkpoint 4 aside" not in outputs[1]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4.corrupt"]


if __name__ == "__main__":
    if sys.argv[1:] == ["devices"]:
        devices_worker()
    else:
        raise SystemExit(f"usage: {sys.argv[0]} devices")
