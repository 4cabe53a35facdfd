"""Loading a noise network to sample from: a training run's checkpoint or a diffusers checkpoint.

Both give a :class:`LoadedModel`: the Flax UNet, its params, ``alphas_cumprod``, the image shape,
the prediction type, and the sampling defaults that came with it (a run's ``config.sampling``, or
the clipping convention of a diffusers scheduler).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ddim_jax import pretrained
from ddim_jax.generation.adm_loading import ClassifierGuidance, adm_model_fields, is_adm_directory, load_classifier
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.io.checksums import host_array, tree_checksum
from ddim_jax.models import ADMUNet, create_model, eps_fn_for
from ddim_jax.models.adm_calls import ADMEpsFn
from ddim_jax.schedules import alphas_cumprod_from_betas, make_alphas_cumprod, timestep_sequence
from ddim_jax.training.checkpoints import CheckpointError, load_for_sampling
from ddim_jax.training.run_directory import require_workdir_name
from ddim_jax.training.schema import ConfigError
from ddim_jax.training.train_state import image_shape


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A noise-prediction network ready to sample.

    Attributes:
      model: the Flax UNet (``model.apply({"params": params}, x, t)``).
      params: its parameters (a pytree).
      alphas_cumprod: float32 [T], the paper's alpha_t.
      image_shape: (H, W, C).
      prediction_type: what the network predicts ("eps", ...).
      description: where it came from, for messages and the shard metadata.
      config: the run's ConfigDict (None for a pretrained checkpoint without one).
      defaults: sampling defaults from the run's config (``num_steps``, ``eta``, ``skip``,
        ``clip_x0``, ``batch_size``, ``num_samples``); a pretrained checkpoint has ``clip_x0`` and,
        when its scheduler names a ``timestep_spacing``, ``skip``.
      rederive_eps: with clipping, re-derive eps from the clipped x0 (our runs) or keep the
        model's eps (pretrained diffusers checkpoints: what their DDIMScheduler does).
      fingerprint: sha256 of the params actually loaded (``ddim_jax.io.checksums.tree_checksum``);
        resumable sample files record it so that a resumed run cannot mix two models.
      output_type: ``"fixed"``, or ``"learned_range"`` for an ADM model with ``learn_sigma`` (see
        ``ddim_jax.sampling.sample``).
      timestep_scale: ADM models trained with ``rescale_timesteps``: ``1000 / T`` (else None).
      null_class: a class-conditional model has a null class ``num_classes`` (ours; classifier-free
        guidance); ADM models have none.
      classifier: classifier guidance (``--classifier``), or None.
    """

    model: Any
    params: Any
    alphas_cumprod: jax.Array
    image_shape: tuple[int, int, int]
    prediction_type: str = "eps"
    description: str = ""
    config: Any = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    rederive_eps: bool = True
    fingerprint: str = ""
    output_type: str = "fixed"
    timestep_scale: float | None = None
    null_class: bool = True
    classifier: ClassifierGuidance | None = None

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def timesteps(self, num_steps: int, skip: str) -> np.ndarray:
        """The S-step sequence of spacing ``skip`` for this model's schedule (int32 ``[S]``)."""
        return timestep_sequence(num_steps, self.num_timesteps, skip, alphas_cumprod=self.alphas_cumprod)

    @property
    def num_classes(self) -> int:
        """K of a class-conditional model (label K is the null class when ``null_class``), else of
        its classifier; 0 for an unconditional model without one."""
        own = int(getattr(self.model, "num_classes", 0))
        return own or (self.classifier.num_classes if self.classifier is not None else 0)

    @property
    def model_takes_labels(self) -> bool:
        return int(getattr(self.model, "num_classes", 0)) > 0

    def with_classifier(self, classifier: ClassifierGuidance) -> LoadedModel:
        """This model guided by ``classifier`` (see ``--classifier``). The fingerprint then names
        the classifier's params and scale too, so resumable sample files never mix images of
        another classifier or scale. Call it on the unguided model (it replaces, never stacks)."""
        if self.classifier is not None:
            raise ValueError("with_classifier: this model already has a classifier; call it on the unguided model")
        return dataclasses.replace(self, classifier=classifier,
                                   fingerprint=f"{self.fingerprint}+{classifier.fingerprint}@{classifier.scale!r}")

    def eps_fn(self):
        """``eps_fn(x, t, params[, labels])`` of this model for ``sample`` (hashable, one per model)."""
        if isinstance(self.model, ADMUNet):
            return ADMEpsFn(self.model, self.timestep_scale)
        return eps_fn_for(self.model)


