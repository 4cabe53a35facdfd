"""The cells of an evaluation grid and their identity.

A :class:`Cell` is one (spacing, solver, S, eta or sigma-hat, guidance, classifier scale, seed)
combination. Its
*identity* is everything that determines its images (:func:`image_identity`) plus everything that
determines its numbers (the metric setup's ``identity``): a record of ``table.json`` is reused only
by a cell of exactly the same identity, and its sample file is named by the image identity, so two
configurations never share a record or a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ddim_jax.generation.adm_loading import ClassifierGuidance
from ddim_jax.generation.loading import LoadedModel
from ddim_jax.generation.sampler_spec import SampleError, SamplerSpec, validate_spec
from ddim_jax.generation.shards import SAMPLING_VERSION, validate_seed
from ddim_jax.solvers import solver_problem

# The identity fields that vary within one table block (rows, columns, and the seeds pooled as
# mean ± std); every other field of the identity names the block.
ROW_FIELDS = ("solver", "eta", "sigma_hat", "guidance", "classifier_scale")
COLUMN_FIELD = "steps"
SEED_FIELD = "seed"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One entry of the table: how the images are sampled (``spec``), from which seed, for a
    class-conditional model the classifier-free guidance scale (``None``: unconditional model), and
    with a noisy classifier (``--classifier``) its guidance scale (``None``: no classifier).
    Conditional and classifier-guided cells sample every class equally (image i of class i mod K)."""

    spec: SamplerSpec
    seed: int
    guidance: float | None = None
    classifier_scale: float | None = None

    @property
    def labelled(self) -> bool:
        """Whether the images are drawn for labels (i mod K): a conditional model or a classifier."""
        return self.guidance is not None or self.classifier_scale is not None

    @property
    def name(self) -> str:
        variance = "sigmahat" if self.spec.sigma_hat else f"eta{self.spec.eta:g}"
        guided = "" if self.guidance is None else f"_g{self.guidance:g}"
        classified = "" if self.classifier_scale is None else f"_cs{self.classifier_scale:g}"
        return (f"{self.spec.skip}_{self.spec.solver}_S{self.spec.steps}_{variance}{guided}{classified}"
                f"_seed{self.seed}")


def make_cells(*, steps: Sequence[int], etas: Sequence[float], skips: Sequence[str], solvers: Sequence[str],
               seeds: Sequence[int], sigma_hat: bool, clip_x0: bool, num_timesteps: int,
               guidances: Sequence[float | None] = (None,),
               classifier_scales: Sequence[float | None] = (None,)) -> list[Cell]:
    """Every (skip, solver, eta, S, guidance, classifier scale, seed) combination, validated; eta > 0
    only with the solvers that take it. With ``sigma_hat`` the ddim rows get the paper's sigma-hat
    row besides the eta rows. ``guidances`` are the classifier-free guidance scales of a
    class-conditional model (``None`` for an unconditional one); ``classifier_scales`` the
    classifier guidance scales (``None``: no classifier).
    """
    for seed in seeds:
        validate_seed(seed)
    for guidance in guidances:
        if guidance is not None and not math.isfinite(guidance):
            raise SampleError(f"--guidance scales must be finite numbers, got {guidance}")
    for scale in classifier_scales:
        if scale is not None and not (math.isfinite(scale) and scale >= 0):
            raise SampleError(f"--classifier_scale values must be finite numbers >= 0, got {scale}")
    if sigma_hat and all(solver_problem(solver, sigma_hat=True) for solver in solvers):
        raise SampleError(f"--sigma_hat is a variance of the ddim solver; --solver={','.join(solvers)} "
                          "has none (add ddim to --solver or drop --sigma_hat)")
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


def model_dtype(loaded: LoadedModel) -> str:
    """The network's compute precision, as recorded ("float32", "bfloat16")."""
    return str(getattr(loaded.model, "dtype", "float32"))


def image_identity(loaded: LoadedModel, cell: Cell, *, num: int, ema: bool | None,
                   classifier: ClassifierGuidance | None = None) -> dict[str, Any]:
    """Everything that determines a cell's images: the params (sha256, where from, EMA or raw), the
    schedule, the network precision, the sampler settings, guidance and labels, N, the seed, and the
    code's :data:`~ddim_jax.generation.shards.SAMPLING_VERSION`; for a classifier-guided cell also
    the classifier's params (sha256) and scale. ``loaded`` is the unguided model."""
    if (cell.classifier_scale is None) != (classifier is None):
        raise ValueError("image_identity: a cell with a classifier scale needs the classifier, and only such a cell")
    schedule = hashlib.sha256(np.asarray(loaded.alphas_cumprod, np.float32).tobytes()).hexdigest()
    # Only classifier-guided cells carry the classifier keys: the identities (and so the records
    # and sample files) of every other cell stay those of earlier releases.
    classified = {} if classifier is None else {"classifier_sha256": classifier.fingerprint,
                                                "classifier_scale": cell.classifier_scale}
    return {
        "params_sha256": loaded.fingerprint, "source": loaded.description, "ema": ema,
        "alphas_cumprod_sha256": schedule, "prediction_type": loaded.prediction_type,
        "rederive_eps": bool(loaded.rederive_eps), "dtype": model_dtype(loaded),
        **dataclasses.asdict(cell.spec), "guidance": cell.guidance,
        "labels": "i mod K" if cell.labelled else None, **classified,
        "num": int(num), "seed": int(cell.seed), "sampling_version": SAMPLING_VERSION,
    }


def identity_hash(identity: Mapping[str, Any]) -> str:
    """sha256 of the identity's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def sample_file_name(cell: Cell, images: Mapping[str, Any]) -> str:
    """``<cell name>_<12 hex digits of the image identity>.npz``: readable, and never the file of
    another configuration (another N, model, precision, clipping ...)."""
    return f"{cell.name}_{identity_hash(images)[:12]}.npz"


def block_of(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The identity without the fields that vary inside a table block (rows, S, seed)."""
    inner = set(ROW_FIELDS) | {COLUMN_FIELD, SEED_FIELD}
    return {key: value for key, value in identity.items() if key not in inner}


def record_identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's identity; a record written before identities existed gets one from its own fields
    (it then never equals a new cell's identity, so it is measured anew rather than reused)."""
    if isinstance(record.get("identity"), Mapping):
        return dict(record["identity"])
    legacy = ("skip", "solver", "steps", "eta", "sigma_hat", "clip_x0", "num", "seed", "guidance", "dtype", "source")
    return {"legacy": True, **{key: record.get(key) for key in legacy}}
