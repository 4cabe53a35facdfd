"""Fault injection on the tiny config: what a hostile user (or a bad disk) does, and what must follow.

Every case ends in a fallback that says so in one line, or in a one-line error: never a traceback,
never silent wrong output. A two-checkpoint run (steps 2 and 4) is trained once per module and
copied for each test that damages it.
"""

import dataclasses
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import configs.tiny
from ddim_jax import alphas_cumprod_from_betas, encode, make_betas, sample, slerp, timestep_sequence
from ddim_jax.generation import batching, loading, modes, program, shards
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.io.checksums import json_checksum
from ddim_jax.io.locks import FileLock, LockHeldError
from ddim_jax.training import checkpoints, loop, run_directory, train_state
from ddim_jax.training.checkpoints import CheckpointError, export_workdir, load_for_sampling

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(steps=4):
    config = configs.tiny.get_config()
    config.training.num_train_steps = steps
    config.training.num_grid_samples = 0
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, random_tiny_params):
    """A workdir with checkpoints 2 and 4 (random params, saved as training saves them: no compile),
    and the EMA params of each."""
    path = str(tmp_path_factory.mktemp("trained") / "run")
    config = _config(4)
    manager = checkpoints.make_manager(path, keep=config.training.keep_checkpoints, async_save=False)
    ema = {}
    for step in (2, 4):
        params = random_tiny_params(seed=step)
        state = train_state.state_from_params(config, params).replace(step=jnp.asarray(step, jnp.int32))
        checkpoints.save_checkpoint(manager, state, config)
        ema[step] = params
    manager.wait_until_finished()
    manager.close()
    return path, ema


def _copy(trained, tmp_path):
    path = str(tmp_path / "run")
    shutil.copytree(trained[0], path)
    return path


def _equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _ema_data_files(path, step=4):
    return sorted(glob.glob(os.path.join(path, "checkpoints", str(step), "ema_params", "**", "d", "*"),
                            recursive=True))


