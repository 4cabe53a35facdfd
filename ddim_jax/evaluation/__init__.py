"""The paper's Table 1 for any run: sample a grid of (spacing, solver, S, eta, seed) cells, measure each.

Each cell samples exactly N images through the code ``sample.py`` uses
(:func:`ddim_jax.generation.modes.run_samples`: resumable shards, the same images for a seed whatever
the batch size, device count or process count), then measures them:

- ``fid``: Fréchet distance of the FID Inception's pool features to reference statistics
  (pytorch-fid's ``.npz``: ``mu``, ``sigma``);
- ``kid``: kernel Inception distance (unbiased MMD^2, cubic kernel) to reference *features*
  (``features`` in the same ``.npz``);
- ``is``: Inception Score (10 splits);
- ``pr``: improved precision and recall (k = 3) against the reference features;
- ``digits``: ``fd_digits`` and ``confidence`` of the bundled digits classifier (8x8 digits only).

Every cell becomes one record of ``table.json`` (``skip``, ``steps``, ``eta``, ``solver``,
``num``, ``seed``, the metric values, wall time and images/s); ``table.md`` lays the records out
like the paper's Table 1 (rows eta, columns S) and ``<metric>.png`` plots each metric against S.
A rerun skips the cells already in ``table.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ddim_jax.generation.loading import LoadedModel
from ddim_jax.generation.modes import run_samples
from ddim_jax.generation.sampler_spec import SampleError, SamplerSpec, validate_spec
from ddim_jax.guidance import labels_for
from ddim_jax.io.atomic import save_json
from ddim_jax.metrics import (
    digits_metrics,
    feature_statistics,
    frechet_distance,
    inception_outputs,
    inception_score,
    kernel_inception_distance,
    load_inception,
    load_statistics,
    precision_recall,
    unbiased_logits,
)
from ddim_jax.solvers import solver_problem

METRICS = ("fid", "kid", "is", "pr", "digits")
# The record keys each metric fills.
METRIC_KEYS = {"fid": ("fid",), "kid": ("kid", "kid_std"), "is": ("is", "is_std"), "pr": ("precision", "recall"),
               "digits": ("fd_digits", "confidence")}
INCEPTION_METRICS = ("fid", "kid", "is", "pr")
TABLE_FILE = "table.json"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One entry of the table: how the images are sampled (``spec``), from which seed, and for a
    class-conditional model the classifier-free guidance scale (``None``: unconditional model), and
    with a classifier its guidance scale (``None``: no classifier). Conditional cells sample every
    class equally (image i of class i mod K)."""

    spec: SamplerSpec
    seed: int
    guidance: float | None = None
    classifier_scale: float | None = None

    @property
    def name(self) -> str:
        variance = "sigmahat" if self.spec.sigma_hat else f"eta{self.spec.eta:g}"
        guided = ("" if self.guidance is None else f"_g{self.guidance:g}") + (
            "" if self.classifier_scale is None else f"_cs{self.classifier_scale:g}")
        return f"{self.spec.skip}_{self.spec.solver}_S{self.spec.steps}_{variance}{guided}_seed{self.seed}"

    def matches(self, record: Mapping[str, Any], num: int) -> bool:
        spec = self.spec
        return (record.get("skip") == spec.skip and record.get("solver") == spec.solver
                and record.get("steps") == spec.steps and record.get("eta") == spec.eta
                and record.get("sigma_hat") == spec.sigma_hat and record.get("clip_x0") == spec.clip_x0
                and record.get("seed") == self.seed and record.get("num") == num
                and record.get("guidance") == self.guidance
                and record.get("classifier_scale") == self.classifier_scale)

    def matches_model(self, record: Mapping[str, Any], dtype: str) -> bool:
        """Also the same network precision (a bf16 evaluation does not reuse fp32 records)."""
        return record.get("dtype", "float32") == dtype


@dataclasses.dataclass
class MetricSetup:
    """What measuring needs, loaded (and checked) before any sampling starts."""

    metrics: tuple[str, ...]
    inception: Any = None
    reference_mu: np.ndarray | None = None
    reference_sigma: np.ndarray | None = None
    reference_features: np.ndarray | None = None
    resize: str = "pytorch-fid"
    batch_size: int = 200


