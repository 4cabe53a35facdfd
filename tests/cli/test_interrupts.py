"""Ctrl-C in the middle of a run: every entry point ends with one line and exit status 130, no traceback.

Each test starts the program in its own session and, once it is working (its progress output has
appeared), sends SIGINT to the whole process group, as a terminal's Ctrl-C does.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXIT_INTERRUPTED = 130


def _interrupt_when(command: list[str], marker: str, env: dict[str, str], timeout: float = 240) -> tuple[int, str]:
    """Runs ``command``, sends SIGINT once ``marker`` is in its stderr; returns (exit status, stderr)."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    chunks: list[bytes] = []

    def read() -> None:  # progress bars end in '\r', not '\n': read raw chunks, not lines
        for chunk in iter(lambda: os.read(process.stderr.fileno(), 4096), b""):
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while marker not in b"".join(chunks).decode(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{command[1]} ended or stalled before {marker!r}:\n{b''.join(chunks).decode()}")
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=10)
    return status, b"".join(chunks).decode(errors="replace")


def _assert_one_line_interrupt(status: int, stderr: str, prog: str) -> None:
    assert status == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith(f"{prog}: interrupted; ") and "rerun" in lines[-1], stderr
    assert sum("interrupted" in line for line in lines) == 1, stderr


def test_ctrl_c_during_sample_py_is_one_line(tiny_run, tmp_path, subprocess_env):
    command = [sys.executable, "sample.py", "--workdir", tiny_run, "--steps", "1000", "--num", "100000",
               "--batch_size", "64", "--out", str(tmp_path / "many.npz")]
    status, stderr = _interrupt_when(command, "%|", subprocess_env())
    _assert_one_line_interrupt(status, stderr, "sample.py")


def test_ctrl_c_during_evaluate_py_is_one_line(tiny_run, tmp_path, subprocess_env):
    command = [sys.executable, "evaluate.py", "--workdir", tiny_run, "--steps", "1000", "--num", "100000",
               "--batch_size", "64", "--metric", "digits", "--out", str(tmp_path / "eval")]
    status, stderr = _interrupt_when(command, "%|", subprocess_env())
    _assert_one_line_interrupt(status, stderr, "evaluate.py")


def test_ctrl_c_during_train_py_is_one_line(tmp_path, subprocess_env):
    command = [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "run"),
               "--config.training.num_train_steps=1000000", "--config.training.log_every_steps=2",
               "--config.training.checkpoint_every_steps=1000000", "--config.training.sample_every_steps=1000000"]
    status, stderr = _interrupt_when(command, "step 2/", subprocess_env())
    _assert_one_line_interrupt(status, stderr, "train.py")


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("module, target, argv", [
    ("ddim_jax.metrics.cli", "_run", ["train-digits-classifier", "--out", "x.safetensors"]),
    ("ddim_jax.pretrained.export", "export_pretrained_to_workdir", ["--pretrained", "p", "--workdir", "w"]),
])
def test_ctrl_c_in_the_module_entry_points_is_one_line(monkeypatch, capsys, module, target, argv):
    """``python -m ddim_jax.metrics`` / ``python -m ddim_jax.pretrained`` end through ddim_jax.cli.entry too."""
    imported = __import__(module, fromlist=["main"])
    monkeypatch.setattr(imported, target, _raise_interrupt)
    with pytest.raises(SystemExit) as exit_info:
        imported.main(argv)
    assert exit_info.value.code == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m {module.rsplit('.', 1)[0]}: interrupted; "), err