def _flip(path, count=64):
    data = bytearray(open(path, "rb").read())
    start = len(data) // 2
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _damage(path, kind):
    step_dir = os.path.join(path, "checkpoints", "4")
    if kind == "flip":
        for name in _ema_data_files(path):
            _flip(name)
    elif kind == "truncate":
        biggest = max(_ema_data_files(path), key=os.path.getsize)
        os.truncate(biggest, os.path.getsize(biggest) // 3)
    elif kind == "delete_item":
        shutil.rmtree(os.path.join(step_dir, "ema_params"))
    elif kind == "garble_manifest":
        open(os.path.join(step_dir, "ema_params", "manifest.ocdbt"), "wb").write(b"not a manifest")
    elif kind == "garble_progress":
        open(os.path.join(step_dir, "progress", "metadata"), "w").write("{garbled")


# ---------------------------------------------------------------------------------------------
# Checkpoints: checksums, fallback, never deleting the good one
# ---------------------------------------------------------------------------------------------


def test_each_64_byte_flip_in_the_ema_data_is_harmless_or_detected(trained, tmp_path):
    """Flip 64 bytes in one EMA data file at a time: the loaded params are bit-identical (the bytes
    were not part of the data read) or the step is skipped for step 2. Never different params."""
    path = _copy(trained, tmp_path)
    detected = 0
    for name in _ema_data_files(path):
        original = open(name, "rb").read()
        _flip(name)
        messages = []
        _, params, step = load_for_sampling(path, on_fallback=messages.append)
        open(name, "wb").write(original)
        if step == 4:
            assert _equal(params, trained[1][4]) and not messages
        else:
            assert step == 2 and _equal(params, trained[1][2])
            assert len(messages) == 1 and "checkpoint 4 is unusable" in messages[0] and "\n" not in messages[0]
            detected += 1
    assert detected >= 1


@pytest.mark.parametrize("kind", ["flip", "truncate", "delete_item", "garble_manifest", "garble_progress"])
def test_damaged_newest_step_falls_back_for_sampling_and_training(trained, tmp_path, kind, caplog):
    path = _copy(trained, tmp_path)
    _damage(path, kind)
    messages = []
    _, params, step = load_for_sampling(path, on_fallback=messages.append)
    assert step == 2 and _equal(params, trained[1][2])
    assert len(messages) == 1 and "using checkpoint 2" in messages[0] and "\n" not in messages[0]
    assert len(messages[0]) < 400
    if kind != "flip":   # training reads through the same checks; one kind trains (compiling is slow)
        manager = checkpoints.make_manager(path, async_save=False)
        restored = checkpoints.restore_latest_verified(manager, train_state.abstract_train_state(_config()),
                                                         on_fallback=messages.append)
        manager.close()
        assert restored[2] == 2 and _equal(restored[0].ema_params, trained[1][2]) and len(messages) == 2
        assert "4.corrupt" in os.listdir(os.path.join(path, "checkpoints"))
        return
    # Training resumes from step 2, moves step 4 aside, and ends with good checkpoints only.
    with caplog.at_level("WARNING", logger="ddim_jax"):
        state = loop.train_and_evaluate(_config(6), path)
    assert int(state.step) == 6
    assert any("using checkpoint 2" in record.getMessage() for record in caplog.records)
    names = sorted(os.listdir(os.path.join(path, "checkpoints")))
    assert "4.corrupt" in names and {"4", "6"} <= set(names)
    _, params, step = load_for_sampling(path, on_fallback=pytest.fail)
    assert step == 6


def _edit_json(path, item, edit, step=4):
    """Rewrites ``checkpoints/<step>/<item>/metadata`` (a JSON item) with ``edit(value)`` applied."""
    name = os.path.join(path, "checkpoints", str(step), item, "metadata")
    with open(name) as handle:
        value = json.load(handle)
    edit(value)
    with open(name, "w") as handle:
        json.dump(value, handle)


def _resume_check(path):
    """What train.py passes: the stored config must fit this run's (it refuses a different diffusion)."""
    return lambda stored: loop._check_resume_compatible(stored, _config(), path)


def _restore_for_training(path, messages):
    manager = checkpoints.make_manager(path, async_save=False)
    try:
        return checkpoints.restore_latest_verified(manager, train_state.abstract_train_state(_config()),
                                                   check_config=_resume_check(path), on_fallback=messages.append)
    finally:
        manager.close()


def _set(section, key, value):
    return lambda item: item[section].__setitem__(key, value)


@pytest.mark.parametrize("item, edit, what", [
    ("config", _set("diffusion", "beta_end", 0.07), "config"),           # other images, exit 0, before
    ("config", _set("model", "dropout", 0.0), "config"),
    ("progress", lambda p: p.__setitem__("data_position", 2), "progress"),   # wrong step bookkeeping, before
    ("progress", lambda p: p.__setitem__("step", 6), "progress"),
])
def test_an_edited_config_or_progress_is_a_corrupt_step(trained, tmp_path, item, edit, what):
    """The config and the progress record (step, data position) are checksummed with the trees: an
    edit makes the step unusable, and sampling and training fall back to step 2 in one line each
    (training used to refuse "a different config.diffusion" instead, or resume at the wrong step)."""
    path = _copy(trained, tmp_path)
    _edit_json(path, item, edit)
    messages = []
    _, params, step = load_for_sampling(path, on_fallback=messages.append)
    assert step == 2 and _equal(params, trained[1][2])
    assert len(messages) == 1 and f"{what} does not match its checksum" in messages[0], messages
    state, progress, step = _restore_for_training(path, messages)
    assert step == 2 and int(state.step) == 2 and progress["data_position"] == 2
    assert len(messages) == 2 and "checkpoint 4 is unusable" in messages[1] and "\n" not in messages[1]
    assert "4.corrupt" in os.listdir(os.path.join(path, "checkpoints"))


def _forge_progress(path, fields):
    """A progress record whose own checksum is right but whose step / data position are ``fields``."""
    def edit(progress):
        progress.update(fields)
        progress["checksums"]["progress"] = json_checksum(
            {"step": progress["step"], "data_position": progress["data_position"]})
    _edit_json(path, "progress", edit)


@pytest.mark.parametrize("fields", [{"data_position": 2}, {"step": 2, "data_position": 2}])
def test_step_and_data_position_must_agree_with_the_restored_state(trained, tmp_path, fields):
    path = _copy(trained, tmp_path)
    _forge_progress(path, fields)
    messages = []
    _, _, step = load_for_sampling(path, on_fallback=messages.append)
    assert step == (2 if "step" in fields else 4)   # sampling reads the step, not the data position
    state, progress, step = _restore_for_training(path, messages)
    assert step == 2 and int(state.step) == 2 and progress == {**progress, "step": 2, "data_position": 2}
    assert "does not agree" in messages[-1] and "\n" not in messages[-1], messages


def test_a_renamed_step_directory_is_not_trusted(trained, tmp_path):
    path = _copy(trained, tmp_path)
    os.rename(os.path.join(path, "checkpoints", "4"), os.path.join(path, "checkpoints", "8"))
    messages = []
    _, params, step = load_for_sampling(path, on_fallback=messages.append)
    assert step == 2 and _equal(params, trained[1][2])
    assert len(messages) == 1 and "checkpoint 8 is unusable" in messages[0] and "step 4" in messages[0]


@pytest.mark.parametrize("field", ["opt_state", "rng"])
def test_a_changed_train_extra_is_a_corrupt_step(trained, tmp_path, field, random_tiny_params):
    """The optimizer state and PRNG key are verified like the params: step 4's ``train_extra`` is
    replaced by a well-formed one (same step, so only its checksum can tell) and training falls back."""
    path = _copy(trained, tmp_path)
    config = _config()
    state = train_state.state_from_params(config, random_tiny_params(seed=4)).replace(step=jnp.asarray(4, jnp.int32))
    if field == "opt_state":
        state = state.replace(opt_state=jax.tree.map(lambda leaf: leaf + 1 if jnp.issubdtype(leaf.dtype, jnp.floating)
                                                     else leaf, state.opt_state))
    else:
        state = state.replace(rng=jax.random.fold_in(state.rng, 1))
    other = str(tmp_path / "other")
    manager = checkpoints.make_manager(other, async_save=False)
    checkpoints.save_checkpoint(manager, state, config)
    manager.close()
    target = os.path.join(path, "checkpoints", "4", "train_extra")
    shutil.rmtree(target)
    shutil.copytree(os.path.join(other, "checkpoints", "4", "train_extra"), target)
    messages = []
    _, params, step = load_for_sampling(path, on_fallback=messages.append)
    assert step == 4 and not messages   # sampling does not read train_extra
    state, _, step = _restore_for_training(path, messages)
    assert step == 2 and "train_extra does not match its checksum" in messages[0], messages


@pytest.mark.parametrize("damage", ["garble", "directory"])
def test_orbax_step_metadata_errors_stay_off_the_terminal(trained, tmp_path, caplog, damage):
    """A garbled or unreadable ``_CHECKPOINT_METADATA`` (orbax's timestamps; the data still verifies)
    used to print an absl ``E1202 ... Failed to read Metadata file`` line beside the output."""
    path = _copy(trained, tmp_path)
    metadata = os.path.join(path, "checkpoints", "4", "_CHECKPOINT_METADATA")
    os.remove(metadata)
    if damage == "garble":
        open(metadata, "w").write("{garbled")
    else:
        os.makedirs(metadata)
    with caplog.at_level("WARNING"):
        _, params, step = load_for_sampling(path, on_fallback=pytest.fail)
    assert step == 4 and _equal(params, trained[1][4])
    assert not [record for record in caplog.records if "Metadata file" in record.getMessage()]


def test_orbax_coroutines_collected_after_a_failed_restore_print_nothing(monkeypatch):
    """What a failed restore leaves behind: orbax coroutines that raise when collected, and
    callbacks on its closed loop. Both are dropped; any other unraisable reaches the previous hook."""
    from orbax.checkpoint._src.path import async_path

    from ddim_jax.training import checkpoint_noise

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint_noise.install()
    coroutine = async_path.exists(tmp := os.path.dirname(__file__))
    try:
        sys.unraisablehook(SimpleNamespace(exc_value=RuntimeError("coroutine ignored GeneratorExit"),
                                           object=coroutine))
        sys.unraisablehook(SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None))
    finally:
        coroutine.close()
    other = SimpleNamespace(exc_value=RuntimeError("a real problem"), object=tmp)
    sys.unraisablehook(other)
    assert seen == [other]


