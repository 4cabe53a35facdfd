"""The step functions against an independent float64 NumPy re-derivation of Eq. 4, 9, 12, 16.

The reference below works example by example in float64 and shares no code with ddim_jax.
eta = 1 is also checked against DDPM's posterior q(x_prev | x_t, x0) written in DDPM's own
form (Ho et al. 2020, Eq. 6-7), which is a different formula with the same value.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddim_jax import (
    alphas_cumprod_from_betas,
    ddim_sigma,
    ddim_step,
    eps_from_prediction,
    forward_marginal,
    generalized_step,
    make_betas,
    predict_x0,
    sigma_hat_step,
)

T = 1000
BETAS64 = np.linspace(1e-4, 0.02, T)
ALPHAS_CUMPROD64 = np.cumprod(1.0 - BETAS64)
ALPHAS_CUMPROD = alphas_cumprod_from_betas(make_betas("linear", T))
SHAPE = (5, 4, 4, 3)


def ref_alpha(t):
    return 1.0 if t < 0 else ALPHAS_CUMPROD64[t]


def ref_step(x_t, eps, t, t_prev, eta, z):
    """Eq. 9 + Eq. 16 + Eq. 12 for one example, float64."""
    a_t, a_prev = ref_alpha(t), ref_alpha(t_prev)
    x0_hat = (x_t - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
    sigma = eta * np.sqrt((1.0 - a_prev) / (1.0 - a_t)) * np.sqrt(1.0 - a_t / a_prev)
    return np.sqrt(a_prev) * x0_hat + np.sqrt(1.0 - a_prev - sigma**2) * eps + sigma * z


def ref_ddpm_posterior(x_t, x0, t, t_prev):
    """DDPM's q(x_prev | x_t, x0) for the jump t -> t_prev: mean and std (Ho et al. Eq. 7)."""
    a_t, a_prev = ref_alpha(t), ref_alpha(t_prev)
    beta = 1.0 - a_t / a_prev
    mean = np.sqrt(a_prev) * beta / (1.0 - a_t) * x0 + np.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t) * x_t
    std = np.sqrt((1.0 - a_prev) / (1.0 - a_t) * beta)
    return mean, std


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3)]


def per_example(t, batch=SHAPE[0]):
    return np.broadcast_to(np.asarray(t), (batch,))


def assert_close_float32(actual, expected, scale=1.0):
    # float32 precision, scaled by the size of the result (x0_hat at t near T-1 is amplified by
    # 1/sqrt(a_t) ~ 157): far below the effect of a wrong index, sign or square root.
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(
    "t, t_prev",
    [
        (999, 949),
        (500, 450),
        (20, 0),
        (0, -1),
        (49, -1),  # the last step of a 20-step uniform sequence: returns x0_hat
        ([999, 700, 300, 60, 5], [900, 699, 0, -1, -1]),  # per-example timesteps
    ],
)
def test_generalized_step_matches_float64_reference(eta, t, t_prev):
    x_t, eps, z = arrays()
    t_arr = jnp.asarray(t, jnp.int32)
    t_prev_arr = jnp.asarray(t_prev, jnp.int32)
    actual = generalized_step(x_t, eps, t_arr, t_prev_arr, ALPHAS_CUMPROD, eta, z)
    expected = np.stack(
        [
            ref_step(x_t[i].astype(np.float64), eps[i], ti, tpi, eta, z[i])
            for i, (ti, tpi) in enumerate(zip(per_example(t), per_example(t_prev)))
        ]
    )
    scale = 1.0 / np.sqrt(ref_alpha(int(np.max(t))))
    assert_close_float32(actual, expected, scale)
    if eta == 0.0:
        assert_close_float32(ddim_step(x_t, eps, t_arr, t_prev_arr, ALPHAS_CUMPROD), expected, scale)


