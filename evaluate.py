r"""Measure sample quality the way the paper does: its Table 1 (quality against S and eta) for any run.

  python evaluate.py                                            # the digits run: fd_digits, S = 10..100
  python evaluate.py --workdir runs/cifar10 --num 50000 --skip quad \
      --inception pt_inception.safetensors --ref_stats cifar10_train.npz       # FID, the paper's setting
  python evaluate.py --eta 0,0.2,0.5,1 --sigma_hat --steps 10,20,50,100       # all of Table 1's rows
  python evaluate.py --solver ddim,dpmpp_2m,unipc --skip logsnr --steps 5,10,20
  python evaluate.py --seeds 0,1,2                                            # mean +- std over seeds
  python evaluate.py --workdir runs/digits_cond --guidance 0,1,2,4 --steps 20  # accuracy + fd_digits per scale
  python evaluate.py --pretrained adm64 --skip ddim --steps 25 --clip --classifier adm64_classifier \
      --classifier_scale 0,1,2 --inception pt_inception.safetensors --ref_stats ref.npz   # ADM, classifier axis

Axes are comma lists; every (skip, solver, eta, S, seed) cell samples exactly --num images through
the code sample.py uses (resumable shards, the same images for a seed whatever the batch size,
device count or process count), measures them, and is appended to ``<out>/table.json``; ``table.md``
(rows eta, columns S) and one ``<metric>.png`` per metric are rewritten after each cell. A rerun
skips the cells already measured. The paper's settings are the defaults: EMA params, no x0 clipping
(``--clip`` turns it on), exactly N images. User errors print one line and exit 1.
"""

import dataclasses
import os
import sys

from absl import app, flags, logging

from ddim_jax import evaluation
from ddim_jax.cli.entry import fail, user_errors
from ddim_jax.cli.flags import normalize_argv
from ddim_jax.generation.adm_loading import load_classifier
from ddim_jax.generation.loading import check_finite, load_pretrained, load_run
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.metrics import RESIZE_MODES
from ddim_jax.models.precision import PrecisionError, with_precision
from ddim_jax.parallel import processes
from ddim_jax.solvers import SOLVERS

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", "runs/digits", "Training run to evaluate (its latest good checkpoint).")
flags.DEFINE_string("pretrained", None, "A diffusers-format UNet2DModel checkpoint or a converted ADM directory "
                    "instead of --workdir.")
flags.DEFINE_list("steps", ["10", "20", "50", "100"], "S values (columns of the table).")
flags.DEFINE_list("eta", ["0"], "eta values (rows); 0 = DDIM, 1 = DDPM.")
flags.DEFINE_bool("sigma_hat", False, "Also the paper's sigma-hat row (larger variance).")
flags.DEFINE_list("skip", None, "Timestep spacings (default: the run's config.sampling.skip).")
flags.DEFINE_list("solver", ["ddim"], f"Solvers, of {', '.join(SOLVERS)}.")
flags.DEFINE_integer("num", None, "Images per cell (default: 50,000 for Inception metrics, 2,000 for digits).")
flags.DEFINE_integer("seed", 0, "Seed of the images.")
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
flags.DEFINE_string("classifier", None, "Classifier guidance: a converted ADM classifier directory.")
flags.DEFINE_list("classifier_scale", None, "Classifier guidance scales (rows; default 1; needs --classifier).")
flags.DEFINE_string("precision", None, "Network compute precision, fp32 or bf16 (default: the run's "
                    "config.model.dtype); recorded in each record.")
flags.DEFINE_list("guidance", None, "Class-conditional runs: classifier-free guidance scales (rows; default 1). "
                  "Image i is of class i mod K; the digits metric then also reports accuracy.")
processes.define_flags()

DEFAULT_NUM = {"inception": 50_000, "digits": 2_000}


def _ints(name: str, values) -> list[int]:
    try:
        return [int(value) for value in values]
    except ValueError:
        raise SampleError(f"--{name} must be comma-separated integers, got {','.join(values)!r}") from None


def _floats(name: str, values) -> list[float]:
    try:
        return [float(value) for value in values]
    except ValueError:
        raise SampleError(f"--{name} must be comma-separated numbers, got {','.join(values)!r}") from None


def _classifier_axis(loaded) -> list:
    """The classifier guidance scales (``[None]``: no classifier)."""
    if FLAGS.classifier is None:
        if FLAGS.classifier_scale:
            raise SampleError("--classifier_scale needs --classifier DIR (a converted ADM classifier)")
        return [None]
    scales = _floats("classifier_scale", FLAGS.classifier_scale) if FLAGS.classifier_scale else [1.0]
    if any(not (scale >= 0 and scale < float("inf")) for scale in scales):
        raise SampleError(f"--classifier_scale must be finite numbers >= 0, got {scales}")
    return scales


