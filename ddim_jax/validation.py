"""Argument checks shared by the DDIM math and the samplers (Python side, before tracing).

Every check names the calling function (``fn``) and the offending argument, and raises a
``ValueError`` (:class:`GuidanceError`, also a :class:`~ddim_jax.errors.UserError`, for the labels
and scales of classifier-free guidance). Checks on *values* (timestep ranges, eta) run only when the value is concrete,
i.e. when the public function is called outside ``jit``; shape and dtype checks always run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax.errors import UserError

PREDICTION_TYPES = ("eps", "x0", "v")


class GuidanceError(UserError, ValueError):
    """A class label or guidance scale that is not one: a non-integer or out-of-range label, a
    label array of the wrong length, a non-finite scale."""


def concrete(value) -> np.ndarray | None:
    """The value as a NumPy array, or None when it is traced inside a transformation."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def check_alphas_cumprod(alphas_cumprod, fn: str) -> int:
    """``alphas_cumprod`` must be ``[T]``; when concrete, its values must be finite, in (0, 1] and
    non-increasing in t (the cumulative product of ``1 - beta``). Betas passed by mistake (small
    and increasing), zeros, NaN, negatives or values above 1 are refused by name: they would give
    NaN or silent garbage. Returns T."""
    shape = np.shape(alphas_cumprod)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"{fn}: alphas_cumprod must be a non-empty 1-D array [T], got shape {shape}")
    values = concrete(alphas_cumprod)
    if values is None:
        return shape[0]
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"{fn}: alphas_cumprod must be floating point, got dtype {values.dtype}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{fn}: alphas_cumprod contains NaN or infinite values")
    if values.min() <= 0.0 or values.max() > 1.0:
        raise ValueError(f"{fn}: alphas_cumprod must lie in (0, 1], got values in [{values.min()}, {values.max()}]")
    if values.size > 1 and np.any(np.diff(values) > 0):
        raise ValueError(f"{fn}: alphas_cumprod must be non-increasing in t (the cumulative product of 1 - betas); "
                         "got increasing values: betas passed instead of alphas_cumprod? "
                         "Use alphas_cumprod_from_betas(betas)")
    return shape[0]


