"""Beta schedules, alphas_cumprod and timestep sub-sequences against float64 references."""
import math

import numpy as np
import pytest

from ddim_jax import SCHEDULE_SPACINGS, SPACINGS, alphas_cumprod_from_betas, log_snr, make_betas, timestep_sequence

ALPHAS_LINEAR = alphas_cumprod_from_betas(make_betas("linear", 1000))


def test_linear_schedule_matches_ddpm():
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    alphas_cumprod = np.asarray(alphas_cumprod_from_betas(betas))
    assert alphas_cumprod.dtype == np.float32
    reference = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(alphas_cumprod, reference, rtol=2e-6)
    # DDPM's linear schedule ends with alpha-bar_T ~ 4.04e-5 (sqrt ~ 0.00635): the data is
    # almost fully destroyed at t = T-1.
    assert alphas_cumprod[-1] == pytest.approx(4.035e-5, rel=1e-3)
    # alpha_0 = 1 - beta_0: index 0 is the first *noisy* step, not the clean data.
    assert alphas_cumprod[0] == pytest.approx(1 - 1e-4, abs=1e-7)


@pytest.mark.parametrize("kind", ["linear", "quad", "cosine", "const", "jsd", "sigmoid"])
def test_every_schedule_is_a_valid_variance_sequence(kind):
    betas = make_betas(kind, 1000)
    assert betas.shape == (1000,)
    assert np.all(betas > 0) and np.all(betas <= 1)
    alphas_cumprod = np.asarray(alphas_cumprod_from_betas(betas))
    assert np.all(np.diff(alphas_cumprod) <= 0)