def make_cells(*, steps: Sequence[int], etas: Sequence[float], skips: Sequence[str], solvers: Sequence[str],
               seeds: Sequence[int], sigma_hat: bool, clip_x0: bool, num_timesteps: int,
               guidances: Sequence[float | None] = (None,),
               classifier_scales: Sequence[float | None] = (None,)) -> list[Cell]:
    """Every (skip, solver, eta, S, guidance, seed) combination, validated; eta > 0 only with the
    ddim solver. With ``sigma_hat`` the ddim rows get the paper's sigma-hat row besides the eta rows.
    ``guidances`` are the classifier-free guidance scales of a class-conditional model (``None``
    for an unconditional one); ``classifier_scales`` the classifier guidance scales (``None``: no
    classifier).
    """
    cells = []
    for skip in skips:
        for solver in solvers:
            takes_eta = solver_problem(solver, eta=1.0) is None
            variants = [(float(eta), False) for eta in etas] if takes_eta else [(0.0, False)]
            if sigma_hat and takes_eta:
                variants.append((0.0, True))
            if not takes_eta and any(eta != 0 for eta in etas) and 0 not in etas:
                raise SampleError(f"--solver={solver}: {solver_problem(solver, eta=1.0)}: include eta 0 in --eta")
            for eta, use_sigma_hat in dict.fromkeys(variants):
                for num_steps in steps:
                    spec = SamplerSpec(steps=int(num_steps), eta=eta, sigma_hat=use_sigma_hat, skip=skip,
                                       clip_x0=clip_x0, solver=solver)
                    validate_spec(spec, num_timesteps)
                    cells.extend(Cell(spec, int(seed), None if guidance is None else float(guidance),
                                      None if scale is None else float(scale))
                                 for guidance in guidances for scale in classifier_scales for seed in seeds)
    return cells


