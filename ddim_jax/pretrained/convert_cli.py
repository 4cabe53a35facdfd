"""``python -m ddim_jax.pretrained convert-adm | convert-adm-classifier | convert-ddim-authors ...``:
one-off conversions of PyTorch pickles into directories that load without unpickling.

::

    python -m ddim_jax.pretrained convert-adm 256x256_diffusion.pt adm256 --flags "$MODEL_FLAGS"
    python -m ddim_jax.pretrained convert-adm-classifier 256x256_classifier.pt clf256 --flags "$CLASSIFIER_FLAGS"
    python -m ddim_jax.pretrained convert-ddim-authors ckpt.pth ddim_celeba64
"""

from __future__ import annotations

import argparse
import sys

from ddim_jax.models.adm_config import as_numbers
from ddim_jax.pretrained.adm_convert import convert_adm
from ddim_jax.pretrained.ddim_authors import CELEBA_CONFIG, convert_ddim_authors

COMMANDS = ("convert-adm", "convert-adm-classifier", "convert-ddim-authors")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddim_jax.pretrained",
                                     description="Convert PyTorch checkpoints into directories ddim-jax loads.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what, example in (
        ("convert-adm", "a guided-diffusion UNet (.pt)", "its README's MODEL_FLAGS"),
        ("convert-adm-classifier", "a guided-diffusion noisy classifier (.pt)",
         "its CLASSIFIER_FLAGS (plus --classifier_depth 4 for the 64x64 classifier)"),
    ):
        sub = commands.add_parser(name, help=f"convert {what}")
        sub.add_argument("checkpoint", help="the .pt file (read with torch.load(weights_only=True))")
        sub.add_argument("out_dir", help="new (empty) output directory")
        sub.add_argument("--flags", required=True, help=f"guided-diffusion flags of the file: {example}")
    sub = commands.add_parser("convert-ddim-authors", help="convert the DDIM authors' ckpt.pth (ermongroup/ddim)")
    sub.add_argument("checkpoint", help="their ckpt.pth (its last element, the EMA weights, is converted)")
    sub.add_argument("out_dir", help="new (empty) output directory (a diffusers-format model directory)")
    sub.add_argument("--image_size", type=int, default=CELEBA_CONFIG["image_size"])
    sub.add_argument("--ch", type=int, default=CELEBA_CONFIG["ch"])
    sub.add_argument("--ch_mult", default=",".join(map(str, CELEBA_CONFIG["ch_mult"])))
    sub.add_argument("--num_res_blocks", type=int, default=CELEBA_CONFIG["num_res_blocks"])
    sub.add_argument("--attn_resolutions", default=",".join(map(str, CELEBA_CONFIG["attn_resolutions"])))
    sub.add_argument("--dropout", type=float, default=CELEBA_CONFIG["dropout"])
    sub.epilog = "Defaults: the paper's CelebA 64x64 model (the authors' configs/celeba.yml)."
    return parser


def convert_main(argv: list[str]) -> int:
    """Runs one conversion subcommand; errors are one line on stderr and exit status 1."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "convert-ddim-authors":
            config = dict(image_size=args.image_size, ch=args.ch, ch_mult=as_numbers("ch_mult", args.ch_mult),
                          num_res_blocks=args.num_res_blocks, dropout=args.dropout,
                          attn_resolutions=as_numbers("attn_resolutions", args.attn_resolutions))
            written = convert_ddim_authors(args.checkpoint, args.out_dir, config)
            summary = (f"diffusers UNet2DModel {written['sample_size']}px, block_out_channels "
                       f"{written['block_out_channels']}; sample with --pretrained {args.out_dir}")
        else:
            architecture = "ADMUNet" if args.command == "convert-adm" else "ADMClassifier"
            written = convert_adm(args.checkpoint, args.out_dir, args.flags, architecture)
            summary = (f"{architecture} {written['image_size']}px, {written['diffusion']['noise_schedule']} "
                       f"schedule, T={written['diffusion']['diffusion_steps']}")
    except ValueError as err:  # PretrainedError, ADMConfigError: one-line messages
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the file system refused
        print(f"error: cannot write {args.out_dir}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir}: {summary}")
    return 0
