"""The sampler driven by the exact noise predictor of a Gaussian mixture.

For data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)), the forward marginal (Eq. 4) is the mixture
sum_k w_k N(sqrt(a) mu_k, diag(a s_k^2 + 1 - a)), whose score is known in closed form; the
optimal noise predictor is eps*(x, t) = -sqrt(1 - a_t) * score(x, t). With it, what the paper
shows for trained networks can be checked with no training at all: exactness in the many-step
limit, the eta = 0 vs eta = 1 trend at few steps (Table 1), reconstruction error falling with S
(Table 2) and the consistency of DDIM codes across step counts (Figure 5).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_oracle import (
    ALPHAS_CUMPROD,
    NUM_SAMPLES,
    STDS,
    WEIGHTS,
    T,
    draw_data,
    exact_mean_and_covariance,
    frechet_distance,
    mixture_eps,
    mode_of,
    prior,
)

from ddim_jax import encode, sample, timestep_sequence


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_many_steps_reproduce_the_mixture(eta):
    x = np.asarray(sample(mixture_eps, prior(0), timestep_sequence(T, T), ALPHAS_CUMPROD, eta, jax.random.PRNGKey(1)))
    mean, covariance = exact_mean_and_covariance()
    standard_error = np.sqrt(np.diag(covariance) / NUM_SAMPLES)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4 * standard_error)
    np.testing.assert_allclose(np.cov(x.T), covariance, atol=0.02)
    weights = np.bincount(mode_of(x), minlength=3) / NUM_SAMPLES
    np.testing.assert_array_less(np.abs(weights - WEIGHTS), 4 * np.sqrt(WEIGHTS * (1 - WEIGHTS) / NUM_SAMPLES))
    # Within each mode the spread is the component's own (not shrunk, not noisy).
    for k in range(3):
        np.testing.assert_allclose(x[mode_of(x) == k].std(0), STDS[k], rtol=0.12)


def test_few_steps_ddim_beats_ddpm_and_sigma_hat_overshoots():
    """Paper Table 1: at S = 10 and 20, eta = 0 is clearly closer to the data than eta = 1;
    the sigma-hat row leaves too much noise at few steps (here: more total variance than the
    data has); at S = 1000 all three are exact."""
    mean, covariance = exact_mean_and_covariance()
    key = jax.random.PRNGKey(2)
    variants = (("ddim", dict(eta=0.0)), ("ddpm", dict(eta=1.0, key=key)), ("sigma_hat", dict(sigma_hat=True, key=key)))
    distance, total_variance = {}, {}
    for num_steps in (10, 20, 1000):
        seq = timestep_sequence(num_steps, T)
        for name, kwargs in variants:
            x = sample(mixture_eps, prior(3), seq, ALPHAS_CUMPROD, **kwargs)
            distance[name, num_steps] = frechet_distance(x, mean, covariance)
            total_variance[name, num_steps] = float(np.trace(np.cov(np.asarray(x).T)))
    for num_steps in (10, 20):
        assert distance["ddim", num_steps] < 0.75 * distance["ddpm", num_steps], distance
    assert distance["ddim", 20] < 0.5 * distance["ddim", 10], distance  # quality improves with S
    assert total_variance["sigma_hat", 10] > 1.1 * np.trace(covariance) > total_variance["ddpm", 10], total_variance
    for name, _ in variants:
        assert distance[name, 1000] < 1e-3, distance


def test_reconstruction_error_falls_as_S_grows():
    """Paper Table 2: encode x0 -> x_T, decode with the same S; error falls with S."""
    x0 = jnp.asarray(draw_data(512, seed=4))
    errors = {}
    for num_steps in (10, 20, 50, 100, 200, 500):
        seq = timestep_sequence(num_steps, T)
        code = encode(mixture_eps, x0, seq, ALPHAS_CUMPROD)
        errors[num_steps] = float(jnp.mean((sample(mixture_eps, code, seq, ALPHAS_CUMPROD) - x0) ** 2))
    values = list(errors.values())
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), errors
    assert errors[10] < 0.03 and errors[500] < errors[10] / 20, errors
    # The code looks like a prior sample: zero mean, unit variance.
    code = np.asarray(encode(mixture_eps, x0, timestep_sequence(500, T), ALPHAS_CUMPROD))
    np.testing.assert_allclose(code.mean(0), 0.0, atol=0.15)
    np.testing.assert_allclose(code.std(0), 1.0, atol=0.15)
    # Evaluating eps at the step's target timestep inverts the decoder better than at its source.
    seq = timestep_sequence(10, T)
    current = encode(mixture_eps, x0, seq, ALPHAS_CUMPROD, eps_at="current")
    error_current = float(jnp.mean((sample(mixture_eps, current, seq, ALPHAS_CUMPROD) - x0) ** 2))
    assert errors[10] < error_current


def test_same_code_different_S_lands_in_the_same_mode():
    """Consistency (paper section 5.3): DDIM samples from one x_T at S = 10 and S = 100 share
    their high-level feature (the mode); DDPM samples do not."""
    x_T = prior(5, num=2000)
    ddim_10 = mode_of(sample(mixture_eps, x_T, timestep_sequence(10, T), ALPHAS_CUMPROD))
    ddim_100 = mode_of(sample(mixture_eps, x_T, timestep_sequence(100, T), ALPHAS_CUMPROD))
    assert np.mean(ddim_10 == ddim_100) > 0.93
    ddpm_10 = mode_of(sample(mixture_eps, x_T, timestep_sequence(10, T), ALPHAS_CUMPROD, 1.0, jax.random.PRNGKey(6)))
    ddpm_100 = mode_of(sample(mixture_eps, x_T, timestep_sequence(100, T), ALPHAS_CUMPROD, 1.0, jax.random.PRNGKey(7)))
    assert np.mean(ddpm_10 == ddpm_100) < 0.6
