"""Noise schedules and timestep sub-sequences.

Conventions (docs/conventions.md): the DDIM paper writes alpha_t for what DDPM calls
alpha-bar_t; here it is ``alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])`` for the timestep
index ``t`` in ``0 .. T-1``.

Everything here is host-side NumPy in float64: schedules and step sequences are built once,
before tracing, and rounding them in float32 moves some steps (e.g. 665 vs 666).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "quad", "cosine", "const", "jsd", "sigmoid")
SPACINGS = ("uniform", "quad", "leading", "trailing", "linspace")
# The largest beta a schedule may reach: beta = 1 would make alphas_cumprod 0 from there on.
_MAX_BETA = 0.999
# Spacings that depend on the noise schedule: ``timestep_sequence`` needs ``alphas_cumprod=`` for
# them. They are kept out of SPACINGS because the callers that iterate SPACINGS (the config check
# of ``sampling.skip``, sample.py's ``--skip``) call ``timestep_sequence`` without a schedule; the
# CLI accepts them by passing ``alphas_cumprod=`` always (it is ignored by the other kinds).
SCHEDULE_SPACINGS = ("logsnr", "karras")
# guided-diffusion's respacing (its ``respace.space_timesteps``): ``"ddim"`` (an integer stride giving
# exactly S steps; not every S has one) and ``"respace"`` (section counts: ``"respace"`` alone is
# one section of S steps, ``"respace:10,15,20"`` three sections whose counts sum to S). Kept out of
# SPACINGS because ``"ddim"`` does not exist for every S.
RESPACINGS = ("ddim", "respace")
# Every named spacing (a "respace:c1,c2,..." kind is one too: see is_spacing_kind).
ALL_SPACINGS = SPACINGS + SCHEDULE_SPACINGS + RESPACINGS
# rho of the Karras et al. (2022) sigma spacing (their Eq. 5; k-diffusion's get_sigmas_karras).
KARRAS_RHO = 7.0
# The lowest lambda = log(alpha / sigma) a log-SNR grid starts from: the official DPM-Solver and
# diffusers (``lambda_min_clipped``) clip there, so that a schedule reaching far lower lambda
# (cosine: -9.9 at t = 999) does not spend steps in pure noise.
LAMBDA_MIN_CLIPPED = -5.1


def make_betas(
    kind: str,
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 2e-2,
) -> np.ndarray:
    """Returns the forward-process variances ``betas``, float64 ``[T]``.

    Args:
      kind: ``"linear"`` (DDPM: linspace(beta_start, beta_end)), ``"quad"`` (linear in
        sqrt(beta)), ``"cosine"`` (Nichol & Dhariwal 2021, s = 0.008, betas capped at 0.999;
        ignores beta_start / beta_end), ``"const"`` (beta_end everywhere), ``"jsd"``
        (1/T, 1/(T-1), ..., 1) or ``"sigmoid"`` (sigmoid over [-6, 6] scaled to
        [beta_start, beta_end]). The non-cosine kinds follow the DDIM authors' code.
      num_timesteps: T, the number of training timesteps.
      beta_start, beta_end: the first and last beta of the linear-type schedules.
    """
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"make_betas: unknown schedule kind {kind!r}; expected one of {BETA_SCHEDULES}")
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"make_betas: num_timesteps must be a positive int, got {num_timesteps!r}")
    if not (0.0 < beta_start <= beta_end < 1.0):
        raise ValueError(
            f"make_betas: need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    num_timesteps = int(num_timesteps)
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    elif kind == "quad":
        betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=np.float64) ** 2
    elif kind == "const":
        betas = np.full(num_timesteps, beta_end, dtype=np.float64)
    elif kind == "jsd":
        betas = np.minimum(1.0 / np.linspace(num_timesteps, 1, num_timesteps, dtype=np.float64), _MAX_BETA)
    elif kind == "sigmoid":
        ramp = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
        betas = 1.0 / (1.0 + np.exp(-ramp)) * (beta_end - beta_start) + beta_start
    else:  # cosine
        offset = 0.008
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        alpha_bar = np.cos((steps + offset) / (1.0 + offset) * math.pi / 2.0) ** 2
        betas = np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], _MAX_BETA)
    return betas


def alphas_cumprod_from_betas(betas) -> jnp.ndarray:
    """``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])`` (the paper's alpha_t), float32 ``[T]``.

    The product is taken in float64 on the host and cast once, so long schedules do not
    accumulate float32 rounding.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"alphas_cumprod_from_betas: betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0.0) & (betas < 1.0)):
        raise ValueError("alphas_cumprod_from_betas: every beta must lie in (0, 1) (beta = 1 makes alphas_cumprod 0, "
                         "where x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) is undefined)")
    return jnp.asarray(np.cumprod(1.0 - betas), dtype=jnp.float32)


def make_alphas_cumprod(diffusion: Mapping[str, Any]) -> jnp.ndarray:
    """``alphas_cumprod`` float32 ``[T]`` of a run config's ``diffusion`` section (``beta_schedule``,
    ``num_timesteps``, ``beta_start``, ``beta_end``)."""
    betas = make_betas(diffusion["beta_schedule"], num_timesteps=diffusion["num_timesteps"],
                       beta_start=diffusion["beta_start"], beta_end=diffusion["beta_end"])
    return alphas_cumprod_from_betas(betas)


def _strictly_increasing_in_range(steps: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Nudges integer steps into a strictly increasing sequence inside [0, T-1].

    The ideal (real-valued) steps of every spacing are already increasing; rounding can only
    create ties, which a forward pass (push up) and a backward pass (push down, from T-1)
    remove while moving each step as little as possible. Feasible whenever S <= T.
    """
    steps = steps.astype(np.int64).copy()
    for i in range(1, steps.size):
        steps[i] = max(steps[i], steps[i - 1] + 1)
    steps[-1] = min(steps[-1], num_timesteps - 1)
    for i in range(steps.size - 2, -1, -1):
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return steps


def log_snr(alphas_cumprod) -> np.ndarray:
    """``lambda_t = log(alpha_t / sigma_t) = 0.5 log(a_t / (1 - a_t))``, float64 ``[T]`` (host side).

    ``a_t = 0`` (a schedule whose last beta is 1, e.g. ``"jsd"``) is clamped to 1e-20 so that
    lambda stays finite (about -23).
    """
    alphas_cumprod = np.clip(np.asarray(alphas_cumprod, dtype=np.float64), 1e-20, None)
    return 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))


def _falling_log_snr(alphas_cumprod) -> np.ndarray:
    """``log_snr`` of a schedule that a log-SNR grid can be laid on: alphas_cumprod in (0, 1) at
    t = 0 and lambda lower at T - 1 than at 0; a ``ValueError`` naming the schedule otherwise."""
    values = np.asarray(alphas_cumprod, dtype=np.float64)
    if not np.all(np.isfinite(values)) or values.max() >= 1.0 or values.min() < 0.0:
        raise ValueError("timestep_sequence: kinds 'logsnr' and 'karras' need a schedule with alphas_cumprod in "
                         "[0, 1), "
                         f"got values in [{values.min()}, {values.max()}]")
    lam = log_snr(values)
    if not lam[-1] < lam[0]:
        raise ValueError("timestep_sequence: kinds 'logsnr' and 'karras' need a schedule whose log-SNR falls over t; "
                         f"this schedule's lambda goes from {lam[0]:.3g} (t = 0) to {lam[-1]:.3g} (t = T-1), e.g. a "
                         "constant alphas_cumprod")
    return lam


def _respace_kind(kind: str) -> bool:
    return kind in RESPACINGS or kind.startswith("respace:")


def is_spacing_kind(kind: Any) -> bool:
    """Whether ``kind`` names a spacing of :func:`timestep_sequence` (its counts are checked there)."""
    return isinstance(kind, str) and (kind in SPACINGS + SCHEDULE_SPACINGS or _respace_kind(kind))


def section_counts(kind: str, num_steps: int) -> list[int]:
    """The section counts of a ``"respace"`` / ``"respace:c1,c2,..."`` kind for S = ``num_steps``
    (``[S]`` for plain ``"respace"``); ``ValueError`` when they are not positive integers summing to S."""
    if kind == "respace":
        return [int(num_steps)]
    text = kind[len("respace:"):]
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"timestep_sequence: {kind!r}: section counts must be comma-separated integers") from None
    if min(counts) < 1:
        raise ValueError(f"timestep_sequence: {kind!r}: every section count must be at least 1")
    if sum(counts) != num_steps:
        raise ValueError(f"timestep_sequence: {kind!r}: the section counts sum to {sum(counts)}, not to the "
                         f"number of steps {num_steps} (pass --steps {sum(counts)})")
    return counts


def respaced_timesteps(num_steps: int, num_timesteps: int, kind: str) -> np.ndarray:
    """guided-diffusion's ``space_timesteps`` (``timestep_respacing``), ascending int64 ``[S]``.

    ``"ddim"``: ``range(0, T, i)`` for the smallest integer stride ``i >= 1`` (``i < T``) giving
    exactly S steps (its ``"ddimS"``; ``ValueError`` when none does, e.g. S = T - 1). Section counts
    (its ``"c1,c2,..."``): T is split into ``n = len(counts)`` parts of ``T // n`` steps, the first
    ``T % n`` one longer; a part of ``size`` steps starting at ``start`` keeps
    ``start + round(j * (size - 1) / (c - 1))`` (the stride accumulated in floats, round half to
    even as Python's ``round``) for ``j < c`` (stride 1 when ``c = 1``).
    """
    if kind == "ddim":
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == num_steps:
                return np.arange(0, num_timesteps, stride, dtype=np.int64)
        raise ValueError(f"timestep_sequence: kind 'ddim' cannot make exactly {num_steps} steps out of "
                         f"{num_timesteps} with an integer stride (use 'respace' for any S)")
    counts = section_counts(kind, num_steps)
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for index, count in enumerate(counts):
        size = size_per + (1 if index < extra else 0)
        if size < count:
            raise ValueError(f"timestep_sequence: {kind!r}: cannot take {count} steps from a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return np.asarray(sorted(set(steps)), dtype=np.int64)


def timestep_sequence(
    num_steps: int, num_timesteps: int = 1000, kind: str = "uniform", *, alphas_cumprod=None
) -> np.ndarray:
    """The S timesteps a sampler visits, int32 ``[S]``, strictly descending, in ``[0, T-1]``.

    The generative process of the paper (section 4.2) runs on a sub-sequence tau of
    ``1..T``; here timesteps are 0-based, and the step after the last one is ``t_prev = -1``
    (alpha = 1). Kinds, as ascending real-valued positions ``p_i`` for ``i = 0..S-1``:

    - ``"uniform"``: ``floor(i * T / S)``: the authors' ``range(0, T, T // S)`` when S divides
      T, and exactly S steps when it does not (theirs gives S + 1 for e.g. S = 30).
    - ``"quad"``: the authors' ``int(linspace(0, sqrt(0.8 T), S) ** 2)`` (used for CIFAR-10), in
      their arithmetic, so every S whose sequence has no repeats gives exactly their steps. Where
      theirs repeats a step (small gaps near t = 0 at large S, e.g. S = 100 has 96 distinct), each
      repeat is pushed up to the next free step, so there are exactly S distinct steps.
    - ``"leading"``: ``i * (T // S)`` (integer stride from 0).
    - ``"trailing"``: ``round(T - i * T / S) - 1``: ends at T-1.
    - ``"linspace"``: ``round(linspace(0, T-1, S))``: both ends included.
    - ``"logsnr"``: uniform in log-SNR ``lambda_t = log(alpha_t / sigma_t)`` (the spacing
      DPM-Solver recommends, Lu et al. 2022 arXiv 2206.00927 section 3.3): ``S`` targets
      ``linspace(max(lambda_{T-1}, -5.1), lambda_0, S)`` (both ends included; S = 1 gives the
      first; lambda clipped at -5.1 as DPM-Solver and diffusers' ``lambda_min_clipped`` do), each
      mapped to the real-valued t where the float64 lambda of ``alphas_cumprod`` takes it
      (piecewise-linear interpolation) and rounded. Needs ``alphas_cumprod=`` (``[T]``).
    - ``"karras"``: the sigma spacing of Karras et al. 2022 (EDM, Eq. 5, rho = 7) over the
      schedule's range of ``s_t = sqrt((1 - a_t) / a_t)``: ``(s_max^(1/rho) + i / (S - 1)
      (s_min^(1/rho) - s_max^(1/rho)))^rho``, each mapped to the t whose ``s_t`` is nearest in
      log (k-diffusion's ``DiscreteEpsDDPMDenoiser`` with ``quantize=True``); ``s_max`` is
      clipped at ``e^5.1`` as lambda is for ``"logsnr"`` (k-diffusion does not clip; no effect on
      the linear schedule, whose ``s_max`` is ``e^5.07``). Needs ``alphas_cumprod=``.
    - ``"ddim"``, ``"respace"``, ``"respace:c1,c2,..."``: guided-diffusion's ``timestep_respacing``
      ``"ddimS"``, ``"S"`` and ``"c1,c2,..."`` (:func:`respaced_timesteps`); ``"ddim"`` exists only
      for the S that an integer stride reaches, section counts must sum to S.

    Every kind of ``SPACINGS`` and ``SCHEDULE_SPACINGS`` returns exactly S distinct steps for every
    1 <= S <= T.

    Args:
      num_steps: S.
      num_timesteps: T.
      kind: one of ``SPACINGS``, ``SCHEDULE_SPACINGS``, ``RESPACINGS`` or ``"respace:c1,c2,..."``.
      alphas_cumprod: ``[T]``, required by the schedule-dependent kinds (``"logsnr"``) and
        ignored by the others, so a caller can always pass it.
    """
    if not is_spacing_kind(kind):
        raise ValueError(
            f"timestep_sequence: unknown spacing kind {kind!r}; expected one of {ALL_SPACINGS} or 'respace:c1,c2,...'"
        )
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"timestep_sequence: num_timesteps must be a positive int, got {num_timesteps!r}")
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool):
        raise ValueError(f"timestep_sequence: num_steps must be an int, got {num_steps!r}")
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"timestep_sequence: num_steps must be in [1, num_timesteps={num_timesteps}], got {num_steps}"
        )
    num_steps, num_timesteps = int(num_steps), int(num_timesteps)
    if kind in SCHEDULE_SPACINGS:
        if alphas_cumprod is None:
            raise ValueError(f"timestep_sequence: kind={kind!r} needs alphas_cumprod= (the schedule, [T])")
        if np.shape(alphas_cumprod) != (num_timesteps,):
            raise ValueError(
                f"timestep_sequence: alphas_cumprod must have shape [T] = ({num_timesteps},), "
                f"got {np.shape(alphas_cumprod)}"
            )
    if _respace_kind(kind):
        return respaced_timesteps(num_steps, num_timesteps, kind)[::-1].astype(np.int32).copy()
    index = np.arange(num_steps, dtype=np.float64)
    if kind == "uniform":
        ascending = np.floor(index * num_timesteps / num_steps)
    elif kind == "quad":
        if num_steps == 1:
            ascending = np.zeros(1)
        else:
            ascending = np.floor(np.linspace(0.0, math.sqrt(0.8 * num_timesteps), num_steps) ** 2)
    elif kind == "leading":
        ascending = index * (num_timesteps // num_steps)
    elif kind == "trailing":
        # floor(x + 0.5) rather than np.round: round-half-to-even can merge neighbours 1 apart.
        ascending = (np.floor(num_timesteps - index * num_timesteps / num_steps + 0.5) - 1)[::-1]
    elif kind == "linspace":
        ascending = np.floor(np.linspace(0.0, num_timesteps - 1, num_steps) + 0.5)
    elif kind == "karras":
        log_sigma = -_falling_log_snr(alphas_cumprod)  # log s_t = -lambda_t, increasing in t
        ramp = np.linspace(0.0, 1.0, num_steps)
        top = min(log_sigma[-1], -LAMBDA_MIN_CLIPPED)  # the same clip as logsnr (cosine: s_max 2e4 -> 164)
        high, low = np.exp(top / KARRAS_RHO), np.exp(log_sigma[0] / KARRAS_RHO)
        sigmas = (high + ramp * (low - high)) ** KARRAS_RHO  # descending
        nearest = np.abs(np.log(sigmas)[:, None] - log_sigma[None, :]).argmin(axis=1)
        ascending = nearest[::-1].astype(np.float64)
    else:  # logsnr
        lam = _falling_log_snr(alphas_cumprod)
        targets = np.linspace(max(lam[-1], LAMBDA_MIN_CLIPPED), lam[0], num_steps)  # descending t
        positions = np.interp(targets, lam[::-1], np.arange(num_timesteps - 1, -1, -1, dtype=np.float64))
        ascending = np.floor(positions + 0.5)[::-1]
    ascending = _strictly_increasing_in_range(ascending, num_timesteps)
    return ascending[::-1].astype(np.int32).copy()
