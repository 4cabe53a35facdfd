"""Checkpoints: export/load round trip, clear errors, partial saves ignored, SIGKILL-and-resume."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import configs.tiny
from ddim_jax.training import checkpoints, loop, train_state
from ddim_jax.training.checkpoints import CheckpointError, export_workdir, load_for_sampling

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




def random_params(config, seed=0):
    shapes = jax.eval_shape(lambda: train_state.create_train_state(config).params)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_workdir_and_load_for_sampling_round_trip(tmp_path):
    config = configs.tiny.get_config()
    params = random_params(config)
    export_workdir(str(tmp_path), config, params)
    for use_ema in (True, False):
        loaded_config, loaded, step = load_for_sampling(str(tmp_path), use_ema=use_ema)
        assert step == 0
        assert loaded_config.to_dict() == config.to_dict()
        assert_trees_equal(params, loaded)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        export_workdir(str(tmp_path), config, params)


def test_training_resumes_from_an_exported_workdir(tmp_path):
    config = configs.tiny.get_config()
    params = random_params(config, seed=1)
    for leaves in jax.tree.leaves(params):
        leaves *= 0.05  # keep the random network's outputs moderate
    export_workdir(str(tmp_path), config, params)
    config.training.num_train_steps = 2
    state = loop.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 2
    _, trained, step = load_for_sampling(str(tmp_path), use_ema=False)
    assert step == 2
    # Fine-tuned from the exported params: close to them (two Adam steps of at most ~lr), not re-initialised.
    for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(trained)):
        assert np.abs(np.asarray(after) - before).max() < 2.5 * config.optim.learning_rate
    assert any(not np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params)))


def test_export_refuses_params_that_do_not_fit_the_config(tmp_path):
    config = configs.tiny.get_config()
    params = random_params(config)
    params["conv_in"]["kernel"] = params["conv_in"]["kernel"][..., :4]
    expected = r"\['conv_in'\]\['kernel'\]: expected shape \(3, 3, 1, 8\), got \(3, 3, 1, 4\)"
    with pytest.raises(CheckpointError, match=expected):
        export_workdir(str(tmp_path), config, params)
    good = random_params(config)
    good["conv_out"]["bias"][0] = np.nan
    with pytest.raises(CheckpointError, match="NaN"):
        export_workdir(str(tmp_path / "nan"), config, good)


def test_load_for_sampling_errors_are_one_line_value_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_for_sampling(str(tmp_path / "missing"))
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_for_sampling(str(tmp_path / "empty"))
    # A checkpoint whose arrays are gone: the failed load is reported, not a raw orbax traceback.
    config = configs.tiny.get_config()
    export_workdir(str(tmp_path / "broken"), config, random_params(config))
    ema_dir = tmp_path / "broken" / "checkpoints" / "0" / "ema_params"
    for root, _, files in os.walk(ema_dir):
        for name in files:
            os.remove(os.path.join(root, name))
    with pytest.raises(CheckpointError, match="could not load ema_params of checkpoint 0") as info:
        load_for_sampling(str(tmp_path / "broken"))
    assert "\n" not in str(info.value)


def test_a_partly_written_checkpoint_is_never_taken_for_a_good_one(tmp_path):
    config = configs.tiny.get_config()
    params = random_params(config)
    export_workdir(str(tmp_path), config, params)
    # What a save killed half-way leaves behind: a tmp dir with a plausible-looking layout.
    partial = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp"
    (partial / "params").mkdir(parents=True)
    (partial / "params" / "garbage").write_bytes(b"\0" * 10)
    _, loaded, step = load_for_sampling(str(tmp_path))
    assert step == 0
    assert_trees_equal(params, loaded)
    manager = checkpoints.make_manager(str(tmp_path), read_only=True)
    assert manager.all_steps() == [0]
    manager.close()


# ----------------------------------------------------------------------------- SIGKILL and resume

# A save that hangs in the step's final rename (everything written, nothing committed): the parent
# kills it there. Argument: the workdir (holding step 0).
_HANGING_SAVE = """
import sys, time
import jax.numpy as jnp
import configs.tiny
from orbax.checkpoint._src.path import atomicity
from ddim_jax.training import checkpoints, train_state
from ddim_jax.training.checkpoints import load_for_sampling

def hang(self):
    print("finalizing", self._final_path.name, flush=True)
    time.sleep(600)

async def finalize(self, real=atomicity.AtomicRenameTemporaryPath.finalize):
    if self._final_path.name == "6":
        hang(self)
    return await real(self)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