def test_a_bad_newest_step_never_costs_the_good_one(trained, tmp_path):
    """keep_checkpoints = 2 with steps 2 (good) and 4 (bad): resuming and saving step 4 again must
    not let orbax delete step 2 while the bad step still counts."""
    path = _copy(trained, tmp_path)
    _damage(path, "flip")
    loop.train_and_evaluate(_config(4), path)   # retrains 2 -> 4 and saves 4 again
    names = sorted(os.listdir(os.path.join(path, "checkpoints")))
    assert {"2", "4", "4.corrupt"} <= set(names)
    _, params, step = load_for_sampling(path, on_fallback=pytest.fail)
    assert step == 4 and not _equal(params, trained[1][4])   # trained from step 2, not the damaged data


def test_no_step_verifies_is_one_line(trained, tmp_path):
    path = _copy(trained, tmp_path)
    for step in (2, 4):
        for name in _ema_data_files(path, step):
            _flip(name, count=4096)
    with pytest.raises(CheckpointError, match="no checkpoint in .* verifies") as info:
        load_for_sampling(path)
    assert "\n" not in str(info.value)
    with pytest.raises(SampleError, match="verifies"):
        loading.load_run(path)


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_last_good_one(trained, tmp_path, monkeypatch):
    path = _copy(trained, tmp_path)
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(CheckpointError, match="could not write checkpoint 6 .*No space left on device") as info:
        loop.train_and_evaluate(_config(6), path)
    assert "\n" not in str(info.value)
    _, params, step = load_for_sampling(path, on_fallback=pytest.fail)
    assert step == 4 and _equal(params, trained[1][4])


