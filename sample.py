r"""Sample images from a trained ddim-jax run or a published DDPM checkpoint.

  python sample.py --steps 20                         # grid from runs/digits (EMA params)
  python sample.py --workdir runs/cifar10 --steps 50 --eta 1 --out ddpm.png
  python sample.py --num 50000 --batch-size 500 --out fid.npz   # exactly 50,000, resumable
  python sample.py --mode interpolate|reconstruct|consistency
  python sample.py --pretrained path/to/diffusers_dir --steps 20
  python sample.py --workdir runs/digits_cond --label all --guidance 2   # one class per row
  python sample.py --pretrained adm64 --skip ddim --steps 25 --classifier adm64_classifier \
      --classifier-scale 1 --label all                # an ADM model (convert-adm) with classifier guidance

`--out` ending in `.png` writes a grid; ending in `.npz` writes `images`, uint8 [N, H, W, C].
Dashed spellings (`--batch-size`, `--sigma-hat`, `--no-ema`, `--no-clip`) are accepted too.
User errors exit with status 1 and one line on stderr; Ctrl-C, with 130 and one line.
The logic lives in `ddim_jax/generation/program.py`.
Flags left out take the run's `config.sampling` values (steps, eta, skip, clipping, batch size, and
the number of images of the `samples` mode).
"""

import sys

from absl import app, flags, logging

from ddim_jax.cli.entry import fail, user_errors
from ddim_jax.cli.flags import normalize_argv
from ddim_jax.generation import program
from ddim_jax.generation.sampler_spec import SKIP_KINDS
from ddim_jax.parallel import processes
from ddim_jax.solvers import SOLVERS

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", "runs/digits", "Training run to sample (its latest good checkpoint).")
flags.DEFINE_string("pretrained", None,
                    "A diffusers-format UNet2DModel checkpoint (local dir or hub id) or a converted ADM "
                    "directory instead of --workdir.")
flags.DEFINE_string("mode", "samples", f"One of {', '.join(program.MODES)}.")
flags.DEFINE_integer("steps", None, "S, the number of sampling steps (1..T); default: the run's config, else 20.")
flags.DEFINE_float("eta", None, "Eq. 16's eta: 0 = DDIM (deterministic), 1 = DDPM; default: the run's config, else 0.")
flags.DEFINE_bool("sigma_hat", False, "Use the larger variance sigma_hat (Table 1's last row) instead of eta.")
flags.DEFINE_string("skip", None,
                    f"Timestep spacing, one of {', '.join(SKIP_KINDS)}, or respace:c1,c2,... (guided-diffusion's "
                    "section counts; --steps is their sum) (default: the run's config).")
flags.DEFINE_integer("num", None,
                     "Images (samples, reconstruct, consistency) or rows (interpolate); default: the run's "
                     "config.sampling.num_samples for samples, else per mode: "
                     + ", ".join(f"{mode} {num}" for mode, num in program.DEFAULT_NUM.items()) + ".")
flags.DEFINE_integer("batch_size", None,
                     "Images per batch, split over the local devices (default: the run's config, else 64).")
flags.DEFINE_integer("seed", 0, "Same seed (and batch size), same images.")
flags.DEFINE_string("out", None, "Output .png (grid) or .npz (uint8 images); default under <workdir>/samples/.")
flags.DEFINE_bool("ema", True, "Sample the EMA params (--noema / --no-ema: the raw params).")
flags.DEFINE_bool("clip", None, "Clip predicted x0 to [-1, 1] (default: the run's config).")
flags.DEFINE_list("step_counts", None,
                  "Step counts for reconstruct / consistency (default 10,20,50,100[,1000], clipped to T).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_string("solver", None, f"Sampler, one of {', '.join(SOLVERS)} (default: the run's config, else ddim).")
processes.define_flags()
flags.DEFINE_string("label", None,
                    "Class-conditional models: a class number N (every image of class N) or 'all' (image i of "
                    "class i mod K; grids have one class per row). Default 'all'; reconstruct: the real labels.")
flags.DEFINE_float("guidance", None,
                   "Classifier-free guidance scale s for class-conditional models: 0 = unconditional, "
                   "1 = conditional (default), > 1 guided.")
flags.DEFINE_string("classifier", None, "Classifier guidance: a converted ADM classifier directory "
                    "(python -m ddim_jax.pretrained convert-adm-classifier); labels from --label.")
flags.DEFINE_float("classifier_scale", None, "The classifier guidance scale (default 1).")
flags.DEFINE_string("precision", None, "Network compute precision, fp32 or bf16 (default: the run's "
                    "config.model.dtype); x_T and the sampler state stay float32.")



def _boolean_flag_names():
    return [name for name in FLAGS if FLAGS[name].boolean]


def main(argv):
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)   # keep orbax's restore chatter off the terminal
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        step_counts = None if FLAGS.step_counts is None else [int(v) for v in FLAGS.step_counts]
    except ValueError:
        _fail(f"--step_counts must be comma-separated integers, got {','.join(FLAGS.step_counts)!r}")
    options = program.SampleOptions(
        workdir=FLAGS.workdir,
        pretrained=FLAGS.pretrained,
        mode=FLAGS.mode,
        steps=FLAGS.steps,
        eta=FLAGS.eta,
        sigma_hat=FLAGS.sigma_hat,
        skip=FLAGS.skip,
        num=FLAGS.num,
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        out=FLAGS.out,
        use_ema=FLAGS.ema,
        clip_x0=FLAGS.clip,
        step_counts=step_counts,
        progress=FLAGS.progress,
        solver=FLAGS.solver,
        label=FLAGS.label,
        guidance=FLAGS.guidance,
        precision=FLAGS.precision,
        classifier=FLAGS.classifier,
        classifier_scale=FLAGS.classifier_scale,
    )
    with user_errors("sample.py", resume_note="finished shards are kept; rerun the same command to resume"):
        processes.initialize(FLAGS)
        program.run(options)


def _fail(message: str) -> None:
    fail("sample.py", message)


if __name__ == "__main__":
    app.run(main, argv=normalize_argv(sys.argv, _boolean_flag_names()))