def run() -> list[dict]:
    """Everything evaluate.py does; raises SampleError (one line) for user errors."""
    processes.initialize(FLAGS)
    steps, etas = _ints("steps", FLAGS.steps), _floats("eta", FLAGS.eta)
    seeds = _ints("seeds", FLAGS.seeds) if FLAGS.seeds else [FLAGS.seed]
    loaded = (load_pretrained(FLAGS.pretrained) if FLAGS.pretrained
              else load_run(FLAGS.workdir, use_ema=FLAGS.ema))
    try:
        loaded = dataclasses.replace(loaded, model=with_precision(loaded.model, FLAGS.precision))
    except PrecisionError as error:
        raise SampleError(str(error)) from None
    classifier_scales = _classifier_axis(loaded)
    if classifier_scales != [None]:
        loaded = dataclasses.replace(loaded, classifier=load_classifier(FLAGS.classifier, 1.0, loaded.num_timesteps))
        check_finite(loaded.classifier.params, f"the weights of classifier {FLAGS.classifier!r}")
    dataset = loaded.config.data.name if loaded.config is not None else None
    metrics = FLAGS.metric or (["digits"] if dataset == "digits" else ["fid"])
    skips = FLAGS.skip or [str(loaded.defaults.get("skip", "uniform"))]
    if FLAGS.guidance and not loaded.null_class:
        raise SampleError(f"--guidance (classifier-free) needs a null class; {loaded.description} has none "
                          "(use --classifier for classifier guidance)")
    if loaded.num_classes:
        guidances = _floats("guidance", FLAGS.guidance) if FLAGS.guidance else [1.0]
    elif FLAGS.guidance:
        raise SampleError(f"--guidance needs a class-conditional model; {loaded.description} is unconditional")
    else:
        guidances = [None]
    cells = evaluation.make_cells(steps=steps, etas=etas, skips=skips, solvers=FLAGS.solver, seeds=seeds,
                                  sigma_hat=FLAGS.sigma_hat, clip_x0=FLAGS.clip, num_timesteps=loaded.num_timesteps,
                                  guidances=guidances, classifier_scales=classifier_scales)
    setup = evaluation.prepare_metrics(metrics, image_shape=loaded.image_shape, inception_weights=FLAGS.inception,
                                       ref_stats=FLAGS.ref_stats, resize=FLAGS.resize)
    only_digits = all(metric == "digits" for metric in setup.metrics)
    num = FLAGS.num or DEFAULT_NUM["digits" if only_digits else "inception"]
    if num < 2:
        raise SampleError(f"--num must be at least 2 (a covariance needs two images), got {num}")
    batch_size = FLAGS.batch_size or int(loaded.defaults.get("batch_size", 64))
    if batch_size < 1:
        raise SampleError(f"--batch_size must be at least 1, got {batch_size}")
    if FLAGS.pretrained:
        out_dir = FLAGS.out or os.path.join("eval", os.path.basename(os.path.normpath(FLAGS.pretrained)))
    else:
        out_dir = FLAGS.out or os.path.join(FLAGS.workdir, "eval")
    records = evaluation.read_table(out_dir)
    lead = evaluation.is_lead_process()
    if lead:
        print(f"evaluate: {loaded.description}; {len(cells)} cell(s) x {num} images; "
              f"metrics {','.join(setup.metrics)}; out {out_dir}")
    for cell in cells:
        dtype = str(getattr(loaded.model, "dtype", "float32"))
        if any(cell.matches(record, num) and cell.matches_model(record, dtype) for record in records):
            if lead:
                print(f"{cell.name}: already in {evaluation.TABLE_FILE}, skipped")
            continue
        record = evaluation.evaluate_cell(loaded, cell, setup, num=num, batch_size=batch_size, out_dir=out_dir,
                                          progress=FLAGS.progress and lead)
        if record is None:
            continue
        records.append(record)
        evaluation.write_table(records, out_dir, setup.metrics)
        values = ", ".join(f"{key}={record[key]:.4g}" for key in sorted(record)
                           if key in {k for m in setup.metrics for k in evaluation.METRIC_KEYS[m]})
        print(f"{cell.name}: {values} ({record['images_per_second']:.1f} img/s)")
    if lead:
        paths = evaluation.write_table(records, out_dir, setup.metrics)
        print("wrote " + ", ".join(paths))
    return records


def main(argv):
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    with user_errors("evaluate.py", resume_note="finished cells are in table.json and finished shards are kept; "
                     "rerun the same command to resume"):
        run()


def _fail(message: str) -> None:
    fail("evaluate.py", message)


if __name__ == "__main__":
    app.run(main, argv=normalize_argv(sys.argv, [name for name in FLAGS if FLAGS[name].boolean]))
