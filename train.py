"""Train a DDPM/DDIM noise-prediction UNet.

    python train.py --config configs/digits.py --workdir runs/digits
    python train.py --config configs/cifar10.py --workdir runs/cifar10 --config.training.batch_size=64
    python train.py --config configs/cifar10.py --workdir runs/cifar10_bf16 --precision bf16

Running the same command again resumes from the latest complete checkpoint in the workdir.

Multi-host (data parallel over every device of every host): start the same command on each host
with ``--coordinator_address=HOST0:PORT --num_processes=N --process_id=i`` (or ``--multihost`` on
platforms where ``jax.distributed.initialize()`` finds its settings itself: Cloud TPU, SLURM, ...).

User errors (a bad config key, a dataset not prepared, an unwritable workdir, a non-finite loss)
print one line to stderr and exit with status 1; anything else is a bug and shows its traceback.
"""

import logging
import re
import sys

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ddim_jax.cli.entry import fail, user_errors
from ddim_jax.models import precision
from ddim_jax.parallel import processes
from ddim_jax.training import loop

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and sample grids.")
processes.define_flags()
flags.DEFINE_bool("verbose", False, "Also show library (orbax, grain) INFO logs.")
flags.DEFINE_string("precision", None, "fp32 or bf16 (mixed: float32 params, optimizer state, EMA and loss); "
                    "sets config.model.dtype (default: the config's).")
flags.mark_flags_as_required(["config", "workdir"])



def _setup_logging(verbose: bool) -> None:
    """Progress lines from ddim_jax at INFO; other libraries' chatter only with --verbose."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ddim_logger = logging.getLogger("ddim_jax")
    ddim_logger.addHandler(handler)
    ddim_logger.setLevel(logging.INFO)
    ddim_logger.propagate = False
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _setup_logging(FLAGS.verbose)
    if not isinstance(FLAGS.config, ml_collections.ConfigDict):  # ml_collections' _ErrorConfig
        path = config_flags.get_config_filename(FLAGS["config"])
        print(f"train.py: error: cannot load --config {path}: no such file, or not a Python config file "
              "with a get_config() function", file=sys.stderr)
        sys.exit(1)
    with user_errors("train.py", resume_note="checkpoints already written are kept; rerun the same command to "
                     "resume from the newest one"):
        if FLAGS.precision is not None:
            FLAGS.config.model.dtype = precision.parse_precision(FLAGS.precision)
        processes.initialize(FLAGS)
        precision.warn_if_bf16_on_cpu(FLAGS.config.model.dtype, "train.py")
        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _innermost_message(err: BaseException) -> str:
    """The text an exception wraps: ml_collections raises AttributeError(KeyError("'key'\\nDid you
    mean ...")), whose str() is the repr of that text, quotes and newline escaped."""
    while err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    return err.args[0] if err.args and isinstance(err.args[0], str) else str(err)


def _unknown_override(argv: list[str], err: BaseException) -> str | None:
    """``unknown config key in override --config.a.b ...; did you mean --config.a.c?`` when ``err``
    names a key of one of the ``--config.*`` overrides in ``argv``, else None."""
    lines = _innermost_message(err).splitlines() or [""]
    bad = lines[0].strip("'\"")
    suggestion = re.search(r'Did you mean "([^"]+)"', _innermost_message(err))
    for arg in argv[1:]:
        key = arg.split("=", 1)[0].lstrip("-")
        parts = key.split(".")
        if not key.startswith("config.") or bad not in parts[1:]:
            continue
        message = f"unknown config key in override --{key} (not in the config file)"
        if suggestion:
            fixed = [suggestion.group(1) if part == bad else part for part in parts]
            message += f"; did you mean --{'.'.join(fixed)}?"
        return message
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error for an unknown ``--config.a.b`` override key.

    ml_collections raises AttributeError/KeyError for such a key; only errors that name one of the
    overridden keys are turned into a message, anything else (a bug in a config file) propagates.
    """
    try:
        return FLAGS(argv)
    except flags.Error as err:
        fail("train.py", str(err))
    except (AttributeError, KeyError) as err:
        message = _unknown_override(argv, err)
        if message is None:
            raise
        fail("train.py", message)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
