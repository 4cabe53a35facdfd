"""Turning a diffusers checkpoint into a regular run workdir (step-0 checkpoint + run config).

CLI: ``python -m ddim_jax.pretrained --pretrained DIR_OR_HUB_ID --workdir runs/x``; the conversion
subcommands ``convert-adm``, ``convert-adm-classifier`` and ``convert-ddim-authors`` are in
:mod:`ddim_jax.pretrained.convert_cli`.
"""

from __future__ import annotations

import argparse
import os
import sys

from ddim_jax.cli.entry import user_errors
from ddim_jax.pretrained.convert_cli import COMMANDS, convert_main
from ddim_jax.pretrained.files import PretrainedError, resolve_pretrained
from ddim_jax.pretrained.schedule import load_diffusers_schedule
from ddim_jax.pretrained.unet_mapping import load_diffusers_unet, load_unet_config
from ddim_jax.training import schema
from ddim_jax.training.checkpoints import export_workdir

PROG = "python -m ddim_jax.pretrained"


def _default_dataset(channels: int, size: int) -> str:
    if channels == 1:
        return "mnist"
    return "cifar10" if size == 32 else "celeb_a"


def pretrained_run_config(path: str | os.PathLike, data_name: str | None = None):
    """A full run config (``ml_collections.ConfigDict``) for a converted checkpoint.

    Starts from the project's default (CIFAR-10 DDPM) recipe and sets ``data.image_size``,
    ``data.channels``, every ``model.*`` key and the ``diffusion.*`` schedule from the checkpoint.
    ``data_name`` is the dataset further training would read (default: ``mnist`` for one channel,
    ``cifar10`` for 32x32 RGB, ``celeb_a`` otherwise); sampling does not use it.
    """
    path = os.fspath(path)
    _, kwargs = load_unet_config(path)
    schedule = load_diffusers_schedule(path)
    if kwargs["sample_size"] is None:
        raise PretrainedError("the UNet config has no sample_size, so the run's image size is unknown")
    if kwargs["in_channels"] != kwargs["out_ch"]:
        raise PretrainedError(f"a run needs in_channels == out_channels, got {kwargs['in_channels']} and "
                              f"{kwargs['out_ch']}")
    if schedule["beta_schedule"] is None:
        raise PretrainedError("the scheduler has explicit trained_betas, which a run config cannot describe")

    config = schema.default_config()
    size, channels = kwargs["sample_size"], kwargs["in_channels"]
    config.data.name = data_name or _default_dataset(channels, size)
    config.data.image_size = size
    config.data.channels = channels
    # config.model is exactly the UNet's keyword arguments (all but out_ch, the data's channels).
    config.model.update({key: value for key, value in kwargs.items()
                         if key not in ("out_ch", "sample_size", "in_channels")})
    config.diffusion.beta_schedule = schedule["beta_schedule"]
    config.diffusion.beta_start = schedule["beta_start"]
    config.diffusion.beta_end = schedule["beta_end"]
    config.diffusion.num_timesteps = schedule["num_timesteps"]
    config.diffusion.prediction_type = schedule["prediction_type"]
    config.sampling.clip_x0 = schedule["clip_sample"]
    if schedule["skip"] is not None:
        config.sampling.skip = schedule["skip"]
    config.sampling.rederive_eps = False  # diffusers' DDIMScheduler keeps the model's eps when clipping
    return schema.validate_config(config)


def export_pretrained_to_workdir(name_or_path: str | os.PathLike, workdir: str | os.PathLike,
                                 data_name: str | None = None):
    """Writes a converted checkpoint as a regular run workdir (step-0 checkpoint + config).

    ``sample.py --workdir WORKDIR`` samples from it, and ``train.py --workdir WORKDIR`` with the
    returned config fine-tunes it.

    Returns:
      The run config that was written.
    """
    local_dir = resolve_pretrained(name_or_path)
    config = pretrained_run_config(local_dir, data_name=data_name)
    _, variables = load_diffusers_unet(local_dir)
    export_workdir(os.path.abspath(os.fspath(workdir)), config, variables["params"])
    return config


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI and returns 0; a user error prints one line and exits with status 1 (Ctrl-C: 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:  # python -m ddim_jax.pretrained convert-adm ... (see convert_cli)
        with user_errors(PROG, resume_note="rerun into a new, empty output directory"):
            return convert_main(argv)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a diffusers UNet2DModel checkpoint into a ddim-jax run workdir. To convert "
                    "PyTorch pickles first: python -m ddim_jax.pretrained {" + ",".join(COMMANDS) + "} --help",
    )
    parser.add_argument("--pretrained", required=True, help="local diffusers directory or Hugging Face Hub id")
    parser.add_argument("--workdir", required=True, help="new (empty) run directory to write")
    parser.add_argument("--data_name", default=None,
                        help="dataset for further training (default: from the image size and channels)")
    args = parser.parse_args(argv)
    with user_errors(parser.prog, resume_note="rerun into a new, empty --workdir"):
        try:
            config = export_pretrained_to_workdir(args.pretrained, args.workdir, data_name=args.data_name)
        except OSError as err:  # the file system refused (read-only, full, a file where a directory goes)
            raise PretrainedError(f"cannot write {args.workdir}: {err.strerror or err}") from None
    print(f"wrote {args.workdir}: {config.data.image_size}x{config.data.image_size}x{config.data.channels} "
          f"UNet (ch={config.model.ch}, ch_mult={tuple(config.model.ch_mult)}), "
          f"{config.diffusion.beta_schedule} betas, T={config.diffusion.num_timesteps}")
    return 0
