"""The higher-order solvers of ``sample(..., solver=...)``: parity with diffusers' schedulers over
whole runs, quality on the exact-score Gaussian mixture, compilation, float32 state, validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddim_jax import alphas_cumprod_from_betas, make_betas, sample, timestep_sequence
from ddim_jax.solvers import SOLVERS

T = 1000
ALPHAS_CUMPROD = alphas_cumprod_from_betas(make_betas("linear", T))
SHAPE = (3, 5, 2)


def toy_eps(x, t, weight):
    """A smooth, t-dependent stand-in for a noise network (weight is a traced 'param')."""
    return jnp.tanh(weight * x + (t.astype(jnp.float32) / T)[:, None, None]) * 0.9


def x_T(seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), SHAPE)


def torch_eps(torch, x, t):
    return torch.tanh(0.5 * x + float(t) / T) * 0.9


def run_diffusers(torch, scheduler, timesteps):
    """Runs a diffusers scheduler over ``timesteps`` from our x_T, in float64, with the toy network."""
    x = torch.from_numpy(np.asarray(x_T(), np.float64).copy())
    for t in timesteps:
        x = scheduler.step(torch_eps(torch, x, t), t, x).prev_sample
    return x.numpy()


def with_our_alphas(torch, scheduler):
    # diffusers takes the cumulative product in float32; ours is float64 rounded once. Same schedule.
    scheduler.alphas_cumprod = torch.from_numpy(np.asarray(ALPHAS_CUMPROD).copy())
    return scheduler


def sigmas_for(torch, seq):
    ac = np.asarray(ALPHAS_CUMPROD, np.float64)[seq]
    return torch.from_numpy(np.concatenate([np.sqrt((1 - ac) / ac), [0.0]]).astype(np.float32))


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("num_steps, kind", [(10, "logsnr"), (25, "uniform")])
def test_dpmpp_matches_diffusers_dpmsolver_multistep(order, num_steps, kind):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    # lower_order_final=False: only the step to sigma = 0 is first order (final_sigmas_type="zero");
    # diffusers' default would also lower the second-to-last step of 3M when S < 15.
    scheduler = with_our_alphas(torch, diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", algorithm_type="dpmsolver++",
        solver_order=order, final_sigmas_type="zero", lower_order_final=False,
    ))
    seq = timestep_sequence(num_steps, T, kind, alphas_cumprod=ALPHAS_CUMPROD)
    scheduler.set_timesteps(timesteps=seq.tolist())
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), seq)
    reference = run_diffusers(torch, scheduler, scheduler.timesteps)
    ours = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver=f"dpmpp_{order}m")
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-4)
    # Not DDIM: the higher-order terms matter at these step counts.
    ddim = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,))
    assert np.abs(np.asarray(ddim) - reference).max() > 100 * np.abs(np.asarray(ours) - reference).max()


@pytest.mark.parametrize("num_steps, kind", [(10, "logsnr"), (25, "uniform"), (2, "uniform")])
def test_unipc_matches_diffusers_unipc_multistep(num_steps, kind):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    scheduler = with_our_alphas(torch, diffusers.UniPCMultistepScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=2,
        solver_type="bh2", predict_x0=True, final_sigmas_type="zero", lower_order_final=True,
    ))
    seq = timestep_sequence(num_steps, T, kind, alphas_cumprod=ALPHAS_CUMPROD)
    scheduler.set_timesteps(num_steps)
    scheduler.timesteps = torch.from_numpy(seq.astype(np.int64))  # our sequence, any spacing
    scheduler.sigmas = sigmas_for(torch, seq)
    reference = run_diffusers(torch, scheduler, scheduler.timesteps)
    ours = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver="unipc")
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-4)
    if num_steps > 2:  # the corrector matters: UniPC is not its predictor (= DPM-Solver++(2M)) alone
        predictor_only = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver="dpmpp_2m")
        assert np.abs(np.asarray(predictor_only) - reference).max() > 100 * np.abs(np.asarray(ours) - reference).max()


@pytest.mark.parametrize("num_steps", [1, 2, 3, 10, 50])
def test_plms_matches_diffusers_pndm_without_prk_steps(num_steps):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    scheduler = with_our_alphas(torch, diffusers.PNDMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", skip_prk_steps=True,
        set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
    ))
    scheduler.set_timesteps(num_steps)
    seq = timestep_sequence(num_steps, T, "leading")  # PNDM steps by T // S: its own sequence
    # S + 1 network evaluations: the second timestep is visited twice (the start's extra call).
    expected = seq if num_steps == 1 else np.concatenate([seq[:2], seq[1:]])
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), expected)
    reference = run_diffusers(torch, scheduler, scheduler.timesteps)
    calls = []

    def counting_eps(x, t, weight):
        jax.debug.callback(lambda t: calls.append(int(t[0])), t)
        return toy_eps(x, t, weight)

    ours = sample(counting_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver="plms")
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-4)
    jax.effects_barrier()
    assert calls == expected.tolist()