def test_nan_weights_are_refused_when_loading(tmp_path, random_tiny_params):
    config = _config()
    params = random_tiny_params()
    params["conv_out"]["bias"][0] = np.inf
    manager = checkpoints.make_manager(str(tmp_path), async_save=False)   # export_workdir refuses NaN itself
    checkpoints.save_checkpoint(manager, train_state.state_from_params(config, params), config)
    manager.wait_until_finished()
    manager.close()
    with pytest.raises(SampleError, match=r"NaN or infinite values .*\['conv_out'\]\['bias'\]"):
        loading.load_run(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------------------------


def test_second_trainer_on_one_workdir_refuses_at_once(tmp_path):
    path = str(tmp_path / "run")
    os.makedirs(path)
    held = run_directory.lock_workdir(path)
    try:
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=r"in use by another train.py \(pid \d+ on host .*\)"):
            loop.train_and_evaluate(_config(2), path)
        assert time.perf_counter() - start < 5
    finally:
        held.release()
    assert not os.path.exists(os.path.join(path, "checkpoints"))


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    lock_path = str(tmp_path / "train.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ddim_jax.io.locks import FileLock; "
         f"FileLock({lock_path!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError) as info:
            FileLock(lock_path).acquire()
        assert f"pid {holder.pid} on host" in info.value.holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.path.exists(lock_path)   # left behind by the killed process ...
    FileLock(lock_path).acquire().release()   # ... and yet free


# ---------------------------------------------------------------------------------------------
# Resumable sampling: nothing mixed
# ---------------------------------------------------------------------------------------------


def _options(workdir, out, **overrides):
    values = dict(workdir=workdir, out=str(out), steps=3, num=6, batch_size=2, progress=False)
    values.update(overrides)
    return program.SampleOptions(**values)


def _interrupt_after(monkeypatch, batches):
    real = batching.BatchedSampler.decode_batch
    calls = []

    def decode(self, *args, **kwargs):
        if len(calls) == batches:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(batching.BatchedSampler, "decode_batch", decode)
    return real


def test_resumed_sampling_refuses_another_model_at_the_same_step(workdir, tmp_path, monkeypatch,
                                                                 random_tiny_params):
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)
    out = tmp_path / "x.npz"
    real = _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        program.run(_options(run, out))
    monkeypatch.setattr(batching.BatchedSampler, "decode_batch", real)
    shutil.rmtree(run)   # replace the run by another one at the same step and path
    export_workdir(run, configs.tiny.get_config(), random_tiny_params(seed=1))
    with pytest.raises(SampleError, match="other settings .*params .*another model") as info:
        program.run(_options(run, out))
    assert "\n" not in str(info.value)
    with pytest.raises(SampleError, match=r"other settings \(.*seed 0 -> 5"):
        program.run(_options(run, out, seed=5))


def test_resumed_sampling_refuses_a_changed_seed(workdir, tmp_path, monkeypatch):
    out = tmp_path / "x.npz"
    real = _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        program.run(_options(workdir, out))
    monkeypatch.setattr(batching.BatchedSampler, "decode_batch", real)
    with pytest.raises(SampleError, match=r"other settings \(seed 0 -> 1\)"):
        program.run(_options(workdir, out, seed=1))
    resumed = program.run(_options(workdir, out))   # the same settings resume
    np.testing.assert_array_equal(resumed, program.run(_options(workdir, tmp_path / "ref.npz")))


