"""sample / encode / slerp: equivalence with step-by-step loops, compilation, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddim_jax import (
    alphas_cumprod_from_betas,
    encode,
    generalized_step,
    make_betas,
    predict_x0,
    sample,
    sigma_hat_step,
    slerp,
    timestep_sequence,
)

T = 1000
ALPHAS_CUMPROD = alphas_cumprod_from_betas(make_betas("linear", T))
SHAPE = (3, 4, 4, 2)


def toy_eps(x, t, weight):
    """A smooth, t-dependent stand-in for a noise network (weight is a traced 'param')."""
    scale = (t.astype(jnp.float32) / T)[:, None, None, None]
    return jnp.tanh(weight * x + scale) * 0.9


def x_T(seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), SHAPE)


def python_loop(x, seq, eta, key, weight, *, use_sigma_hat=False, clip=False):
    """The reference: a Python loop over the public step functions."""
    keys = jax.random.split(key, len(seq)) if key is not None else None
    prev = list(seq[1:]) + [-1]
    for i, (t, t_prev) in enumerate(zip(seq, prev)):
        eps = toy_eps(x, jnp.full((SHAPE[0],), t), weight)
        if clip:
            x0_hat = jnp.clip(predict_x0(x, eps, int(t), ALPHAS_CUMPROD), -1, 1)
            a = ALPHAS_CUMPROD[t]
            eps = (x - jnp.sqrt(a) * x0_hat) / jnp.sqrt(1 - a)
        noise = jax.random.normal(keys[i], SHAPE) if keys is not None else jnp.zeros(SHAPE)
        if use_sigma_hat:
            x = sigma_hat_step(x, eps, int(t), int(t_prev), ALPHAS_CUMPROD, noise)
        else:
            x = generalized_step(x, eps, int(t), int(t_prev), ALPHAS_CUMPROD, eta, noise)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind", ["uniform", "quad", "trailing"])
def test_sample_equals_python_loop_of_generalized_step(eta, kind):
    seq = timestep_sequence(12, T, kind)
    key = jax.random.PRNGKey(7) if eta > 0 else None
    ours = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eta, key, eps_fn_args=(jnp.float32(0.5),))
    reference = python_loop(x_T(), seq, eta, key, 0.5)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_sample_sigma_hat_and_clip_equal_python_loops():
    seq = timestep_sequence(8, T)
    key = jax.random.PRNGKey(3)
    ours = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, 0.0, key, eps_fn_args=(0.5,), sigma_hat=True)
    np.testing.assert_allclose(ours, python_loop(x_T(), seq, 0.0, key, 0.5, use_sigma_hat=True), rtol=1e-5, atol=1e-5)
    ours = sample(toy_eps, 3 * x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), clip_x0=True)
    reference = python_loop(3 * x_T(), seq, 0.0, None, 0.5, clip=True)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(ours)).max() <= 1.0 + 1e-6  # the last step returns the clipped x0_hat


def test_trajectory_holds_each_steps_input_and_x0_prediction():
    seq = timestep_sequence(5, T)
    x0, trajectory = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), return_trajectory=True)
    assert trajectory["x_t"].shape == (5,) + SHAPE and trajectory["x0_hat"].shape == (5,) + SHAPE
    np.testing.assert_array_equal(trajectory["x_t"][0], x_T())
    np.testing.assert_allclose(trajectory["x0_hat"][-1], x0, rtol=1e-6)  # last step returns x0_hat
    # The input of step i + 1 is the output of step i of the public step function.
    eps = toy_eps(trajectory["x_t"][1], jnp.full((SHAPE[0],), seq[1]), 0.5)
    step_two = generalized_step(trajectory["x_t"][1], eps, int(seq[1]), int(seq[2]), ALPHAS_CUMPROD, 0.0, eps)
    np.testing.assert_allclose(trajectory["x_t"][2], step_two, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["x0", "v"])
def test_prediction_types_give_the_same_samples_as_eps(prediction_type):
    def converted(x, t, weight):
        eps = toy_eps(x, t, weight)
        a = ALPHAS_CUMPROD[t][:, None, None, None]
        x0 = (x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
        return x0 if prediction_type == "x0" else jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0

    seq = timestep_sequence(10, T, "linspace")  # linspace starts at T-1, where x0 is badly conditioned
    seq = seq[1:]
    reference = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,))
    ours = sample(converted, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), prediction_type=prediction_type)
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3)


def test_no_recompilation_and_one_trace_whatever_S():
    traces = []

    def counting_eps(x, t, weight):
        traces.append(x.shape)  # runs at trace time only
        return toy_eps(x, t, weight)

    seq = timestep_sequence(50, T)
    sample(counting_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,))
    assert len(traces) == 1, "the S-step loop must be one scan, not unrolled"
    # New x_T, new params, a new key, another sequence of the same length: no new trace.
    sample(counting_eps, x_T(1), timestep_sequence(50, T, "trailing"), ALPHAS_CUMPROD, eps_fn_args=(0.9,))
    assert len(traces) == 1
    sample(counting_eps, x_T(), seq, ALPHAS_CUMPROD, 0.5, jax.random.PRNGKey(0), eps_fn_args=(0.5,))
    sample(counting_eps, x_T(2), seq, ALPHAS_CUMPROD, 0.8, jax.random.PRNGKey(1), eps_fn_args=(0.1,))
    assert len(traces) == 2  # eta > 0 is one more program, reused for another eta / key / params
    encode(counting_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,))
    encode(counting_eps, x_T(3), seq, ALPHAS_CUMPROD, eps_fn_args=(0.7,))
    assert len(traces) == 3


def test_sample_is_jittable_and_vmappable_from_outside():
    seq = timestep_sequence(6, T)
    run = jax.jit(lambda x, w: sample(toy_eps, x, seq, ALPHAS_CUMPROD, eps_fn_args=(w,)))
    np.testing.assert_allclose(run(x_T(), 0.5), sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,)),
                               rtol=1e-5, atol=1e-6)
    # vmap over a leading axis of batches and over one weight per batch: each slice equals its own call.
    batches = jnp.stack([x_T(1), x_T(2)])
    weights = jnp.asarray([0.3, 0.8])
    mapped = jax.vmap(lambda x, w: sample(toy_eps, x, seq, ALPHAS_CUMPROD, eps_fn_args=(w,)))(batches, weights)
    for i in range(2):
        single = sample(toy_eps, batches[i], seq, ALPHAS_CUMPROD, eps_fn_args=(weights[i],))
        np.testing.assert_allclose(mapped[i], single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mapped[0], mapped[1])


def test_encode_inverts_sample_for_a_linear_model_in_the_many_step_limit():
    """For eps(x, t) linear in x the DDIM ODE is linear; encode then sample returns x0 with an
    error that shrinks as S grows (paper Table 2 trend)."""
    def linear_eps(x, t):
        a = ALPHAS_CUMPROD[t][:, None, None, None]
        # the exact noise predictor for x0 ~ N(0, 0.25 I)
        return jnp.sqrt(1 - a) * x / (0.25 * a + 1 - a)

    x0 = 0.5 * jax.random.normal(jax.random.PRNGKey(4), SHAPE)
    errors = []
    for num_steps in (10, 50, 250):
        seq = timestep_sequence(num_steps, T)
        code = encode(linear_eps, x0, seq, ALPHAS_CUMPROD)
        errors.append(float(jnp.mean((sample(linear_eps, code, seq, ALPHAS_CUMPROD) - x0) ** 2)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4
    # The code is distributed like the prior: unit variance.
    seq = timestep_sequence(250, T)
    assert float(jnp.std(encode(linear_eps, x0, seq, ALPHAS_CUMPROD))) == pytest.approx(1.0, abs=0.15)


def test_slerp_against_numpy_formula():
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    theta = np.arccos(np.dot(z0.ravel(), z1.ravel()) / np.linalg.norm(z0) / np.linalg.norm(z1))
    for alpha in (0.0, 0.25, 0.5, 1.0):
        expected = np.sin((1 - alpha) * theta) / np.sin(theta) * z0 + np.sin(alpha * theta) / np.sin(theta) * z1
        np.testing.assert_allclose(slerp(z0, z1, alpha), expected, rtol=1e-4, atol=1e-5)
    path = slerp(z0, z1, jnp.linspace(0, 1, 5))
    assert path.shape == (5, 8, 8, 3)
    np.testing.assert_allclose(path[0], z0, atol=1e-5)
    np.testing.assert_allclose(path[-1], z1, atol=1e-5)
    # Orthogonal codes of equal norm keep their norm along the arc (linear interpolation would not).
    a, b = np.array([3.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32)
    np.testing.assert_allclose(np.linalg.norm(slerp(a, b, 0.5)), 3.0, rtol=1e-5)
    np.testing.assert_allclose(slerp(a, 2 * a, 0.5), 1.5 * a, rtol=1e-5)  # parallel: linear fallback
    batch = jax.vmap(slerp, (0, 0, None))(jnp.stack([z0, z1]), jnp.stack([z1, z0]), 0.3)
    np.testing.assert_allclose(batch[0], slerp(z0, z1, 0.3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seq=np.arange(1001)[::-1].astype(np.int32)), "more than T"),
        (dict(seq=np.array([], np.int32)), "non-empty"),
        (dict(seq=np.array([10, 20], np.int32)), "strictly descending"),
        (dict(seq=np.array([1000, 20], np.int32)), r"\[0, T-1"),
        (dict(seq=np.array([10.0, 2.0])), "integer"),
        (dict(eta=-0.5, key=jax.random.PRNGKey(0)), "eta"),
        (dict(eta=0.5), "key"),
        (dict(sigma_hat=True), "key"),
        (dict(sigma_hat=True, eta=1.0, key=jax.random.PRNGKey(0)), "sigma_hat"),
        (dict(prediction_type="score"), "prediction_type"),
        (dict(eps_fn="model"), "callable"),
        (dict(x_T=jnp.float32(1.0)), "batch"),
    ],
)
def test_sample_rejects_bad_input_before_tracing(kwargs, message):
    args = dict(eps_fn=lambda x, t: x, x_T=x_T(), seq=timestep_sequence(5, T), alphas_cumprod=ALPHAS_CUMPROD)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sample(**args)


def test_wrong_model_output_shape_is_named():
    with pytest.raises(ValueError, match="eps_fn returned shape"):
        sample(lambda x, t: x[..., :1], x_T(), timestep_sequence(3, T), ALPHAS_CUMPROD)
    with pytest.raises(ValueError, match="eps_at"):
        encode(lambda x, t: x, x_T(), timestep_sequence(3, T), ALPHAS_CUMPROD, eps_at="middle")


@pytest.mark.parametrize(
    "eta, clip, rederive",
    [(0.0, False, True), (0.5, False, True), (1.0, False, True), (0.0, True, False), (0.5, True, True)],
)
def test_sample_matches_diffusers_ddim_scheduler(eta, clip, rederive):
    """An independent implementation: diffusers' PyTorch DDIMScheduler with 'leading' spacing,
    alpha_{-1} = 1 and our per-step noise passed as variance_noise."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    num_steps = 10
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=clip,
        set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
    )
    scheduler.set_timesteps(num_steps)
    seq = timestep_sequence(num_steps, T, "leading")
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), seq)
    key = jax.random.PRNGKey(11)
    keys = jax.random.split(key, num_steps)
    x = torch.from_numpy(np.asarray(3 * x_T(), np.float64).copy())
    for i, t in enumerate(scheduler.timesteps):
        eps = torch.tanh(0.5 * x + t.double() / T) * 0.9
        noise = torch.from_numpy(np.asarray(jax.random.normal(keys[i], SHAPE), np.float64))
        x = scheduler.step(eps, t, x, eta=eta, use_clipped_model_output=clip and rederive,
                           variance_noise=noise).prev_sample
    ours = sample(toy_eps, 3 * x_T(), seq, ALPHAS_CUMPROD, eta, key if eta > 0 else None,
                  eps_fn_args=(0.5,), clip_x0=clip, rederive_eps=rederive)
    np.testing.assert_allclose(np.asarray(ours), x.numpy(), rtol=2e-4, atol=2e-4)
