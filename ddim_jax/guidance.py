"""Classifier-free guidance (Ho & Salimans 2022) and classifier guidance (Dhariwal & Nichol 2021)
for every sampler in :mod:`ddim_jax.sampling`.

A class-conditional noise network trained with some labels replaced by a "null" class is both the
conditional model ``eps(x, t, c)`` and the unconditional one ``eps(x, t, null)``. Guidance with
scale ``s`` steps with

    eps = eps_uncond + s * (eps_cond - eps_uncond),

computed here as ``s * eps_cond + (1 - s) * eps_uncond`` so that ``s = 0`` is exactly the
unconditional estimate and ``s = 1`` exactly the conditional one; ``s > 1`` is guided.

:func:`guided_eps_fn` wraps any ``eps_fn(x, t, params, labels)`` (your own model too) into
``eps_fn(x, t, params, labels, scale)``, which evaluates both halves in ONE network call on the
batch concatenated with itself. Pass it to ``sample`` / ``encode`` with
``eps_fn_args=(params, labels, scale)``: labels and scale are traced, so a new scale or new labels
reuse the compiled sampler, and it runs inside the one scan for every solver and eta::

    eps_fn = guided_eps_fn(eps_fn_for(model), null_label=model.num_classes)
    x0 = sample(eps_fn, x_T, seq, alphas_cumprod, eps_fn_args=(params, labels, 2.0), solver="dpmpp_2m")

:func:`classifier_cond_fn` turns a noisy classifier into the ``cond_fn`` of ``sample``:
``scale * grad_x log softmax(classifier(x_t, t))[y]`` by ``jax.grad``, inside the same scan; both kinds
combine (a class-conditional model guided by its null class and by a classifier)::

    cond_fn = classifier_cond_fn(ADMLogitsFn(classifier))
    x0 = sample(eps_fn, x_T, seq, ac, eps_fn_args=(params, labels), cond_fn=cond_fn,
                cond_fn_args=(classifier_params, labels, 1.0))

:func:`labels_for` makes the labels of a batch (one class, or image ``i`` of class ``i mod K``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax.validation import GuidanceError, check_class_label, check_guidance_args

__all__ = ["GuidanceError", "GuidedEpsFn", "guided_eps_fn", "combine_guidance", "ClassifierCondFn",
           "classifier_cond_fn", "labels_for", "parse_label"]


def combine_guidance(eps_cond: Any, eps_uncond: Any, scale: Any) -> Any:
    """``eps_uncond + s (eps_cond - eps_uncond)``, as ``s eps_cond + (1 - s) eps_uncond`` (exact at
    s = 0 and s = 1)."""
    scale = jnp.asarray(scale, jnp.result_type(eps_cond))
    return scale * eps_cond + (1 - scale) * eps_uncond


@dataclasses.dataclass(frozen=True)
class GuidedEpsFn:
    """``eps_fn(x, t, params, labels, scale)``: the guided estimate from one batched call of
    ``base(x, t, params, labels)``.

    Frozen (hashable by its fields), so ``sample`` -- which treats its eps function as static --
    compiles once per ``(base, null_label)``.
    """

    base: Callable[..., Any]
    null_label: int

    def __call__(self, x: Any, t: Any, params: Any, labels: Any, scale: Any) -> Any:
        batch = x.shape[0]
        check_guidance_args(labels, scale, batch, self.null_label, "guided_eps_fn")
        labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))
        t = jnp.broadcast_to(jnp.asarray(t), (batch,))
        null = jnp.full((batch,), self.null_label, jnp.int32)
        out = self.base(jnp.concatenate([x, x]), jnp.concatenate([t, t]), params,
                        jnp.concatenate([labels, null]))
        return combine_guidance(out[:batch], out[batch:], scale)


def guided_eps_fn(eps_fn: Callable[..., Any], null_label: int) -> GuidedEpsFn:
    """Classifier-free guidance around a class-conditional ``eps_fn(x, t, params, labels)``.

    Args:
      eps_fn: the conditional network, e.g. ``ddim_jax.models.eps_fn_for(model)`` of a UNet with
        ``num_classes = K``, or any function of that signature (it must be hashable: a module-level
        function or one cached per model, so ``sample`` reuses its compilation).
      null_label: the label of the unconditional ("null") class: ``K`` for our UNet.

    Returns:
      ``eps_fn(x, t, params, labels, scale)`` for ``sample(..., eps_fn_args=(params, labels, scale))``;
      ``labels`` int ``[B]`` (or a scalar), ``scale`` a float (0 = unconditional, 1 = conditional,
      > 1 guided). Each call is one network call on ``2 B`` images.
    """
    return GuidedEpsFn(eps_fn, int(null_label))


@dataclasses.dataclass(frozen=True)
class ClassifierCondFn:
    """``cond_fn(x, t, params, labels, scale) = scale * grad_x sum_b log softmax(logits_fn(x, t,
    params))[b, labels[b]]``: ``[B, ...]``, guided-diffusion's ``cond_fn`` of ``classifier_sample.py``.
    The log-probabilities are taken in float32; frozen, so ``sample`` compiles once per classifier."""

    logits_fn: Callable[..., Any]

    def __call__(self, x: Any, t: Any, params: Any, labels: Any, scale: Any) -> Any:
        labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), x.shape[:1])

        def selected_log_probs(x):
            log_probs = jax.nn.log_softmax(self.logits_fn(x, t, params).astype(jnp.float32), axis=-1)
            return jnp.take_along_axis(log_probs, labels[:, None], axis=-1).sum()

        return jnp.asarray(scale, x.dtype) * jax.grad(selected_log_probs)(x)


def classifier_cond_fn(logits_fn: Callable[..., Any]) -> ClassifierCondFn:
    """Classifier guidance from ``logits_fn(x [B, ...], t int32 [B], params) -> [B, K]`` (hashable;
    e.g. :class:`ddim_jax.models.adm_calls.ADMLogitsFn`). Pass the result as ``sample``'s ``cond_fn``
    with ``cond_fn_args=(classifier_params, labels, scale)``."""
    return ClassifierCondFn(logits_fn)


def parse_label(value: str | int | None, num_classes: int) -> str | int | None:
    """``"all"``, a class ``0 .. K-1`` (from an int or its string), or None; raises
    :class:`GuidanceError` for anything else (a float, a bool, -1, K: see
    :func:`ddim_jax.validation.check_class_label`)."""
    if value is None or value == "all":
        return value
    return check_class_label(value, num_classes, "--label")


def labels_for(num: int, mode: str | int, num_classes: int, start: int = 0) -> np.ndarray:
    """The labels of images ``start .. start + num - 1``: int32 ``[num]``.

    ``mode="all"``: image ``i`` is of class ``i mod K`` (so every class appears; a grid of K columns
    has one class per column); an int ``c`` (or its text): every image of class ``c``; ``"null"``:
    the null class ``K`` (unconditional), the only way to ask for it. Raises
    :class:`GuidanceError` for any other mode (a float, -1, K, ...).
    """
    if num_classes < 1:
        raise GuidanceError("labels_for needs a class-conditional model (num_classes > 0)")
    index = np.arange(start, start + num)
    if isinstance(mode, str) and mode == "all":
        return (index % num_classes).astype(np.int32)
    if isinstance(mode, str) and mode == "null":
        return np.full(num, num_classes, np.int32)
    return np.full(num, check_class_label(mode, num_classes, "labels_for: label"), np.int32)
