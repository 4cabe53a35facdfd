"""The cells of an evaluation grid and their identity.

A :class:`Cell` is one (spacing, solver, S, eta or sigma-hat, guidance, seed) combination. Its
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

from ddim_jax.generation.loading import LoadedModel
from ddim_jax.generation.sampler_spec import SampleError, SamplerSpec, validate_spec
from ddim_jax.generation.shards import SAMPLING_VERSION, validate_seed
from ddim_jax.solvers import solver_problem

# The identity fields that vary within one table block (rows, columns, and the seeds pooled as
# mean ± std); every other field of the identity names the block.
ROW_FIELDS = ("solver", "eta", "sigma_hat", "guidance")
COLUMN_FIELD = "steps"
SEED_FIELD = "seed"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One entry of the table: how the images are sampled (``spec``), from which seed, and for a
    class-conditional model the classifier-free guidance scale (``None``: unconditional model).
    Conditional cells sample every class equally (image i of class i mod K)."""

    spec: SamplerSpec
    seed: int
    guidance: float | None = None

    @property
    def name(self) -> str:
        variance = "sigmahat" if self.spec.sigma_hat else f"eta{self.spec.eta:g}"
        guided = "" if self.guidance is None else f"_g{self.guidance:g}"
        return f"{self.spec.skip}_{self.spec.solver}_S{self.spec.steps}_{variance}{guided}_seed{self.seed}"


def make_cells(*, steps: Sequence[int], etas: Sequence[float], skips: Sequence[str], solvers: Sequence[str],
               seeds: Sequence[int], sigma_hat: bool, clip_x0: bool, num_timesteps: int,
               guidances: Sequence[float | None] = (None,)) -> list[Cell]:
    """Every (skip, solver, eta, S, guidance, seed) combination, validated; eta > 0 only with the
    ddim solver. With ``sigma_hat`` the ddim rows get the paper's sigma-hat row besides the eta rows.
    ``guidances`` are the classifier-free guidance scales of a class-conditional model (``None``
    for an unconditional one).
    """
    for seed in seeds:
        validate_seed(seed)
    for guidance in guidances:
        if guidance is not None and not math.isfinite(guidance):
            raise SampleError(f"--guidance scales must be finite numbers, got {guidance}")
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
                    cells.extend(Cell(spec, int(seed), None if guidance is None else float(guidance))
                                 for guidance in guidances for seed in seeds)
    return cells


def model_dtype(loaded: LoadedModel) -> str:
    """The network's compute precision, as recorded ("float32", "bfloat16")."""
    return str(getattr(loaded.model, "dtype", "float32"))


def image_identity(loaded: LoadedModel, cell: Cell, *, num: int, ema: bool | None) -> dict[str, Any]:
    """Everything that determines a cell's images: the params (sha256, where from, EMA or raw), the
    schedule, the network precision, the sampler settings, guidance and labels, N, the seed, and the
    code's :data:`~ddim_jax.generation.shards.SAMPLING_VERSION`."""
    schedule = hashlib.sha256(np.asarray(loaded.alphas_cumprod, np.float32).tobytes()).hexdigest()
    return {
        "params_sha256": loaded.fingerprint, "source": loaded.description, "ema": ema,
        "alphas_cumprod_sha256": schedule, "prediction_type": loaded.prediction_type,
        "rederive_eps": bool(loaded.rederive_eps), "dtype": model_dtype(loaded),
        **dataclasses.asdict(cell.spec), "guidance": cell.guidance,
        "labels": None if cell.guidance is None else "i mod K",
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