@pytest.mark.parametrize("eta", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("t, t_prev", [(999, 899), (999, 989), (500, 400), (10, 0), (3, -1)])
def test_direction_coefficient_is_exact_where_the_direct_form_cancels(eta, t, t_prev):
    """sqrt(1 - a_prev - sigma^2) of Eq. 12 on the cosine schedule, whose a_999 = 2.4e-9: in float32
    the direct form gives 3.45e-4 for (999, 899) at eta = 1 against the exact 2.78e-4 (24% off);
    ours agrees with float64 to float32 rounding at every step (relative 1e-5)."""
    from ddim_jax.diffusion import direction_kernel

    alphas32 = alphas_cumprod_from_betas(make_betas("cosine", T))   # what sampling uses (float32)
    a64 = np.asarray(alphas32, np.float64)                           # the same numbers, exactly, in float64
    a_t, a_prev = a64[t], (1.0 if t_prev < 0 else a64[t_prev])
    sigma64 = eta * np.sqrt((1.0 - a_prev) / (1.0 - a_t)) * np.sqrt(1.0 - a_t / a_prev)
    exact = np.sqrt(max(1.0 - a_prev - sigma64**2, 0.0))
    ours = float(direction_kernel(jnp.float32(a_t), jnp.float32(a_prev), jnp.float32(eta)))
    np.testing.assert_allclose(ours, exact, rtol=1e-5, atol=1e-9)
    if (t, t_prev, eta) == (999, 899, 1.0):   # the case that motivated it: the direct form is 24% off
        a32, ap32, eta32 = np.float32(a_t), np.float32(a_prev), np.float32(eta)
        sigma32 = eta32 * np.sqrt((1 - ap32) / (1 - a32)) * np.sqrt(1 - a32 / ap32)
        direct = np.sqrt(np.maximum(np.float32(1) - ap32 - sigma32 * sigma32, 0))
        assert abs(direct - exact) / exact > 0.05


def test_reference_tolerance_catches_off_by_one_and_missing_sqrt():
    """The tolerance above is tight enough to fail for the classic DDIM bugs."""
    x_t, eps, z = arrays(1)
    ours = np.asarray(generalized_step(x_t, eps, 500, 450, ALPHAS_CUMPROD, 0.3, z), np.float64)
    wrong_t = np.stack([ref_step(x_t[i], eps[i], 501, 450, 0.3, z[i]) for i in range(SHAPE[0])])
    wrong_prev = np.stack([ref_step(x_t[i], eps[i], 500, 451, 0.3, z[i]) for i in range(SHAPE[0])])
    a_t, a_prev = ref_alpha(500), ref_alpha(450)
    x0_hat = (x_t - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    sigma = 0.3 * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
    no_sqrt = np.sqrt(a_prev) * x0_hat + (1 - a_prev - sigma**2) * eps + sigma * z
    for wrong in (wrong_t, wrong_prev, no_sqrt):
        with pytest.raises(AssertionError):
            assert_close_float32(ours, wrong)


@pytest.mark.parametrize("t, t_prev", [(999, 949), (300, 100), (10, -1),
                                       ([999, 500, 100, 3, 0], [998, 250, 50, -1, -1])])
def test_eta_one_is_ddpm_ancestral_step_with_posterior_variance(t, t_prev):
    x_t, eps, z = arrays(2)
    actual = generalized_step(x_t, eps, jnp.asarray(t), jnp.asarray(t_prev), ALPHAS_CUMPROD, 1.0, z)
    expected = []
    for i, (ti, tpi) in enumerate(zip(per_example(t), per_example(t_prev))):
        x0_hat = (x_t[i] - np.sqrt(1 - ref_alpha(ti)) * eps[i]) / np.sqrt(ref_alpha(ti))
        mean, std = ref_ddpm_posterior(x_t[i].astype(np.float64), x0_hat, ti, tpi)
        expected.append(mean + std * z[i])
    assert_close_float32(actual, np.stack(expected), 1.0 / np.sqrt(ref_alpha(int(np.max(t)))))
    sigma = np.asarray(ddim_sigma(jnp.asarray(t), jnp.asarray(t_prev), ALPHAS_CUMPROD, 1.0))
    expected_sigma = [ref_ddpm_posterior(0.0, 0.0, ti, tpi)[1] for ti, tpi in zip(per_example(t), per_example(t_prev))]
    np.testing.assert_allclose(np.broadcast_to(sigma, (SHAPE[0],)), expected_sigma, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("t, t_prev", [(999, 949), (100, 0), (0, -1), ([700, 20, 1, 999, 5], [600, -1, 0, 0, -1])])
def test_sigma_hat_step_is_posterior_mean_plus_large_variance(t, t_prev):
    x_t, eps, z = arrays(3)
    actual = sigma_hat_step(x_t, eps, jnp.asarray(t), jnp.asarray(t_prev), ALPHAS_CUMPROD, z)
    expected = []
    for i, (ti, tpi) in enumerate(zip(per_example(t), per_example(t_prev))):
        x0_hat = (x_t[i] - np.sqrt(1 - ref_alpha(ti)) * eps[i]) / np.sqrt(ref_alpha(ti))
        mean, _ = ref_ddpm_posterior(x_t[i].astype(np.float64), x0_hat, ti, tpi)
        sigma_hat = np.sqrt(1.0 - ref_alpha(ti) / ref_alpha(tpi)) if tpi >= 0 else 0.0
        expected.append(mean + sigma_hat * z[i])
    assert_close_float32(actual, np.stack(expected), 1.0 / np.sqrt(ref_alpha(int(np.max(t)))))


@pytest.mark.parametrize("t", [0, 499, 999, [0, 1, 500, 998, 999]])
def test_forward_marginal_and_predict_x0(t):
    x0, noise, _ = arrays(4)
    t_arr = jnp.asarray(t, jnp.int32)
    x_t = forward_marginal(x0, t_arr, noise, ALPHAS_CUMPROD)
    alphas = np.array([ref_alpha(ti) for ti in per_example(t)]).reshape(-1, 1, 1, 1)
    expected = np.sqrt(alphas) * x0 + np.sqrt(1 - alphas) * noise
    assert_close_float32(x_t, expected)
    # Eq. 9 inverts Eq. 4 when given the true noise.
    x0_hat = predict_x0(x_t, noise, t_arr, ALPHAS_CUMPROD)
    assert_close_float32(x0_hat, x0, 1.0 / np.sqrt(alphas.min()))
    # The last step (t_prev = -1) returns x0_hat exactly, whatever eta.
    last = generalized_step(x_t, noise, t_arr, jnp.full_like(t_arr, -1), ALPHAS_CUMPROD, 0.7, noise)
    np.testing.assert_allclose(np.asarray(last), np.asarray(x0_hat), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["x0", "v"])
def test_prediction_type_conversion_recovers_eps(prediction_type):
    x0, eps, _ = arrays(5)
    t = jnp.asarray([3, 100, 500, 900, 999])
    x_t = forward_marginal(x0, t, eps, ALPHAS_CUMPROD)
    a = np.array([ref_alpha(int(ti)) for ti in t]).reshape(-1, 1, 1, 1)
    output = x0 if prediction_type == "x0" else np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    recovered = eps_from_prediction(jnp.asarray(output, jnp.float32), x_t, t, ALPHAS_CUMPROD, prediction_type)
    # "x0" divides by sqrt(1 - a_3) ~ 0.02: float32 error in x_t is amplified ~50x there.
    np.testing.assert_allclose(np.asarray(recovered), eps, atol=5e-4 if prediction_type == "x0" else 2e-5)


def test_steps_work_under_jit_with_traced_timesteps():
    x_t, eps, z = arrays(6)
    step = jax.jit(lambda t, t_prev: generalized_step(x_t, eps, t, t_prev, ALPHAS_CUMPROD, 0.3, z))
    expected = np.stack([ref_step(x_t[i], eps[i], 400, 200, 0.3, z[i]) for i in range(SHAPE[0])])
    assert_close_float32(step(jnp.int32(400), jnp.int32(200)), expected, 1.0 / np.sqrt(ref_alpha(400)))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, e, z: generalized_step(x, e, 10, 5, ALPHAS_CUMPROD, -0.1, z), "eta"),
        (lambda x, e, z: generalized_step(x, e, 10, 5, ALPHAS_CUMPROD, 1.5, z), "eta"),
        (lambda x, e, z: generalized_step(x, e[:2], 10, 5, ALPHAS_CUMPROD, 0.0, z), "x_t and eps"),
        (lambda x, e, z: generalized_step(x, e, 10, 5, ALPHAS_CUMPROD, 0.5, z[..., :1]), "noise"),
        (lambda x, e, z: generalized_step(x, e, 1000, 5, ALPHAS_CUMPROD, 0.0, z), r"t must lie in \[0"),
        (lambda x, e, z: ddim_step(x, e, -1, -1, ALPHAS_CUMPROD), r"t must lie in \[0"),
        (lambda x, e, z: ddim_step(x, e, 10, 10, ALPHAS_CUMPROD), "t_prev must be smaller"),
        (lambda x, e, z: ddim_step(x, e, 10, 20, ALPHAS_CUMPROD), "t_prev must be smaller"),
        (lambda x, e, z: ddim_step(x, e, 10, -2, ALPHAS_CUMPROD), r"t_prev must lie in \[-1"),
        (lambda x, e, z: ddim_step(x, e, np.array([10, 20]), 5, ALPHAS_CUMPROD), r"shape \[B\]"),
        (lambda x, e, z: ddim_step(x, e, 10.0, 5, ALPHAS_CUMPROD), "integer"),
        (lambda x, e, z: forward_marginal(x, 5, z[:3], ALPHAS_CUMPROD), "x0 and noise"),
        (lambda x, e, z: forward_marginal(x, 5, z, ALPHAS_CUMPROD[None]), "alphas_cumprod"),
        (lambda x, e, z: predict_x0(x, e, np.arange(5) * 300, ALPHAS_CUMPROD), "T-1"),
        (lambda x, e, z: eps_from_prediction(x, x, 5, ALPHAS_CUMPROD, "score"), "prediction_type"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    x_t, eps, z = arrays(7)
    with pytest.raises(ValueError, match=message):
        call(x_t, eps, z)
