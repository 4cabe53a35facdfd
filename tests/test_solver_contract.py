"""The contract every registered solver keeps, parametrised over ``ddim_jax.solvers.REGISTRY``
itself: a new solver inherits these tests by its registry line. Parity with the reference codes
and quality on the Gaussian mixture are in test_solvers.py."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddim_jax import alphas_cumprod_from_betas, make_betas, sample, sampling, timestep_sequence
from ddim_jax.guidance import guided_eps_fn
from ddim_jax.solvers import REGISTRY, needs_key
from ddim_jax.solvers.base import iteration_keys

T = 1000
ALPHAS_CUMPROD = alphas_cumprod_from_betas(make_betas("linear", T))
SHAPE = (3, 5, 2)
NAMES = tuple(REGISTRY)
S = 6
SEQ = timestep_sequence(S, T, "linspace")[1:]  # not T - 1, where x0 is badly conditioned (x0 / v models)


def toy_eps(x, t, weight):
    """A smooth, t-dependent stand-in for a noise network (weight is a traced 'param')."""
    return jnp.tanh(weight * x + (t.astype(jnp.float32) / T)[:, None, None]) * 0.9


@dataclasses.dataclass(frozen=True)
class WithVariance:
    """A learned-variance model (``output_type="learned_range"``) around a toy eps: ``[eps | v]``,
    v in (-1, 1) depending on x and t, for the solvers that use the model's variance."""

    base: object

    def __call__(self, x, t, *args):
        eps = self.base(x, t, *args)
        v = jnp.tanh(x.astype(jnp.float32) + (t.astype(jnp.float32) / T - 0.5)[:, None, None])
        return jnp.concatenate([eps, v.astype(eps.dtype)], axis=-1)


def model_options(name, model):
    """``(model, options)`` to sample ``model`` with solver ``name``: a learned variance for those
    that use one (every other solver must give the same samples with it)."""
    if REGISTRY[name].uses_variance:
        return WithVariance(model), {"output_type": "learned_range"}
    return model, {}


def x_T(seed=0, shape=SHAPE):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def run(name, model=toy_eps, x=None, seq=SEQ, weight=0.5, key=None, **kwargs):
    if key is None and needs_key(name):
        key = jax.random.PRNGKey(4)
    model, options = model_options(name, model)
    return sample(model, x_T() if x is None else x, seq, ALPHAS_CUMPROD, key=key, eps_fn_args=(weight,),
                  solver=name, **options, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_shape_calls_one_trace_and_no_retrace(name):
    """``calls(S)`` network calls, each on the whole batch with per-example t, from one trace (a
    scan, not unrolled); new x_T, params and timesteps of the same length reuse the program."""
    traces, calls = [], []

    def counting_eps(x, t, weight):
        traces.append(t.shape)  # trace time
        jax.debug.callback(lambda: calls.append(1))  # run time
        return toy_eps(x, t, weight)

    out = run(name, counting_eps)
    jax.effects_barrier()
    assert out.shape == SHAPE and out.dtype == jnp.float32 and np.all(np.isfinite(out))
    assert traces == [(SHAPE[0],)] and len(calls) == REGISTRY[name].calls(len(SEQ)), (traces, len(calls))
    other = timestep_sequence(len(SEQ), T, "logsnr", alphas_cumprod=ALPHAS_CUMPROD)
    run(name, counting_eps, x=x_T(1), seq=other, weight=0.9)
    assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
def test_guidance_is_one_batched_call_per_evaluation(name):
    calls = []

    def conditional(x, t, weight, labels):
        jax.debug.callback(lambda n: calls.append(int(n)), jnp.int32(x.shape[0]))
        return toy_eps(x, t, weight) + labels.astype(x.dtype)[:, None, None] / 10

    guided, options = model_options(name, guided_eps_fn(conditional, 4))
    key = jax.random.PRNGKey(4) if needs_key(name) else None
    sample(guided, x_T(), SEQ, ALPHAS_CUMPROD, key=key, eps_fn_args=(0.5, jnp.array([0, 1, 2]), 2.0), solver=name,
           **options)
    jax.effects_barrier()
    assert calls == [2 * SHAPE[0]] * REGISTRY[name].calls(len(SEQ))


@pytest.mark.parametrize("name", NAMES)
def test_float32_state_under_a_bfloat16_network(name):
    """Only the network's input is cast to x_T's dtype; the state stays float32, so a bf16 run
    differs from the float32 one by about the network's own rounding."""
    def bf16_eps(x, t, weight):
        assert x.dtype == jnp.bfloat16
        return toy_eps(x.astype(jnp.float32), t, weight).astype(jnp.bfloat16)

    start = x_T().astype(jnp.bfloat16)
    ours, trajectory = run(name, bf16_eps, x=start, return_trajectory=True)
    assert ours.dtype == jnp.bfloat16 and trajectory["x_t"].dtype == jnp.bfloat16
    reference = run(name, x=start.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(ours, np.float32), reference, rtol=1e-2, atol=0.05)  # bf16 output rounding


@pytest.mark.parametrize("name", NAMES)
def test_prediction_types_give_the_same_samples_as_eps(name):
    def x0_model(x, t, weight):
        a = ALPHAS_CUMPROD[t][:, None, None]
        return (x - jnp.sqrt(1 - a) * toy_eps(x, t, weight)) / jnp.sqrt(a)

    def v_model(x, t, weight):
        a = ALPHAS_CUMPROD[t][:, None, None]
        return jnp.sqrt(a) * toy_eps(x, t, weight) - jnp.sqrt(1 - a) * x0_model(x, t, weight)

    reference = run(name)
    for prediction_type, model in (("x0", x0_model), ("v", v_model)):
        np.testing.assert_allclose(run(name, model, prediction_type=prediction_type), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_clipping_and_trajectory(name):
    solver = REGISTRY[name]
    unclipped = run(name, x=3 * x_T())
    assert np.abs(np.asarray(unclipped)).max() > 1.5
    clipped, trajectory = run(name, x=3 * x_T(), clip_x0=True, return_trajectory=True)
    assert trajectory["x_t"].shape == (len(SEQ),) + SHAPE and trajectory["x0_hat"].shape == (len(SEQ),) + SHAPE
    np.testing.assert_array_equal(trajectory["x_t"][0], 3 * x_T())
    assert np.abs(np.asarray(trajectory["x0_hat"])).max() <= 1.0 + 1e-6
    if not solver.steps_with_eps:  # they end on the last (clipped) x0 prediction
        np.testing.assert_allclose(clipped, trajectory["x0_hat"][-1], rtol=1e-6, atol=1e-6)
    else:  # PLMS steps with the eps re-derived from the clipped x0 predictions
        assert np.abs(np.asarray(clipped) - np.asarray(unclipped)).max() > 0.1


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n].stochastic or REGISTRY[n].accepts_eta])
def test_per_example_keys_make_an_image_independent_of_its_batch(name):
    extra = {"eta": 1.0} if REGISTRY[name].accepts_eta else {}
    keys = jax.random.split(jax.random.PRNGKey(8), SHAPE[0])
    batch = run(name, key=keys, **extra)
    alone = run(name, x=x_T()[1:2], key=keys[1:2], **extra)
    np.testing.assert_allclose(batch[1:2], alone, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(run(name, key=jax.random.split(jax.random.PRNGKey(9), 3), **extra)) - batch).max() > 1e-3
    model, options = model_options(name, toy_eps)
    with pytest.raises(ValueError, match="key"):
        sample(model, x_T(), SEQ, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver=name, **options, **extra)