config, params, _ = load_for_sampling(sys.argv[1])
state = train_state.state_from_params(config, params).replace(step=jnp.asarray(6, jnp.int32))
manager = checkpoints.make_manager(sys.argv[1], async_save=False)
checkpoints.save_checkpoint(manager, state, config)
print("saved", flush=True)
"""


def test_sigkill_during_a_save_then_sample_py_uses_the_last_complete_step(tmp_path, subprocess_env):
    """Killed inside a checkpoint save, a run leaves ``6.orbax-checkpoint-tmp-*``: sample.py takes
    step 0, silently (nothing went wrong with it). Left under its final name by a file system
    without atomic renames and half-written, step 6 fails its checks and is never the one chosen."""
    config = configs.tiny.get_config()
    params = random_params(config)
    for leaf in jax.tree.leaves(params):
        leaf *= 0.05
    export_workdir(str(tmp_path), config, params)
    env = subprocess_env()
    saver = subprocess.Popen([sys.executable, "-c", _HANGING_SAVE, str(tmp_path)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert saver.stdout.readline().split() == ["finalizing", "6"]
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait(timeout=60)
    leftovers = [name for name in os.listdir(tmp_path / "checkpoints") if name.startswith("6.")]
    assert len(leftovers) == 1 and "tmp" in leftovers[0], os.listdir(tmp_path / "checkpoints")
    result = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), "--workdir", str(tmp_path),
                             "--steps", "2", "--num", "2", "--out", str(tmp_path / "x.npz"), "--noprogress"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr[-2000:]
    assert "step 0" in result.stdout
    # The same leftover under the final name, its EMA params half written: refused, step 0 is used.
    partial = tmp_path / "checkpoints" / "6"
    os.rename(tmp_path / "checkpoints" / leftovers[0], partial)
    for root, _, files in os.walk(partial / "ema_params"):
        for name in files if os.path.basename(root) == "d" else ():
            os.truncate(os.path.join(root, name), os.path.getsize(os.path.join(root, name)) // 2)
    messages = []
    _, loaded, step = load_for_sampling(str(tmp_path), on_fallback=messages.append)
    assert step == 0 and len(messages) == 1 and "checkpoint 6 is unusable" in messages[0]
    assert_trees_equal(params, loaded)


RUN_OVERRIDES = ("--config.training.num_train_steps=12", "--config.training.checkpoint_every_steps=2",
                 "--config.training.log_every_steps=2", "--config.training.num_grid_samples=0",
                 "--config.training.keep_checkpoints=3")


def train_py_command(workdir):
    return [sys.executable, os.path.join(REPO, "train.py"), "--config", "configs/tiny.py",
            "--workdir", str(workdir), *RUN_OVERRIDES]


@pytest.mark.slow  # three training subprocesses: ~40 s alone on 2 cores (the first compiles)
def test_sigkill_at_a_random_moment_then_resume_gives_identical_params(tmp_path, subprocess_env):
    env = subprocess_env()
    reference = subprocess.run(train_py_command(tmp_path / "reference"), cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]

    workdir = tmp_path / "killed"
    delay = random.uniform(0.0, 1.5)
    for _ in range(4):  # the kill must land before the run ends, or the test proves nothing
        process = subprocess.Popen(train_py_command(workdir), cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first_checkpoint = workdir / "checkpoints" / "2"
        deadline = time.time() + 300
        while not first_checkpoint.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert first_checkpoint.exists(), "the run never wrote its first checkpoint"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        killed_at = sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())
        if process.returncode == -signal.SIGKILL and killed_at[-1] < 12:
            break
        shutil.rmtree(workdir)  # it finished first: try again with a shorter delay
        delay /= 4
    else:
        pytest.fail("could not kill the run before it finished")

    resumed = subprocess.run(train_py_command(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"steps {killed_at[-1]} -> 12" in resumed.stderr, (delay, killed_at, resumed.stderr[-2000:])

    for use_ema in (False, True):
        _, want, want_step = load_for_sampling(str(tmp_path / "reference"), use_ema=use_ema)
        _, got, got_step = load_for_sampling(str(workdir), use_ema=use_ema)
        assert want_step == got_step == 12
        assert_trees_equal(want, got)
    # The optimizer state and PRNG key of the last checkpoints agree as well.
    abstract = jax.eval_shape(lambda: train_state.create_train_state(configs.tiny.get_config()))
    states = []
    for directory in (tmp_path / "reference", workdir):
        manager = checkpoints.make_manager(str(directory), read_only=True, async_save=False)
        states.append(checkpoints.restore_checkpoint(manager, abstract, 12))
        manager.close()
    assert_trees_equal(states[0][0].opt_state, states[1][0].opt_state)
    assert_trees_equal(states[0][0].rng, states[1][0].rng)
    assert states[0][1] == states[1][1]   # including the checksums of the three trees
    assert {key: states[0][1][key] for key in ("step", "data_position")} == {"step": 12, "data_position": 12}