def prepare_metrics(metrics: Sequence[str], *, image_shape: Sequence[int], inception_weights: str | None,
                    ref_stats: str | None, resize: str = "pytorch-fid", batch_size: int = 200) -> MetricSetup:
    """Loads the Inception weights and reference statistics the metrics need (one-line errors)."""
    unknown = [metric for metric in metrics if metric not in METRICS]
    if unknown or not metrics:
        raise SampleError(f"unknown --metric {','.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
    setup = MetricSetup(tuple(dict.fromkeys(metrics)), resize=resize, batch_size=batch_size)
    if "digits" in setup.metrics and tuple(image_shape) != (8, 8, 1):
        raise SampleError(f"--metric=digits measures 8x8x1 digits; this model makes {tuple(image_shape)} images")
    needs_reference = [metric for metric in setup.metrics if metric in ("fid", "kid", "pr")]
    if needs_reference:
        if not ref_stats:
            raise SampleError(f"--metric {','.join(needs_reference)} needs --ref_stats FILE.npz "
                              "(python -m ddim_jax.metrics stats --dataset ... --features --out FILE.npz)")
        try:
            setup.reference_mu, setup.reference_sigma = load_statistics(ref_stats)
        except ValueError as error:
            raise SampleError(str(error)) from error
        if "kid" in setup.metrics or "pr" in setup.metrics:
            with np.load(ref_stats, allow_pickle=False) as data:
                if "features" not in data.files:
                    raise SampleError(f"{ref_stats} has statistics but no 'features', which kid and pr need "
                                      "(write it with python -m ddim_jax.metrics stats ... --features)")
                setup.reference_features = np.asarray(data["features"], np.float32)
    if any(metric in INCEPTION_METRICS for metric in setup.metrics):
        if not inception_weights:
            raise SampleError("--metric fid/kid/is/pr need the FID Inception weights: pass --inception "
                              "FILE.safetensors (python -m ddim_jax.metrics convert-inception "
                              "pt_inception-2015-12-05-6726825d.pth FILE)")
        try:
            setup.inception = load_inception(inception_weights)
        except ValueError as error:
            raise SampleError(str(error)) from error
    return setup


def measure(images: np.ndarray, setup: MetricSetup, labels: np.ndarray | int | None = None) -> dict[str, float]:
    """The requested metrics of uint8 images ``[N, H, W, C]``, as a flat dict of floats."""
    values: dict[str, float] = {}
    if any(metric in INCEPTION_METRICS for metric in setup.metrics):
        outputs = inception_outputs(images, setup.inception, resize=setup.resize, batch_size=setup.batch_size,
                                    progress=False)
        if "fid" in setup.metrics:
            mu, sigma = feature_statistics(outputs.features)
            values["fid"] = frechet_distance(mu, sigma, setup.reference_mu, setup.reference_sigma)
        if "kid" in setup.metrics:
            values["kid"], values["kid_std"] = kernel_inception_distance(outputs.features, setup.reference_features)
        if "is" in setup.metrics:
            values["is"], values["is_std"] = inception_score(unbiased_logits(outputs.features, setup.inception))
        if "pr" in setup.metrics:
            values["precision"], values["recall"] = precision_recall(setup.reference_features, outputs.features)
    if "digits" in setup.metrics:
        values.update(digits_metrics(images, labels))
    return {key: float(value) for key, value in values.items()}


def is_lead_process() -> bool:
    """Process 0 writes the table and prints; the others only sample their share of each cell."""
    return jax.process_index() == 0


def read_table(out_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(out_dir, TABLE_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as handle:
            records = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise SampleError(f"cannot read {path} ({error}); move it away to start the table afresh") from error
    if not isinstance(records, list):
        raise SampleError(f"{path} is not a JSON list of records; move it away to start the table afresh")
    return records


def evaluate_cell(loaded: LoadedModel, cell: Cell, setup: MetricSetup, *, num: int, batch_size: int,
                  out_dir: str, progress: bool = True) -> dict[str, Any] | None:
    """Samples ``num`` images for ``cell`` into ``<out_dir>/samples/<cell>.npz`` and measures them.

    Returns the cell's record on process 0 (``None`` on the other processes of a multi-process run).
    """
    dtype = str(getattr(loaded.model, "dtype", "float32"))
    suffix = "" if dtype == "float32" else f"_{dtype}"
    out = os.path.join(out_dir, "samples", f"{cell.name}{suffix}.npz")
    if cell.classifier_scale is not None:
        if loaded.classifier is None:
            raise SampleError(f"cell {cell.name} has a classifier scale but {loaded.description} has no classifier")
        loaded = dataclasses.replace(loaded, classifier=dataclasses.replace(loaded.classifier,
                                                                            scale=cell.classifier_scale),
                                     fingerprint=f"{loaded.fingerprint}@cs{cell.classifier_scale!r}")
    conditioning = {} if cell.guidance is None else {"label": "all", "guidance": cell.guidance}
    start = time.perf_counter()
    images = run_samples(loaded, cell.spec, num=num, batch_size=batch_size, seed=cell.seed, out=out,
                         progress=progress, **conditioning)
    seconds = time.perf_counter() - start
    if images is None:
        return None
    record: dict[str, Any] = {**dataclasses.asdict(cell.spec), "num": num, "seed": cell.seed,
                              "guidance": cell.guidance, "classifier_scale": cell.classifier_scale, "dtype": dtype,
                              "source": loaded.description, "samples": out,
                              "sample_seconds": seconds, "images_per_second": num / max(seconds, 1e-9)}
    labels = None if cell.guidance is None else labels_for(num, "all", loaded.num_classes)
    record.update(measure(images, setup, labels))
    return record


def _row(record: Mapping[str, Any]) -> tuple[str, str, float | None]:
    """(solver [with its classifier scale], eta or "sigma-hat", guidance): the row a record belongs to."""
    scale = record.get("classifier_scale")
    solver = record["solver"] if scale is None else f"{record['solver']} classifier s={scale:g}"
    return (solver, "sigma-hat" if record["sigma_hat"] else f"{record['eta']:g}", record.get("guidance"))


def _fmt(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g}"


def markdown_table(records: Sequence[Mapping[str, Any]], metric_key: str) -> str:
    """Rows (solver, eta[, guidance]), columns S, one block per spacing, like the paper's Table 1;
    several seeds give mean ± standard deviation."""
    lines = []
    for skip in sorted({record["skip"] for record in records}):
        rows = [record for record in records if record["skip"] == skip and metric_key in record]
        if not rows:
            continue
        steps = sorted({record["steps"] for record in rows})
        lines.append(f"**{metric_key}**, spacing `{skip}`, N = {sorted({r['num'] for r in rows})}")
        lines.append("")
        guided = any(r.get("guidance") is not None for r in rows)
        row_names = ["solver", "eta"] + (["guidance"] if guided else [])
        lines.append("| " + " | ".join(row_names + [f"S = {s}" for s in steps]) + " |")
        lines.append("|" + "---|" * (len(row_names) + len(steps)))
        for solver, variance, guidance in sorted({_row(r) for r in rows}, key=lambda v: (v[0], v[1], v[2] or 0)):
            cells = []
            for num_steps in steps:
                values = [r[metric_key] for r in rows
                          if _row(r) == (solver, variance, guidance) and r["steps"] == num_steps]
                cells.append(_fmt(values) if values else "")
            label = f"{solver} | {variance} | " + (f"{guidance:g} | " if guided else "")
            lines.append(f"| {label}" + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_metric(records: Sequence[Mapping[str, Any]], metric_key: str, path: str) -> None:
    """``metric_key`` against S (log axis), one line per (spacing, solver, eta); mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [record for record in records if metric_key in record]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    def group(record):
        solver, variance, guidance = _row(record)
        variance = variance if variance == "sigma-hat" else f"eta={variance}"
        return (record["skip"], solver, variance, "" if guidance is None else f"s={guidance:g}")

    for key in sorted({group(r) for r in rows}):
        members = [r for r in rows if group(r) == key]
        steps = sorted({r["steps"] for r in members})
        means = [np.mean([r[metric_key] for r in members if r["steps"] == s]) for s in steps]
        axis.plot(steps, means, marker="o", label=" ".join(part for part in key if part))
    axis.set_xscale("log")
    axis.set_xlabel("S (sampling steps)")
    axis.set_ylabel(metric_key)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}.png"
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)


def plot_tradeoff(records: Sequence[Mapping[str, Any]], path: str) -> bool:
    """The FID-vs-IS trade-off of classifier-free guidance: one point per scale, one line per S.
    Returns whether there was anything to draw."""
    rows = [r for r in records if r.get("guidance") is not None and "fid" in r and "is" in r]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for num_steps in sorted({r["steps"] for r in rows}):
        members = sorted((r for r in rows if r["steps"] == num_steps), key=lambda r: r["guidance"])
        axis.plot([r["is"] for r in members], [r["fid"] for r in members], marker="o", label=f"S = {num_steps}")
        for r in members:
            axis.annotate(f"s={r['guidance']:g}", (r["is"], r["fid"]), fontsize=7)
    axis.set_xlabel("Inception Score")
    axis.set_ylabel("FID")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    temporary = f"{path}.tmp-{os.getpid()}.png"
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)
    return True


def write_table(records: Sequence[Mapping[str, Any]], out_dir: str, metrics: Sequence[str]) -> list[str]:
    """``table.json``, ``table.md``, one ``<metric>.png`` per metric key and, for guided FID + IS
    records, ``fid_vs_is.png``; returns the paths."""
    save_json(os.path.join(out_dir, TABLE_FILE), list(records))
    keys = [key for metric in metrics for key in METRIC_KEYS[metric]
            if not key.endswith("_std") and key != "confidence"] + (["confidence"] if "digits" in metrics else [])
    if any("accuracy" in record for record in records):
        keys.append("accuracy")
    markdown = "\n".join(markdown_table(records, key) for key in keys)
    markdown_path = os.path.join(out_dir, "table.md")
    with open(markdown_path + ".tmp", "w") as handle:
        handle.write(markdown)
    os.replace(markdown_path + ".tmp", markdown_path)
    paths = [os.path.join(out_dir, TABLE_FILE), markdown_path]
    for key in keys:
        path = os.path.join(out_dir, f"{key}.png")
        plot_metric(records, key, path)
        paths.append(path)
    tradeoff = os.path.join(out_dir, "fid_vs_is.png")
    if plot_tradeoff(records, tradeoff):
        paths.append(tradeoff)
    return paths