def load_run(workdir: str, use_ema: bool = True) -> LoadedModel:
    """The latest good checkpoint of a training run (EMA params by default) and its config."""
    workdir = require_workdir_name(workdir)
    if not os.path.isdir(workdir):
        raise SampleError(f"workdir {workdir!r} does not exist (train one with train.py first)")
    try:
        config, params, step = load_for_sampling(workdir, use_ema=use_ema,
                                                 on_fallback=lambda message: print(f"warning: {message}",
                                                                                   file=sys.stderr))
    except CheckpointError as error:
        raise SampleError(f"cannot load a checkpoint from {workdir!r}: {error}") from error
    check_finite(params, f"the {'EMA' if use_ema else 'raw'} params of checkpoint {step} in {workdir!r}")
    sampling = config.sampling
    return LoadedModel(
        model=create_model(config),
        params=params,
        alphas_cumprod=make_alphas_cumprod(config.diffusion),
        image_shape=image_shape(config),
        prediction_type=str(config.diffusion.prediction_type),
        description=f"{os.path.abspath(workdir)} step {step} ({'EMA' if use_ema else 'raw'} params)",
        config=config,
        defaults={key: sampling[key] for key in
                  ("num_steps", "eta", "skip", "clip_x0", "batch_size", "num_samples", "solver")},
        rederive_eps=bool(sampling.rederive_eps),
        fingerprint=tree_checksum(params),
    )


def check_finite(params: Any, what: str) -> None:
    """Refuse params holding NaN or infinite values before any sampling (they would only show up
    as an error at the very end, or as black images)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    bad = [jax.tree_util.keystr(path) for path, leaf in leaves if not np.all(np.isfinite(host_array(leaf)))]
    if bad:
        raise SampleError(f"{what} contain NaN or infinite values (in {len(bad)} of {len(leaves)} arrays, "
                          f"first {bad[0]}); the checkpoint is unusable")


def load_checked_classifier(loaded: LoadedModel, path: str, scale: float = 1.0) -> ClassifierGuidance:
    """The converted ADM classifier at ``path`` (``--classifier``) at ``scale``, checked against
    ``loaded``: its diffusion steps must be the model's, its weights finite and, for a
    class-conditional model, its classes the model's. Attach it with ``loaded.with_classifier``."""
    classifier = load_classifier(path, scale, loaded.num_timesteps)
    check_finite(classifier.params, f"the weights of classifier {path!r}")
    own = int(getattr(loaded.model, "num_classes", 0))
    if own and own != classifier.num_classes:   # one label steers both: the class sets must be one
        raise SampleError(f"--classifier {path!r} has {classifier.num_classes} classes, the class-conditional model "
                          f"{own}; a label must name the same class for both")
    return classifier


def load_pretrained(name_or_path: str, with_run_config: bool = False) -> LoadedModel:
    """A diffusers-format ``UNet2DModel`` checkpoint (local directory or hub id) and its scheduler, or
    a converted ADM directory (``ddim_jax.generation.adm_loading``).

    The checkpoint's scheduler config sets the betas, T, the prediction type and the default for
    clipping x0. ``with_run_config`` also builds a run config (for ``reconstruct``: its dataset).
    """
    if os.path.isdir(name_or_path) and is_adm_directory(name_or_path):
        fields = adm_model_fields(name_or_path)
        check_finite(fields["params"], f"the weights of ADM model {name_or_path!r}")
        if with_run_config:
            raise SampleError("--mode=reconstruct needs a dataset; an ADM directory names none")
        return LoadedModel(**fields)
    try:
        local_dir = pretrained.resolve_pretrained(name_or_path)
        model, variables = pretrained.load_diffusers_unet(local_dir)
        schedule = pretrained.load_diffusers_schedule(local_dir)
        size, channels = pretrained.image_shape(local_dir)
        config = pretrained.pretrained_run_config(local_dir) if with_run_config else None
    except (pretrained.PretrainedError, ConfigError) as error:
        raise SampleError(f"cannot load pretrained model {name_or_path!r}: {error}") from error
    check_finite(variables["params"], f"the weights of pretrained model {name_or_path!r}")
    return LoadedModel(
        model=model,
        params=variables["params"],
        alphas_cumprod=alphas_cumprod_from_betas(schedule["betas"]),
        image_shape=(int(size), int(size), int(channels)),
        prediction_type=str(schedule["prediction_type"]),
        description=f"pretrained {name_or_path}",
        config=config,
        defaults={"clip_x0": bool(schedule["clip_sample"]),
                  **({} if schedule["skip"] is None else {"skip": schedule["skip"]})},
        rederive_eps=False,
        fingerprint=tree_checksum(variables["params"]),
    )