def _temp_bytes(name, num_steps):
    seq = jnp.asarray(timestep_sequence(num_steps, T), jnp.int32)
    solver = REGISTRY[name]
    keys = iteration_keys(jax.random.PRNGKey(0), solver.calls(num_steps)) if solver.stochastic else None
    model, options = model_options(name, toy_eps)
    compiled = sampling._sample_scan.lower(
        model, x_T(), seq, ALPHAS_CUMPROD, jnp.float32(0.0), keys, (0.5,), (), cond_fn=None, solver=solver,
        prediction_type="eps", clip_x0=False, rederive_eps=True, output_type=options.get("output_type", "fixed"),
        return_trajectory=False).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", NAMES)
def test_memory_is_flat_in_S(name):
    """Without a trajectory the scan keeps no per-step state: temporaries do not grow with S
    (beyond the per-step plan arrays and keys, a few bytes per step)."""
    small, large = _temp_bytes(name, 10), _temp_bytes(name, 500)
    assert large - small < 490 * 200, (small, large)


@pytest.mark.parametrize("name", [n for n in NAMES if not REGISTRY[n].uses_variance])
def test_every_solver_runs_on_a_learned_variance_model_with_its_eps(name):
    """A ``[eps | v]`` model (guided-diffusion's learn_sigma) samples as its eps half alone; a solver
    that needs the variance refuses a model without one."""
    key = jax.random.PRNGKey(4) if needs_key(name) else None
    learned = sample(WithVariance(toy_eps), x_T(), SEQ, ALPHAS_CUMPROD, key=key, eps_fn_args=(0.5,), solver=name,
                     output_type="learned_range", clip_x0=True)
    np.testing.assert_allclose(learned, run(name, key=key, clip_x0=True), rtol=1e-6, atol=1e-6)


def test_a_variance_solver_refuses_a_model_without_one():
    name = next(n for n in NAMES if REGISTRY[n].uses_variance)
    with pytest.raises(ValueError, match="learned variance"):
        sample(toy_eps, x_T(), SEQ, ALPHAS_CUMPROD, key=jax.random.PRNGKey(0), eps_fn_args=(0.5,), solver=name)
    with pytest.raises(ValueError, match="expected"):
        sample(toy_eps, x_T(), SEQ, ALPHAS_CUMPROD, eps_fn_args=(0.5,), output_type="learned_range")
