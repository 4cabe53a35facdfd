r"""Measure sample quality the way the paper does: its Table 1 (quality against S and eta) for any run.

  python evaluate.py                                            # the digits run: fd_digits, S = 10..100
  python evaluate.py --workdir runs/cifar10 --num 50000 --skip quad \
      --inception pt_inception.safetensors --ref_stats cifar10_train.npz       # FID, the paper's setting
  python evaluate.py --eta 0,0.2,0.5,1 --sigma_hat --steps 10,20,50,100       # all of Table 1's rows
  python evaluate.py --solver ddim,dpmpp_2m,unipc --skip logsnr --steps 5,10,20
  python evaluate.py --seeds 0,1,2                                            # mean +- std over seeds
  python evaluate.py --workdir runs/digits_cond --guidance 0,1,2,4 --steps 20  # accuracy + fd_digits per scale
  python evaluate.py --pretrained adm64 --skip ddim --steps 25 --clip --classifier adm64_classifier \
      --classifier_scale 0,0.5,1,2 --num 50000 --inception ... --ref_stats ... --metric fid,is   # ADM paper

Axes are comma lists; every (skip, solver, eta, S, guidance, classifier scale, seed) cell samples
exactly --num images through the code sample.py uses, measures them, and is merged into
``<out>/table.json``; ``table.md`` and one ``<metric>.png`` per metric are rewritten after each
cell. A rerun skips the cells whose identity (model, precision, sampler, N, seed, metric setup) is
already measured. The paper's settings are the defaults: EMA params, no x0 clipping (``--clip``
turns it on), exactly N images. User errors print one line and exit 1. docs/evaluation.md has the
details.
"""

import sys

from absl import app, flags, logging

from ddim_jax import evaluation
from ddim_jax.cli.entry import fail, user_errors
from ddim_jax.cli.flags import normalize_argv
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.metrics import RESIZE_MODES
from ddim_jax.parallel import processes
from ddim_jax.solvers import SOLVERS

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", "runs/digits", "Training run to evaluate (its latest good checkpoint).")
flags.DEFINE_string("pretrained", None, "A diffusers-format UNet2DModel checkpoint instead of --workdir.")
flags.DEFINE_list("steps", ["10", "20", "50", "100"], "S values (columns of the table).")
flags.DEFINE_list("eta", ["0"], "eta values (rows); 0 = DDIM, 1 = DDPM.")
flags.DEFINE_bool("sigma_hat", False, "Also the paper's sigma-hat row (larger variance; ddim solver only).")
flags.DEFINE_list("skip", None, "Timestep spacings (default: the run's config.sampling.skip).")
flags.DEFINE_list("solver", ["ddim"], f"Solvers, of {', '.join(SOLVERS)}.")
flags.DEFINE_integer("num", None, "Images per cell (default: 50,000 for Inception metrics, "
                     f"{evaluation.DEFAULT_NUM['digits']} for digits).")
flags.DEFINE_integer("seed", 0, "Seed of the images, in [0, 2**32).")
flags.DEFINE_list("seeds", None, "Several seeds (mean +- std in table.md); overrides --seed.")
flags.DEFINE_list("metric", None, f"Metrics, of {', '.join(evaluation.METRICS)} (default: digits for the digits "
                  "dataset, fid otherwise).")
flags.DEFINE_string("inception", None, "FID Inception weights (.safetensors) for fid / kid / is / pr.")
flags.DEFINE_string("ref_stats", None, "Reference statistics .npz (mu, sigma; plus features for kid / pr).")
flags.DEFINE_enum("resize", "pytorch-fid", RESIZE_MODES, "How images are resized to 299 for Inception.")
flags.DEFINE_string("out", None, "Output directory (default <workdir>/eval).")
flags.DEFINE_integer("batch_size", None, "Images per sampling batch (default: the run's config, else 64).")
flags.DEFINE_bool("clip", False, "Clip predicted x0 to [-1, 1] (the authors' DDIM sampler does not).")
flags.DEFINE_bool("ema", True, "Evaluate the EMA params (--noema: the raw params).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_string("precision", None, "Network compute precision, fp32 or bf16 (default: the run's "
                    "config.model.dtype); recorded in each record.")
flags.DEFINE_list("guidance", None, "Class-conditional runs: classifier-free guidance scales (rows; default 1). "
                  "Image i is of class i mod K; the digits metric then also reports accuracy.")
flags.DEFINE_string("classifier", None, "Classifier guidance: a converted ADM classifier directory "
                    "(python -m ddim_jax.pretrained convert-adm-classifier); image i is guided to class i mod K.")
flags.DEFINE_list("classifier_scale", None, "Classifier guidance scales (rows; default 1; needs --classifier).")
processes.define_flags()


def _numbers(name: str, values, kind: type) -> list:
    try:
        return [kind(value) for value in values]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise SampleError(f"--{name} must be comma-separated {what}, got {','.join(values)!r}") from None


def options_from_flags() -> evaluation.EvaluateOptions:
    """The flags as :class:`ddim_jax.evaluation.EvaluateOptions` (one-line errors for bad lists)."""
    return evaluation.EvaluateOptions(
        workdir=FLAGS.workdir, pretrained=FLAGS.pretrained, steps=_numbers("steps", FLAGS.steps, int),
        etas=_numbers("eta", FLAGS.eta, float), sigma_hat=FLAGS.sigma_hat, skips=FLAGS.skip, solvers=FLAGS.solver,
        num=FLAGS.num, seeds=_numbers("seeds", FLAGS.seeds, int) if FLAGS.seeds else [FLAGS.seed],
        metrics=FLAGS.metric, inception=FLAGS.inception, ref_stats=FLAGS.ref_stats, resize=FLAGS.resize,
        out=FLAGS.out, batch_size=FLAGS.batch_size, clip=FLAGS.clip, ema=FLAGS.ema, progress=FLAGS.progress,
        precision=FLAGS.precision,
        guidances=_numbers("guidance", FLAGS.guidance, float) if FLAGS.guidance else None,
        classifier=FLAGS.classifier,
        classifier_scales=(_numbers("classifier_scale", FLAGS.classifier_scale, float)
                           if FLAGS.classifier_scale else None))


def main(argv):
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    if len(argv) > 1:
        fail("evaluate.py", f"unexpected arguments: {' '.join(argv[1:])}")
    with user_errors("evaluate.py", resume_note="finished cells are in table.json and finished shards are kept; "
                     "rerun the same command to resume"):
        processes.initialize(FLAGS)
        evaluation.run(options_from_flags())


if __name__ == "__main__":
    app.run(main, argv=normalize_argv(sys.argv, [name for name in FLAGS if FLAGS[name].boolean]))