def test_quad_and_cosine_formulas():
    quad = make_betas("quad", 10, 1e-4, 2e-2)
    np.testing.assert_allclose(np.sqrt(quad), np.linspace(0.01, math.sqrt(0.02), 10), rtol=1e-12)
    cosine = make_betas("cosine", 1000)

    def f(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 1, 500, 998):
        assert cosine[t] == pytest.approx(min(1 - f(t + 1) / f(t), 0.999), rel=1e-10)
    assert cosine[-1] == pytest.approx(0.999)
    np.testing.assert_allclose(make_betas("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 0.999])


@pytest.mark.parametrize("kind", ["trailing", "linspace"])
def test_jsd_schedule_gives_finite_samples_through_the_last_timestep(kind):
    """The authors' jsd betas end in 1, so alphas_cumprod[T-1] = 0 and x0_hat at T-1 is NaN."""
    from ddim_jax import sample

    alphas_cumprod = alphas_cumprod_from_betas(make_betas("jsd", 50))
    assert float(alphas_cumprod[-1]) > 0
    seq = timestep_sequence(10, 50, kind)
    assert seq[0] == 49
    x0 = sample(lambda x, t: 0.1 * x, np.ones((2, 3), np.float32), seq, alphas_cumprod)
    assert np.all(np.isfinite(np.asarray(x0)))
    with pytest.raises(ValueError, match=r"every beta must lie in \(0, 1\)"):
        alphas_cumprod_from_betas([0.5, 1.0])


def test_quad_is_the_authors_arithmetic_wherever_theirs_has_no_repeats():
    """Theirs: int(linspace(0, sqrt(0.8 T), S) ** 2). S = 6 gives 288 there (exactly 0.8 * 1000 * (2/5)^2)."""
    assert 288 in timestep_sequence(6, 1000, "quad")
    compared = 0
    for num_steps in range(2, 201):
        authors = (np.linspace(0, np.sqrt(1000 * 0.8), num_steps) ** 2).astype(int)
        if len(set(authors)) < num_steps:
            continue   # theirs repeats steps here; ours pushes the repeats up to distinct steps
        np.testing.assert_array_equal(timestep_sequence(num_steps, 1000, "quad")[::-1], authors, err_msg=num_steps)
        compared += 1
    assert compared >= 25  # S = 2..28 and a few more


@pytest.mark.parametrize("num_timesteps", [1, 7, 50, 1000])
@pytest.mark.parametrize("kind", SPACINGS)
def test_exactly_S_distinct_descending_steps_for_every_S(kind, num_timesteps):
    for num_steps in range(1, num_timesteps + 1):
        seq = timestep_sequence(num_steps, num_timesteps, kind)
        assert seq.dtype == np.int32 and seq.shape == (num_steps,), (kind, num_steps)
        assert np.all(np.diff(seq) < 0), (kind, num_steps, seq)
        assert seq.min() >= 0 and seq.max() <= num_timesteps - 1, (kind, num_steps)


def test_uniform_matches_authors_when_S_divides_T_and_fixes_their_extra_step():
    for num_steps in (10, 20, 50, 100, 1000):
        authors = np.arange(0, 1000, 1000 // num_steps)[::-1]
        np.testing.assert_array_equal(timestep_sequence(num_steps, 1000, "uniform"), authors)
    # The authors' range(0, T, T // S) gives 31 steps for S = 30: we give exactly 30.
    assert len(range(0, 1000, 1000 // 30)) == 31
    seq = timestep_sequence(30, 1000, "uniform")
    assert seq.shape == (30,) and seq[-1] == 0 and seq[0] == 966


def test_quad_matches_authors_where_they_have_no_repeats_and_removes_repeats():
    authors = (np.linspace(0, np.sqrt(1000 * 0.8), 10) ** 2).astype(int)
    np.testing.assert_array_equal(timestep_sequence(10, 1000, "quad")[::-1], authors)
    authors_100 = (np.linspace(0, np.sqrt(1000 * 0.8), 100) ** 2).astype(int)
    assert len(np.unique(authors_100)) < 100  # their quad sequence wastes model calls
    ours = timestep_sequence(100, 1000, "quad")
    assert len(np.unique(ours)) == 100
    # Away from the crowded start the steps are the authors' own.
    np.testing.assert_array_equal(ours[::-1][20:], authors_100[20:])


def test_leading_trailing_linspace_reference_values():
    np.testing.assert_array_equal(timestep_sequence(3, 1000, "leading"), [666, 333, 0])
    np.testing.assert_array_equal(timestep_sequence(3, 1000, "trailing"), [999, 666, 332])
    np.testing.assert_array_equal(timestep_sequence(4, 1000, "linspace"), [999, 666, 333, 0])
    np.testing.assert_array_equal(timestep_sequence(10, 1000, "trailing")[:3], [999, 899, 799])
    # float64 rounding: the float32 linspace would give 665 for the middle step of S = 4.
    assert timestep_sequence(4, 1000, "linspace")[1] == 666
    np.testing.assert_array_equal(timestep_sequence(1000, 1000, "trailing"), np.arange(999, -1, -1))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: timestep_sequence(0, 1000), "num_steps"),
        (lambda: timestep_sequence(1001, 1000), "num_steps"),
        (lambda: timestep_sequence(10, 1000, "cubic"), "spacing"),
        (lambda: timestep_sequence(2.5, 1000), "num_steps"),
        (lambda: make_betas("exponential", 1000), "schedule"),
        (lambda: make_betas("linear", 0), "num_timesteps"),
        (lambda: make_betas("linear", 10, beta_start=0.1, beta_end=0.01), "beta_start"),
        (lambda: alphas_cumprod_from_betas(np.array([0.1, 1.5])), "beta"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_logsnr_gives_exactly_S_distinct_steps_for_every_S_and_is_uniform_in_log_snr():
    alphas_cumprod = alphas_cumprod_from_betas(make_betas("linear", 1000))
    for num_steps in range(1, 1001):
        seq = timestep_sequence(num_steps, 1000, "logsnr", alphas_cumprod=alphas_cumprod)
        assert seq.dtype == np.int32 and seq.shape == (num_steps,), num_steps
        assert np.all(np.diff(seq) < 0), (num_steps, seq)
        assert seq.min() >= 0 and seq.max() <= 999, num_steps
    lam = log_snr(alphas_cumprod)
    np.testing.assert_allclose(lam, 0.5 * np.log(np.asarray(alphas_cumprod, np.float64) / (1 - np.asarray(
        alphas_cumprod, np.float64))), rtol=1e-12)
    seq = timestep_sequence(10, 1000, "logsnr", alphas_cumprod=alphas_cumprod)
    assert seq[0] == 999 and seq[-1] == 0  # both ends of the schedule
    steps = np.diff(lam[seq])
    np.testing.assert_allclose(steps, (lam[0] - lam[-1]) / 9, rtol=0.05)  # uniform up to rounding t
    # Not what the t-based kinds give: dense near t = 0, sparse near T - 1.
    assert seq[1] < 900 and seq[-2] < 10
    # Other schedules, including one whose last alpha is 0 (lambda = -inf is clamped).
    for kind in ("cosine", "jsd", "quad"):
        alphas_cumprod = alphas_cumprod_from_betas(make_betas(kind, 1000))
        for num_steps in (1, 2, 10, 50, 999, 1000):
            seq = timestep_sequence(num_steps, 1000, "logsnr", alphas_cumprod=alphas_cumprod)
            assert seq.shape == (num_steps,) and np.all(np.diff(seq) < 0) and seq.min() >= 0, (kind, num_steps)


def test_logsnr_needs_the_schedule_and_the_other_kinds_ignore_it():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        timestep_sequence(10, 1000, "logsnr")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        timestep_sequence(10, 1000, "logsnr", alphas_cumprod=np.ones(500) * 0.5)
    alphas_cumprod = alphas_cumprod_from_betas(make_betas("linear", 1000))
    for kind in SPACINGS:
        np.testing.assert_array_equal(
            timestep_sequence(10, 1000, kind, alphas_cumprod=alphas_cumprod), timestep_sequence(10, 1000, kind))
    assert "logsnr" in SCHEDULE_SPACINGS and "logsnr" not in SPACINGS


def test_logsnr_clips_lambda_at_minus_5_1_like_the_references():
    """DPM-Solver and diffusers (``lambda_min_clipped=-5.1``) start a log-SNR grid no lower than
    lambda = -5.1: the cosine schedule reaches -9.9 at t = 999, and an unclipped grid spends its
    first steps in pure noise ([999, 998, 997, 994, ...] at S = 10)."""
    cosine = alphas_cumprod_from_betas(make_betas("cosine", 1000))
    lam = log_snr(cosine)
    seq = timestep_sequence(10, 1000, "logsnr", alphas_cumprod=cosine)
    first = int(np.searchsorted(-lam, 5.1))  # the first t whose lambda is below -5.1
    assert seq[0] in (first - 1, first), (seq, first)
    np.testing.assert_allclose(np.diff(lam[seq][:-1]), (lam[0] + 5.1) / 9, rtol=0.1)
    # The linear schedule ends above the clip (lambda(999) = -5.07): unchanged, starts at T - 1.
    assert timestep_sequence(10, 1000, "logsnr", alphas_cumprod=ALPHAS_LINEAR)[0] == 999


@pytest.mark.parametrize("kind", ["logsnr", "karras"])
@pytest.mark.parametrize("value", [0.5, 1.0])
def test_schedule_spacings_refuse_a_schedule_whose_log_snr_does_not_fall(value, kind):
    with pytest.raises(ValueError, match=f"{kind}.*schedule"), np.errstate(all="raise"):
        timestep_sequence(5, 1000, kind, alphas_cumprod=np.full(1000, value))


@pytest.mark.parametrize("num_steps", [5, 10, 20, 50])
def test_karras_spacing_matches_diffusers_karras_sigmas(num_steps):
    """Karras et al. (2022) Eq. 5 with rho = 7 over the schedule's sigma range, each sigma mapped
    to the nearest t in log sigma (k-diffusion's quantized ``sigma_to_t``); diffusers'
    ``use_karras_sigmas=True`` interpolates t in log sigma and rounds, which can only differ by
    one step where a sigma falls half-way."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    scheduler.alphas_cumprod = torch.from_numpy(np.asarray(ALPHAS_LINEAR).copy())
    scheduler.set_timesteps(num_steps)
    ours = timestep_sequence(num_steps, 1000, "karras", alphas_cumprod=ALPHAS_LINEAR)
    theirs = scheduler.timesteps.numpy()
    assert np.abs(ours.astype(int) - theirs).max() <= 1 and np.mean(ours == theirs) >= 0.8, (ours, theirs)
    assert ours[0] == 999 and ours[-1] == 0