def test_shards_without_their_metadata_are_not_adopted(workdir, tmp_path, monkeypatch):
    out = tmp_path / "x.npz"
    real = _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        program.run(_options(workdir, out))
    monkeypatch.setattr(batching.BatchedSampler, "decode_batch", real)
    os.remove(os.path.join(shards.shard_dir_for(str(out)), shards.SHARD_META_FILE))
    with pytest.raises(SampleError, match="holds shards but no meta.json"):
        program.run(_options(workdir, out))


def test_a_second_sampler_on_one_out_refuses_at_once(workdir, tmp_path):
    out = str(tmp_path / "x.npz")
    held = program.lock_output(out)
    try:
        with pytest.raises(SampleError, match=r"being written by another sample.py \(pid \d+ on host"):
            program.run(_options(workdir, out))
    finally:
        held.release()
    assert not os.path.exists(out + ".lock")


def test_a_finished_output_is_reported_not_redone(workdir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.npz"
    first = program.run(_options(workdir, out))
    record = json.load(open(str(out) + ".json"))
    assert record["num"] == 6 and "x.npz" in record["files"]
    monkeypatch.setattr(batching.BatchedSampler, "decode_batch", lambda *a, **k: pytest.fail("sampled again"))
    capsys.readouterr()
    again = program.run(_options(workdir, out))
    assert "already complete" in capsys.readouterr().out
    np.testing.assert_array_equal(again, first)
    # Another setting, or a changed file, is not "done": it samples (here: the patched decoder fails).
    with pytest.raises(pytest.fail.Exception):
        program.run(_options(workdir, out, seed=3))
    shutil.rmtree(shards.shard_dir_for(str(out)))
    data = bytearray(open(out, "rb").read())
    data[-10] ^= 1
    open(out, "wb").write(bytes(data))
    with pytest.raises(pytest.fail.Exception):
        program.run(_options(workdir, out))


def test_png_refuses_to_overwrite_an_npz_beside_it(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(modes, "GRID_MAX_IMAGES", 4)
    (tmp_path / "g.npz").write_bytes(b"precious")
    with pytest.raises(SampleError, match="also writes all of them to .*g.npz, which exists"):
        program.run(_options(workdir, tmp_path / "g.png"))
    assert (tmp_path / "g.npz").read_bytes() == b"precious"


def test_batch_size_is_capped_at_num(workdir, tmp_path, monkeypatch):
    shapes = []
    real = batching.BatchedSampler.decode_batch
    monkeypatch.setattr(batching.BatchedSampler, "decode_batch",
                        lambda self, x_T, *a, **k: (shapes.append(x_T.shape[0]), real(self, x_T, *a, **k))[1])
    images = program.run(_options(workdir, tmp_path / "c.npz", num=3, batch_size=64))
    assert images.shape[0] == 3 and shapes == [3]


@pytest.mark.parametrize("kind, message", [
    ("directory", "is a directory"),
    ("under_a_file", "is a file, not a directory"),
    ("unwritable", "cannot be written"),
])
def test_unwritable_out_is_refused_before_loading(tmp_path, monkeypatch, kind, message):
    out = {"directory": str(tmp_path / "d.npz"), "under_a_file": str(tmp_path / "file" / "x.npz"),
           "unwritable": "/proc/ddim_jax_test/x.npz"}[kind]   # /proc: not writable even by root
    if kind == "directory":
        os.makedirs(out)
    if kind == "under_a_file":
        (tmp_path / "file").write_text("x")
    monkeypatch.setattr(loading, "load_for_sampling", lambda *a, **k: pytest.fail("loaded before checking --out"))
    with pytest.raises(SampleError, match=message) as info:
        program.run(program.SampleOptions(workdir=str(tmp_path), out=out, progress=False))
    assert "\n" not in str(info.value)


def test_reconstruct_refuses_steps_and_grids_are_captioned(workdir, tmp_path, capsys):
    with pytest.raises(SampleError, match="--step_counts .*drop --steps"):
        program.run(_options(workdir, tmp_path / "r.png", mode="reconstruct", num=2))
    out = tmp_path / "c.png"
    program.run(dataclasses.replace(_options(workdir, out, mode="consistency", num=2, steps=None),
                                       step_counts=(2, 4)))
    caption = (tmp_path / "c.png.txt").read_text()
    assert "column 1: decoded with S=2" in caption and "column 2: decoded with S=4" in caption
    assert "column 2: decoded with S=4" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# train.py: one line, never a traceback
# ---------------------------------------------------------------------------------------------


def _train_cli(*args, env):
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("args, message", [
    (["--config", "/nonexistent.py", "--workdir", "{tmp}/w"], "cannot load --config /nonexistent.py"),
    (["--config", "configs/tiny.py", "--workdir="], "--workdir is empty"),
    (["--config", "configs/tiny.py", "--workdir", "{tmp}/w", "--config.data.crop=(0,0,9,9)"],
     "does not fit the 8x8 images"),
    (["--config", "configs/tiny.py", "--workdir", "{tmp}/w", "--config.data.train_split=validation"],
     "only the 'train' split"),
])
def test_train_cli_errors_are_one_line(tmp_path, subprocess_env, args, message):
    result = _train_cli(*[arg.format(tmp=tmp_path) for arg in args], env=subprocess_env())
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def test_metrics_rows_are_not_repeated_after_a_resume(trained, tmp_path):
    path = _copy(trained, tmp_path)   # checkpoints 2 and 4; rows up to 8 were written before a crash
    with open(os.path.join(path, "metrics.jsonl"), "w") as handle:
        handle.write("".join(json.dumps({"step": step, "loss": 1.0}) + "\n" for step in (2, 4, 6)) + '{"step": 8, "lo')
    loop.train_and_evaluate(_config(6), path)
    steps = [json.loads(line)["step"] for line in open(os.path.join(path, "metrics.jsonl"))]
    assert steps == [2, 4, 6]


# ---------------------------------------------------------------------------------------------
# Library inputs that used to give silent garbage
# ---------------------------------------------------------------------------------------------


def _eps(x, t):
    return 0.1 * x


AC = alphas_cumprod_from_betas(make_betas("linear", num_timesteps=100))
SEQ = timestep_sequence(5, 100)


def test_integer_inputs_are_refused_by_name():
    ints = jnp.ones((2, 4, 4, 1), jnp.int32)
    with pytest.raises(ValueError, match="sample: x_T must be a floating-point array, got dtype int32"):
        sample(_eps, ints, SEQ, AC)
    with pytest.raises(ValueError, match="encode: x0 must be a floating-point array"):
        encode(_eps, ints, SEQ, AC)
    with pytest.raises(ValueError, match="slerp: z0 must be a floating-point array"):
        slerp(ints[0], ints[1], 0.5)
    assert sample(_eps, ints.astype(jnp.float32), SEQ, AC).dtype == jnp.float32


@pytest.mark.parametrize("bad, message", [
    (lambda ac: ac.at[10].set(0.0), r"must lie in \(0, 1\]"),
    (lambda ac: ac.at[10].set(jnp.nan), "NaN or infinite"),
    (lambda ac: ac.at[10].set(-0.5), r"must lie in \(0, 1\]"),
    (lambda ac: ac.at[0].set(1.5), r"must lie in \(0, 1\]"),
    (lambda ac: jnp.asarray(make_betas("linear", num_timesteps=100), jnp.float32), "betas passed instead"),
])
def test_bad_alphas_cumprod_is_refused_by_name(bad, message):
    x_T = jnp.ones((2, 4, 4, 1), jnp.float32)
    with pytest.raises(ValueError, match="sample: alphas_cumprod " + ".*" + message):
        sample(_eps, x_T, SEQ, bad(AC))
    with pytest.raises(ValueError, match="encode: alphas_cumprod"):
        encode(_eps, x_T, SEQ, bad(AC))


def test_sample_cli_falls_back_in_one_warning_line(trained, tmp_path, subprocess_env):
    path = _copy(trained, tmp_path)
    _damage(path, "garble_manifest")
    result = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), "--workdir", path, "--steps", "2",
                             "--num", "2", "--out", str(tmp_path / "x.npz"), "--noprogress"],
                            cwd=REPO, capture_output=True, text=True, timeout=240, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint 4 is unusable"), result.stderr[-2000:]
    assert "step 2" in result.stdout
