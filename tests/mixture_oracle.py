"""The exact-score 2-D Gaussian mixture shared by the oracle tests (test_oracle, test_solvers).

For data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)), the forward marginal (Eq. 4) is the mixture
sum_k w_k N(sqrt(a) mu_k, diag(a s_k^2 + 1 - a)), whose score is known in closed form; the
optimal noise predictor is eps*(x, t) = -sqrt(1 - a_t) * score(x, t).
"""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ddim_jax import alphas_cumprod_from_betas, make_betas

T = 1000
ALPHAS_CUMPROD = alphas_cumprod_from_betas(make_betas("linear", T))
WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[-0.6, -0.4], [0.5, 0.5], [0.4, -0.6]])
STDS = np.array([[0.10, 0.20], [0.15, 0.08], [0.07, 0.07]])
NUM_SAMPLES = 4000


def mixture_eps(x, t):
    """The exact eps-prediction for the mixture. x [B, 2], t int [B]."""
    weights, means, stds = (jnp.asarray(a, jnp.float32) for a in (WEIGHTS, MEANS, STDS))
    alpha = ALPHAS_CUMPROD[t][:, None, None]
    variance = alpha * stds[None] ** 2 + 1.0 - alpha  # [B, K, 2]
    diff = x[:, None, :] - jnp.sqrt(alpha) * means[None]  # [B, K, 2]
    log_component = jnp.log(weights)[None] - 0.5 * jnp.sum(diff**2 / variance + jnp.log(variance), -1)
    responsibility = jax.nn.softmax(log_component, axis=-1)  # [B, K]
    score = -jnp.sum(responsibility[..., None] * diff / variance, axis=1)
    return -jnp.sqrt(1.0 - alpha[:, 0]) * score


def draw_data(num, seed):
    rng = np.random.default_rng(seed)
    component = rng.choice(len(WEIGHTS), num, p=WEIGHTS)
    return (MEANS[component] + STDS[component] * rng.standard_normal((num, 2))).astype(np.float32)


def mode_of(x):
    x = np.asarray(x, np.float64)
    log_component = np.log(WEIGHTS) - 0.5 * np.sum((x[:, None] - MEANS) ** 2 / STDS**2 + np.log(STDS**2), -1)
    return log_component.argmax(-1)


def exact_mean_and_covariance():
    mean = WEIGHTS @ MEANS
    second_moment = sum(w * (np.diag(s**2) + np.outer(m, m)) for w, m, s in zip(WEIGHTS, MEANS, STDS, strict=True))
    return mean, second_moment - np.outer(mean, mean)


def frechet_distance(x, mean, covariance):
    """The FID formula between the samples' Gaussian fit and the data's exact moments."""
    x = np.asarray(x, np.float64)
    sample_covariance = np.cov(x.T)
    root = scipy.linalg.sqrtm(sample_covariance @ covariance).real
    return float(np.sum((x.mean(0) - mean) ** 2) + np.trace(sample_covariance + covariance - 2 * root))


def prior(seed, num=NUM_SAMPLES):
    return jax.random.normal(jax.random.PRNGKey(seed), (num, 2))


def sliced_w1(x, y, num_directions=64, seed=0):
    """Sliced Wasserstein-1 distance between two equal-size 2-D samples: the mean over fixed
    random directions of the 1-D W1 of the projections (sorted differences)."""
    angles = np.random.default_rng(seed).uniform(0.0, np.pi, num_directions)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x_proj = np.sort(np.asarray(x, np.float64) @ directions.T, axis=0)
    y_proj = np.sort(np.asarray(y, np.float64) @ directions.T, axis=0)
    return float(np.mean(np.abs(x_proj - y_proj)))
