"""``python -m ddim_jax.metrics``: convert the Inception weights, train the digits classifier, write statistics.

::

    python -m ddim_jax.metrics convert-inception pt_inception-2015-12-05-6726825d.pth pt_inception.safetensors
    python -m ddim_jax.metrics train-digits-classifier --out ddim_jax/metrics/digits_classifier.safetensors
    python -m ddim_jax.metrics stats --dataset cifar10 --split train --weights pt_inception.safetensors \\
        --out cifar10_train.npz                                  # the TFDS reader the training uses
    python -m ddim_jax.metrics stats --images DIR --weights ... --out dir.npz     # every *.png in DIR
    python -m ddim_jax.metrics stats --npz samples.npz --weights ... --out s.npz  # uint8 'images' array

``stats`` writes pytorch-fid's ``.npz`` (``mu``, ``sigma``) of the 2048-d Inception features.
User errors print one line to stderr and exit with status 1; Ctrl-C prints one line and exits with 130.
"""

from __future__ import annotations

import argparse
import glob
import os
from typing import NoReturn

import ml_collections
import numpy as np
from PIL import Image

from ddim_jax.cli.entry import user_errors
from ddim_jax.errors import UserError
from ddim_jax.metrics.digits import save_digits_classifier, train_digits_classifier
from ddim_jax.metrics.features import RESIZE_MODES, inception_features
from ddim_jax.metrics.frechet import feature_statistics, save_statistics
from ddim_jax.metrics.inception import convert_inception_checkpoint, load_inception

__all__ = ["main", "PngDirectory"]

PROG = "python -m ddim_jax.metrics"


class UsageError(UserError, ValueError):
    """A command-line mistake: reported in one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog.removeprefix(PROG).strip()}: {message}".lstrip(": "))


class PngDirectory:
    """The ``*.png`` files of a directory in sorted order, read lazily as uint8 [H, W, C] (C = 1 or 3)."""

    def __init__(self, directory: str):
        if not os.path.isdir(directory):
            raise UsageError(f"--images: not a directory: {directory}")
        self._paths = sorted(glob.glob(os.path.join(directory, "*.png")))
        if not self._paths:
            raise UsageError(f"--images: no .png files in {directory}")

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> np.ndarray:
        with Image.open(self._paths[index]) as image:
            image = image if image.mode in ("L", "RGB") else image.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
        return array[..., None] if array.ndim == 2 else array


def _load_npz_images(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise UsageError(f"--npz: no such file: {path}")
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data.files:
            raise UsageError(f"--npz: {path} has no 'images' array (has: {', '.join(data.files) or 'nothing'})")
        return np.asarray(data["images"])


def _dataset_source(name: str, split: str, data_dir: str | None):
    from ddim_jax.training.input_pipeline import open_source

    config = ml_collections.ConfigDict({"data": {"name": name, "data_dir": data_dir}})
    return open_source(config, split, with_labels=False)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    convert = commands.add_parser("convert-inception", help="pytorch-fid .pth -> safetensors (one time)")
    convert.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth")
    convert.add_argument("dst", help="output .safetensors")
    train = commands.add_parser("train-digits-classifier", help="train the digits yardstick (deterministic)")
    train.add_argument("--out", required=True, help="output .safetensors")
    train.add_argument("--epochs", type=int, default=40)
    stats = commands.add_parser("stats", help="Inception feature statistics (pytorch-fid .npz)")
    source = stats.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="TFDS dataset name (read as the training reads it), e.g. cifar10")
    source.add_argument("--images", help="directory of .png images of one size")
    source.add_argument("--npz", help=".npz file with a uint8 'images' array [N, H, W, C]")
    stats.add_argument("--split", default="train", help="TFDS split (with --dataset)")
    stats.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None, help="TFDS data dir")
    stats.add_argument("--weights", required=True, help="Inception weights (.safetensors)")
    stats.add_argument("--out", required=True, help="output .npz (mu, sigma)")
    stats.add_argument("--resize", choices=RESIZE_MODES, default="pytorch-fid")
    stats.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=200)
    stats.add_argument("--no-progress", dest="progress", action="store_false")
    stats.add_argument("--features", action="store_true",
                       help="also store the features themselves (KID and precision/recall need them)")
    return parser


def _run(args: argparse.Namespace) -> str:
    if args.command == "convert-inception":
        count = convert_inception_checkpoint(args.src, args.dst)
        return f"wrote {args.dst}: {count} tensors"
    if args.command == "train-digits-classifier":
        params, accuracy = train_digits_classifier(epochs=args.epochs)
        save_digits_classifier(args.out, params, accuracy)
        return f"wrote {args.out}: held-out accuracy {accuracy:.4f} on the last 450 digits"
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    inception = load_inception(args.weights)  # before reading any data: fail fast on missing weights
    if args.dataset:
        images = _dataset_source(args.dataset, args.split, args.data_dir)
    elif args.images:
        images = PngDirectory(args.images)
    else:
        images = _load_npz_images(args.npz)
    try:
        feats = inception_features(images, inception, resize=args.resize, batch_size=args.batch_size,
                                   progress=args.progress)
    except ValueError as err:  # the user's images: a wrong dtype or shape, mixed sizes, none at all
        if isinstance(err, UserError):
            raise
        raise UsageError(f"--{'dataset' if args.dataset else 'images' if args.images else 'npz'}: {err}") from None
    if len(feats) < 2:
        raise UsageError(f"statistics need at least 2 images (a covariance), got {len(feats)}")
    mu, sigma = feature_statistics(feats)
    save_statistics(args.out, mu, sigma, features=feats if args.features else None)
    stored = " and features" if args.features else ""
    return f"wrote {args.out}: statistics{stored} of {len(feats)} images (resize={args.resize})"


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI and returns 0; a user error (or Ctrl-C) prints one line and exits with status 1 (130)."""
    with user_errors(PROG):
        args = _build_parser().parse_args(argv)
        try:
            print(_run(args))
        except OSError as err:  # the file system refused: one line naming the file
            raise UsageError(f"{err.filename or ''}: {err.strerror or err}".lstrip(": ")) from None
    return 0