def check_floating(x, fn: str, name: str) -> None:
    """Refuse integer or boolean arrays where the math needs real numbers (an int32 ``x_T`` would
    be truncated at every step). Cast with ``x.astype(jnp.float32)`` first."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{fn}: {name} must be a floating-point array, got dtype {dtype}; "
                         f"cast it first (e.g. {name}.astype(jnp.float32))")


def check_batch(x, fn: str, name: str = "x") -> int:
    shape = np.shape(x)
    if len(shape) < 1:
        raise ValueError(f"{fn}: {name} must have a leading batch dimension [B, ...], got shape {shape}")
    return shape[0]


def check_same_shape(a, b, fn: str, name_a: str, name_b: str) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{fn}: {name_a} and {name_b} must have the same shape, got {np.shape(a)} and {np.shape(b)}")


def check_timestep(t, batch: int, num_timesteps: int, fn: str, name: str, allow_minus_one: bool) -> None:
    shape = np.shape(t)
    if shape not in ((), (batch,)):
        raise ValueError(f"{fn}: {name} must be a scalar or have shape [B] = ({batch},), got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(t), jnp.integer):
        raise ValueError(f"{fn}: {name} must be an integer timestep index, got dtype {jnp.result_type(t)}")
    value = concrete(t)
    if value is None:
        return
    low = -1 if allow_minus_one else 0
    if value.size and (value.min() < low or value.max() > num_timesteps - 1):
        raise ValueError(
            f"{fn}: {name} must lie in [{low}, T-1 = {num_timesteps - 1}], got values in [{value.min()}, {value.max()}]"
        )


def check_t_prev_below_t(t, t_prev, fn: str) -> None:
    t_value, t_prev_value = concrete(t), concrete(t_prev)
    if t_value is None or t_prev_value is None:
        return
    if np.any(t_prev_value >= t_value):
        raise ValueError(f"{fn}: t_prev must be smaller than t (the reverse process goes down in t); "
                         f"got t={t_value}, t_prev={t_prev_value}")


def check_reverse_step_args(fn: str, x_t, eps, t, t_prev, alphas_cumprod, noise=None) -> None:
    """The checks shared by every reverse step: shapes, timestep ranges and t_prev < t."""
    num_timesteps = check_alphas_cumprod(alphas_cumprod, fn)
    batch = check_batch(x_t, fn, "x_t")
    check_same_shape(x_t, eps, fn, "x_t", "eps")
    if noise is not None:
        check_same_shape(x_t, noise, fn, "x_t", "noise")
    check_timestep(t, batch, num_timesteps, fn, "t", allow_minus_one=False)
    check_timestep(t_prev, batch, num_timesteps, fn, "t_prev", allow_minus_one=True)
    check_t_prev_below_t(t, t_prev, fn)


def eta_problem(eta: float) -> str | None:
    """Why ``eta`` is no eta of Eq. 16 (None when it is): it must lie in [0, 1], since above 1 the
    square root of Eq. 12 goes negative. The one home of this rule; callers prefix their name for it."""
    if not 0.0 <= float(eta) <= 1.0:
        return f"must be in [0, 1] (0 = DDIM, 1 = DDPM), got {float(eta)}"
    return None


def num_steps_problem(name: str, num_steps: int, num_timesteps: int) -> str | None:
    """Why ``num_steps`` (called ``name`` in the message) is no sub-sequence length of a T-step
    model (None when it is): 1 <= S <= T."""
    if num_steps < 1:
        return f"{name} must be at least 1, got {num_steps}"
    if num_steps > num_timesteps:
        return f"{name}={num_steps} is above the model's number of training timesteps T={num_timesteps}"
    return None


def check_eta(eta, fn: str) -> None:
    """Raises ValueError when a concrete ``eta`` is not a scalar in [0, 1] (traced values pass)."""
    value = concrete(eta)
    if value is None:
        return
    if value.shape != ():
        raise ValueError(f"{fn}: eta must be a scalar, got shape {value.shape}")
    problem = eta_problem(float(value))
    if problem is not None:
        raise ValueError(f"{fn}: eta {problem}")


def check_prediction_type(prediction_type: str, fn: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"{fn}: unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def check_sequence(seq, num_timesteps: int, fn: str) -> None:
    shape = np.shape(seq)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"{fn}: seq must be a non-empty 1-D array of timesteps [S], got shape {shape}")
    if shape[0] > num_timesteps:
        raise ValueError(f"{fn}: seq has S = {shape[0]} steps, more than T = {num_timesteps}")
    if not jnp.issubdtype(jnp.result_type(seq), jnp.integer):
        raise ValueError(f"{fn}: seq must hold integer timesteps, got dtype {jnp.result_type(seq)}")
    values = concrete(seq)
    if values is None:
        return
    if values.min() < 0 or values.max() > num_timesteps - 1:
        raise ValueError(f"{fn}: seq values must lie in [0, T-1 = {num_timesteps - 1}], "
                         f"got [{values.min()}, {values.max()}]")
    if values.size > 1 and not np.all(np.diff(values) < 0):
        raise ValueError(f"{fn}: seq must be strictly descending (as timestep_sequence returns it), "
                         f"got {values.tolist()}")


def check_eps_fn(eps_fn, eps_fn_args, fn: str) -> tuple:
    if not callable(eps_fn):
        raise ValueError(f"{fn}: eps_fn must be callable as eps_fn(x, t, *eps_fn_args), got {type(eps_fn).__name__}")
    if not isinstance(eps_fn_args, (tuple, list)):
        raise ValueError(f"{fn}: eps_fn_args must be a tuple of extra arguments, got {type(eps_fn_args).__name__}")
    return tuple(eps_fn_args)


def check_class_label(value, num_classes: int, what: str) -> int:
    """One class ``0 .. K-1`` from an integer (not a bool) or its decimal text; returns it.

    Floats are refused, whole ones too (``1.7`` used to be read as class 1), and so is every label
    outside ``[0, K)``: the null class ``K`` is only reachable by its name (``labels_for(.., "null",
    K)``), never as a number (``-1`` used to wrap around to it). ``what`` starts each message
    (``"--label"``, ``"labels_for: label"``)."""
    if isinstance(value, str):
        try:
            label = int(value.strip())
        except ValueError:
            raise GuidanceError(f"{what} must be a class number or 'all', got {value!r}") from None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        label = int(value)
    else:
        raise GuidanceError(f"{what} must be an integer class number, got {value!r}")
    if not 0 <= label < num_classes:
        raise GuidanceError(f"{what} {label} is not a class of this model (0..{num_classes - 1})")
    return label


def check_guidance_args(labels, scale, batch: int, null_label: int, fn: str) -> None:
    """The labels and scale of a guided (or conditional) network call on a batch of ``batch``.

    ``labels``: a scalar or ``[B]`` of integers, each a class ``0 .. null_label - 1`` or the null
    class ``null_label`` itself (the padding of a short batch); ``scale``: a finite scalar. The
    shape and dtype checks always run (inside ``jit`` too); the values are checked when concrete,
    i.e. outside ``jit``: in ``sample``'s scan an out-of-range label would silently index another
    class embedding, or read NaN, and a non-finite scale gives NaN images."""
    shape = np.shape(labels)
    if shape not in ((), (batch,)):
        raise GuidanceError(f"{fn}: labels must be a scalar or have shape [B] = ({batch},), got shape {shape}")
    dtype = jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise GuidanceError(f"{fn}: labels must be integer class numbers, got dtype {dtype}")
    values = concrete(labels)
    if values is not None and values.size and (values.min() < 0 or values.max() > null_label):
        raise GuidanceError(f"{fn}: labels must be classes 0..{null_label - 1} or the null class {null_label}, "
                            f"got values in [{values.min()}, {values.max()}]")
    if np.shape(scale) != ():
        raise GuidanceError(f"{fn}: scale must be a scalar, got shape {np.shape(scale)}")
    value = concrete(scale)
    if value is not None and not np.isfinite(value):
        raise GuidanceError(f"{fn}: scale must be finite, got {float(value)}")
