"""The higher-order solvers of ``sample(..., solver=...)``: parity with diffusers' schedulers over
whole runs, quality on the exact-score Gaussian mixture, compilation, float32 state, validation."""
import importlib
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_oracle import ALPHAS_CUMPROD as ORACLE_ALPHAS
from mixture_oracle import (
    NUM_SAMPLES,
    draw_data,
    exact_mean_and_covariance,
    frechet_distance,
    mixture_eps,
    mode_of,
    prior,
    sliced_w1,
)

from ddim_jax import alphas_cumprod_from_betas, make_betas, sample, timestep_sequence
from ddim_jax.solvers import REGISTRY, SOLVERS
from ddim_jax.solvers.base import iteration_keys

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


def diffusers_default_run(torch, scheduler, num_steps, inputs=False):
    """A diffusers scheduler at its defaults (our schedule) on the timesteps it picks for S steps:
    returns ``(seq, reference)`` (and with ``inputs`` each step's input ``[S, ...]``); its last step
    goes to sigma = 0 (``final_sigmas_type="zero"``), as ours goes to t = -1."""
    with_our_alphas(torch, scheduler).set_timesteps(num_steps)
    seq = scheduler.timesteps.numpy().astype(np.int32)
    x, seen = torch.from_numpy(np.asarray(x_T(), np.float64).copy()), []
    for t in scheduler.timesteps:
        seen.append(x.numpy())
        x = scheduler.step(torch_eps(torch, x, t), t, x).prev_sample
    return (seq, x.numpy(), np.stack(seen)) if inputs else (seq, x.numpy())


# diffusers' own grids for its three timestep_spacing values; S = 20 is past the S < 15 gate of
# DPM-Solver's lower_order_final.
DIFFUSERS_GRIDS = [(5, "linspace"), (10, "linspace"), (10, "leading"), (10, "trailing"), (20, "linspace")]


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("num_steps, spacing", DIFFUSERS_GRIDS)
def test_dpmpp_matches_diffusers_dpmsolver_multistep_at_its_defaults(order, num_steps, spacing):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=order, timestep_spacing=spacing)
    seq, reference = diffusers_default_run(torch, scheduler, num_steps)
    ours = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver=f"dpmpp_{order}m")
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-4)
    # Not DDIM: the higher-order terms matter at these step counts.
    ddim = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,))
    assert np.abs(np.asarray(ddim) - reference).max() > 100 * np.abs(np.asarray(ours) - reference).max()


UNIPC_VARIANTS = {"unipc": ("bh2", 2), "unipc_3": ("bh2", 3), "unipc_bh1": ("bh1", 2), "unipc_bh1_3": ("bh1", 3)}


@pytest.mark.parametrize("name", list(UNIPC_VARIANTS))
@pytest.mark.parametrize("num_steps, spacing", DIFFUSERS_GRIDS + [(2, "linspace")])
def test_unipc_matches_diffusers_unipc_multistep_at_its_defaults(name, num_steps, spacing):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    variant, order = UNIPC_VARIANTS[name]
    scheduler = diffusers.UniPCMultistepScheduler(timestep_spacing=spacing, solver_type=variant, solver_order=order)
    seq, reference, inputs = diffusers_default_run(torch, scheduler, num_steps, inputs=True)
    ours, trajectory = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver=name,
                              return_trajectory=True)
    # Every step's input (our predictor's point) and, where diffusers' result is finite, the sample.
    # diffusers' bh1 returns NaN on its last step (to sigma = 0: B(h) = h = -inf times a zero sum).
    np.testing.assert_allclose(np.asarray(trajectory["x_t"]), inputs, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(ours)) and (variant == "bh1" or np.all(np.isfinite(reference)))
    if variant == "bh2":
        np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-4)
    if num_steps > 2:  # the corrector matters: UniPC is not its predictor (= DPM-Solver++(2M) at order 2) alone
        _, predictor_only = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver="dpmpp_2m",
                                   return_trajectory=True)
        gap = np.abs(np.asarray(predictor_only["x_t"]) - inputs).max()
        assert gap > 100 * np.abs(np.asarray(trajectory["x_t"]) - inputs).max()


@pytest.mark.parametrize("num_steps, spacing", [(4, "linspace"), (10, "linspace"), (10, "trailing")])
def test_heun_matches_diffusers_heun_discrete(num_steps, spacing):
    """diffusers' HeunDiscreteScheduler at its defaults (its grid includes t = 0 and ends with an
    Euler step to sigma = 0; 2S - 1 calls). It works in x / alpha and feeds the network
    ``x / sqrt(sigma^2 + 1)``, our x_t."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    scheduler = with_our_alphas(torch, diffusers.HeunDiscreteScheduler(timestep_spacing=spacing))
    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps.numpy()
    assert np.all(timesteps == np.round(timesteps)), timesteps  # integer t on these grids
    seq = timesteps[::2].astype(np.int32)
    x = torch.from_numpy(np.asarray(x_T(), np.float64).copy()) * float(scheduler.sigmas[0] ** 2 + 1) ** 0.5
    for t in scheduler.timesteps:
        x = scheduler.step(torch_eps(torch, scheduler.scale_model_input(x, t), t), t, x).prev_sample
    calls = []

    def counting_eps(x, t, weight):
        jax.debug.callback(lambda t: calls.append(int(t[0])), t)
        return toy_eps(x, t, weight)

    ours = sample(counting_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver="heun")
    np.testing.assert_allclose(np.asarray(ours), x.numpy(), rtol=1e-4, atol=1e-4)
    jax.effects_barrier()
    assert calls == timesteps.astype(int).tolist()  # 2S - 1 calls at diffusers' timesteps
    ddim = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,))
    assert np.abs(np.asarray(ddim) - x.numpy()).max() > 100 * np.abs(np.asarray(ours) - x.numpy()).max()


@pytest.mark.parametrize("num_steps, spacing", [(5, "linspace"), (10, "leading"), (20, "trailing")])
def test_dpmpp_2m_sde_matches_diffusers_with_the_same_noise(num_steps, spacing):
    """diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++") at its other
    defaults, fed our noise: step i draws ``normal(split(key, S)[i])``."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    scheduler = with_our_alphas(torch, diffusers.DPMSolverMultistepScheduler(
        algorithm_type="sde-dpmsolver++", timestep_spacing=spacing))
    scheduler.set_timesteps(num_steps)
    seq = scheduler.timesteps.numpy().astype(np.int32)
    key = jax.random.PRNGKey(11)
    noise = [np.asarray(jax.random.normal(k, SHAPE), np.float64) for k in iteration_keys(key, num_steps)]
    x = torch.from_numpy(np.asarray(x_T(), np.float64).copy())
    for t, z in zip(scheduler.timesteps, noise, strict=True):
        x = scheduler.step(torch_eps(torch, x, t), t, x, variance_noise=torch.from_numpy(z)).prev_sample
    ours = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, key=key, eps_fn_args=(0.5,), solver="dpmpp_2m_sde")
    np.testing.assert_allclose(np.asarray(ours), x.numpy(), rtol=1e-4, atol=1e-4)
    ode = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver="dpmpp_2m")
    assert np.abs(np.asarray(ode) - x.numpy()).max() > 100 * np.abs(np.asarray(ours) - x.numpy()).max()


@pytest.mark.parametrize("num_steps", [1, 2, 10, 50])
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


# --------------------------------------------------------------------------------------------
# The exact-score Gaussian mixture (tests/mixture_oracle.py)
# --------------------------------------------------------------------------------------------
def test_dpmpp_2m_at_10_steps_beats_ddim_at_10_and_is_about_ddim_at_20():
    """With the authors' quad spacing, 2M at S = 10 is about twice as close to the data (sliced
    W1) as DDIM with uniform spacing at S = 10 and about as close as DDIM at S = 20."""
    data = draw_data(NUM_SAMPLES, seed=100)

    def distance(solver, num_steps, kind):
        seq = timestep_sequence(num_steps, T, kind)
        return sliced_w1(sample(mixture_eps, prior(3), seq, ORACLE_ALPHAS, solver=solver), data)

    dpmpp_10 = distance("dpmpp_2m", 10, "quad")
    ddim_10, ddim_20 = distance("ddim", 10, "uniform"), distance("ddim", 20, "uniform")
    assert dpmpp_10 < 0.6 * ddim_10, (dpmpp_10, ddim_10)
    assert dpmpp_10 < 1.5 * ddim_20, (dpmpp_10, ddim_20)


@pytest.mark.parametrize("spacing, num_steps", [("uniform", 10), ("quad", 10), ("uniform", 20)])
def test_multistep_solvers_are_no_worse_than_ddim(spacing, num_steps):
    """Our spacings end at t = 0 and then take a near-no-op step to alpha = 1. The references lower
    the order on the last *finite* steps (DPM-Solver's lower_order_final, UniPC's
    ``min(order, steps + 1 - step)``): lowering only the step to alpha = 1 leaves the real last
    step (100 -> 0 at S = 10 uniform, a log-SNR step 4.7 times the one before) at full order,
    where it extrapolates badly (measured before the fix: 2M 0.245, 3M 0.529, UniPC 0.248 against
    DDIM 0.078 on uniform). At S >= 15 the references keep full order up to their last step, which
    on our grids is the step into t = 0 (S = 20 uniform, before: 2M 0.097, 3M 0.179, DDIM 0.035)."""
    data = draw_data(NUM_SAMPLES, seed=100)
    seq = timestep_sequence(num_steps, T, spacing)

    def distance(solver):
        return sliced_w1(sample(mixture_eps, prior(3), seq, ORACLE_ALPHAS, solver=solver), data)

    ddim = distance("ddim")
    for solver in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        assert distance(solver) <= ddim + 0.005, (solver, distance(solver), ddim)


def _posterior_variance_mixture(x, t):
    """The oracle's eps with a learned-variance channel half of v = -1 (sigma^2 = the posterior variance)."""
    eps = mixture_eps(x, t)
    return jnp.concatenate([eps, -jnp.ones_like(eps)], axis=-1)


def test_every_solver_converges_to_the_data_and_to_the_same_ode_solution():
    """At S = 1000 every solver reproduces the mixture's moments, and the ODE solvers, being
    solvers of the same ODE from the same x_T, land on the same samples as DDIM."""
    mean, covariance = exact_mean_and_covariance()
    x_T, seq = prior(9, num=2000), timestep_sequence(1000, T)
    reference = np.asarray(sample(mixture_eps, x_T, seq, ORACLE_ALPHAS))
    for solver in SOLVERS[1:]:
        key = jax.random.PRNGKey(3) if REGISTRY[solver].stochastic else None
        model, options = mixture_eps, {}
        if REGISTRY[solver].uses_variance:  # ancestral DDPM with v = -1: the posterior variance
            model, options = _posterior_variance_mixture, {"output_type": "learned_range"}
        x = np.asarray(sample(model, x_T, seq, ORACLE_ALPHAS, key=key, solver=solver, **options))
        assert frechet_distance(x, mean, covariance) < 1e-3, solver
        if not REGISTRY[solver].stochastic:
            assert np.mean(np.abs(x - reference)) < 2e-3, (solver, np.mean(np.abs(x - reference)))


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
def test_state_stays_float32_under_a_bfloat16_input_and_network(solver):
    """A bf16 x_T and a network that takes and returns bf16, at S = 1000, against float32 from the
    same (rounded) x_T: the state is carried in float32, so the result differs by about the
    network's own rounding (measured: mean 8e-4, max 0.04, every mode kept), not by 1,000
    roundings of the state (before: mean 0.10, max 0.91, 6.5% of samples changed mode)."""
    def bf16_eps(x, t):
        assert x.dtype == jnp.bfloat16  # only the network's input is cast to x_T's dtype
        return mixture_eps(x.astype(jnp.float32), t).astype(jnp.bfloat16)

    x_T, seq = prior(8, num=2000).astype(jnp.bfloat16), timestep_sequence(1000, T)
    ours = sample(bf16_eps, x_T, seq, ORACLE_ALPHAS, solver=solver)
    assert ours.dtype == jnp.bfloat16
    reference = np.asarray(sample(mixture_eps, x_T.astype(jnp.float32), seq, ORACLE_ALPHAS, solver=solver))
    difference = np.abs(np.asarray(ours, np.float32) - reference)
    assert difference.mean() < 4e-3 and difference.max() < 0.15, (difference.mean(), difference.max())
    assert np.mean(mode_of(np.asarray(ours, np.float32)) == mode_of(reference)) > 0.995


# --------------------------------------------------------------------------------------------
# Compilation, options, validation
# --------------------------------------------------------------------------------------------
# Shapes, dtypes, calls, retracing, prediction types, clipping, trajectories, keys and memory:
# tests/test_solver_contract.py, for every registered solver.
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver="euler"), "solver"),
        (dict(solver="dpmpp_2m", eta=0.5, key=jax.random.PRNGKey(0)), "eta"),
        (dict(solver="unipc", sigma_hat=True, key=jax.random.PRNGKey(0)), "sigma_hat"),
        (dict(solver="plms", clip_x0=True, rederive_eps=False), "rederive_eps"),
    ],
)
def test_unknown_solvers_and_unsupported_combinations_raise_before_tracing(kwargs, message):
    def never_traced(x, t):
        raise AssertionError("traced")

    with pytest.raises(ValueError, match=message):
        sample(never_traced, x_T(), timestep_sequence(5, T), ALPHAS_CUMPROD, **kwargs)


@pytest.mark.parametrize("z", [-3.0, -2.01, -1.99, -1.51, -1.49, -1.01, -0.99, -0.101, -0.099, -0.05, 0.05, 0.099,
                               0.101, 0.99, 1.01, 1.49, 1.51, 1.99, 2.01, 3.0])
def test_phi_series_near_zero_match_the_closed_form(z):
    """phi_k switches to a Taylor series for small |z|: both sides of the switch against the
    closed form in float64 (where cancellation costs nothing at these z); phi_4 is UniPC-3's."""
    from ddim_jax.solvers.base import _phi2, _phi3, phi

    phi2 = (np.expm1(z) - z) / z**2
    phi3 = (np.expm1(z) - z - z**2 / 2) / z**3
    phi4 = (np.expm1(z) - z - z**2 / 2 - z**3 / 6) / z**4
    np.testing.assert_allclose(float(_phi2(jnp.float32(z))), phi2, rtol=1e-6)
    np.testing.assert_allclose(float(_phi3(jnp.float32(z))), phi3, rtol=1e-6)
    np.testing.assert_allclose(float(phi(jnp.float32(z), 4)), phi4, rtol=1e-6)


def reference_orders(order, num_steps, ends_at_zero, gate):
    """The order of each step as the reference codes pick it, re-stated from them: diffusers'
    ``DPMSolverMultistepScheduler.step`` (warm-up via ``lower_order_nums``, ``lower_order_final``
    on its last step at every S with ``final_sigmas_type="zero"``, ``lower_order_second`` below 15
    steps) and ``UniPCMultistepScheduler`` (``min(order, len(timesteps) - step_index)``) on a grid
    whose last step is to sigma = 0; on a grid ending at t = 0, the official DPM-Solver's
    ``min(order, steps + 1 - step)`` below 15 steps over the finite steps, our last finite step
    at first order at every S, and the first-order step from t = 0 to alpha = 1."""
    grid = num_steps - 1 if ends_at_zero else num_steps
    orders = []
    for i in range(grid):
        if gate is None:  # UniPC
            o = min(order, grid - i, i + 1)
        elif i == grid - 1:
            o = 1
        elif i < order - 1:
            o = i + 1
        elif grid < gate:
            o = min(order, grid - i)
        else:
            o = order
        orders.append(o)
    return orders + [1] * (num_steps - grid)


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "unipc", "unipc_3"])
@pytest.mark.parametrize("num_steps", [1, 2, 3, 5, 10, 14, 15, 16, 20])
@pytest.mark.parametrize("ends_at_zero", [True, False])
def test_multistep_orders_follow_the_references(name, num_steps, ends_at_zero):
    from ddim_jax.solvers import multistep_orders

    solver = REGISTRY[name]
    seq = np.arange(num_steps)[::-1] * 10 + (0 if ends_at_zero else 10)
    gate = getattr(solver, "lower_final_below", None)
    ours = multistep_orders(solver.order, seq, gate)
    assert np.asarray(ours).tolist() == reference_orders(solver.order, num_steps, ends_at_zero, gate)


# --------------------------------------------------------------------------------------------
# k-diffusion (test-only; `pip install --no-deps k-diffusion==0.1.1.post1 torchsde torchdiffeq
# trampoline`): its sampling and external modules alone, without the package's training stack.
# --------------------------------------------------------------------------------------------
@pytest.fixture
def k_diffusion(monkeypatch):
    torch = pytest.importorskip("torch")
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed")
    package = types.ModuleType("k_diffusion")
    package.__path__ = [os.path.dirname(spec.origin)]  # skip its __init__ (clip, wandb, kornia, ...)
    monkeypatch.setitem(sys.modules, "k_diffusion", package)
    # k_diffusion.utils imports torchvision.transforms.functional, unused by the samplers.
    vision = types.ModuleType("torchvision")
    vision.transforms = types.ModuleType("torchvision.transforms")
    vision.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    for name, module in (("torchvision", vision), ("torchvision.transforms", vision.transforms),
                         ("torchvision.transforms.functional", vision.transforms.functional)):
        monkeypatch.setitem(sys.modules, name, module)
    sampling = importlib.import_module("k_diffusion.sampling")
    external = importlib.import_module("k_diffusion.external")

    class TorchEps(torch.nn.Module):
        def forward(self, x, t):
            return torch_eps(torch, x, t.reshape(-1)[0])

    alphas = torch.from_numpy(np.asarray(ALPHAS_CUMPROD, np.float64).copy())
    denoiser = external.DiscreteEpsDDPMDenoiser(TorchEps(), alphas, quantize=True)
    return torch, sampling, denoiser


@pytest.mark.parametrize("num_steps", [5, 10, 20])
def test_karras_spacing_is_k_diffusions_karras_sigmas_quantized(k_diffusion, num_steps):
    torch, sampling, denoiser = k_diffusion
    sigmas = sampling.get_sigmas_karras(num_steps, denoiser.sigma_min, denoiser.sigma_max, rho=7.0)[:-1]
    theirs = denoiser.sigma_to_t(sigmas).numpy()
    np.testing.assert_array_equal(timestep_sequence(num_steps, T, "karras", alphas_cumprod=ALPHAS_CUMPROD), theirs)


def k_diffusion_run(torch, sampler, denoiser, seq, **kwargs):
    """k-diffusion's ``sampler`` from our x_T over the sigmas of ``seq`` and then 0."""
    sigmas = torch.cat([denoiser.sigmas[torch.from_numpy(seq.astype(np.int64))], torch.zeros(1, dtype=torch.float64)])
    x = torch.from_numpy(np.asarray(x_T(), np.float64).copy()) * (1 + sigmas[0] ** 2) ** 0.5  # x_t / alpha_t
    return sampler(denoiser, x, sigmas, disable=True, **kwargs).numpy()


@pytest.mark.parametrize("num_steps", [5, 10])
def test_heun_matches_k_diffusion_sample_heun(k_diffusion, num_steps):
    torch, sampling, denoiser = k_diffusion
    seq = timestep_sequence(num_steps, T, "karras", alphas_cumprod=ALPHAS_CUMPROD)
    reference = k_diffusion_run(torch, sampling.sample_heun, denoiser, seq)
    ours = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, eps_fn_args=(0.5,), solver="heun")
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_2m_sde"])
def test_dpmpp_2m_and_sde_match_k_diffusion(k_diffusion, solver):
    """On a grid that ends above t = 0 (k-diffusion lowers no order but the step to sigma = 0,
    as our rule does there for order 2); the SDE fed our noise."""
    torch, sampling, denoiser = k_diffusion
    seq = timestep_sequence(10, T, "karras", alphas_cumprod=ALPHAS_CUMPROD)[:-1]
    key = jax.random.PRNGKey(12)
    kwargs = {}
    if solver == "dpmpp_2m_sde":
        noise = iter([torch.from_numpy(np.asarray(jax.random.normal(k, SHAPE), np.float64))
                      for k in iteration_keys(key, len(seq))])
        kwargs = dict(noise_sampler=lambda sigma, sigma_next: next(noise))
    sampler = sampling.sample_dpmpp_2m if solver == "dpmpp_2m" else sampling.sample_dpmpp_2m_sde
    reference = k_diffusion_run(torch, sampler, denoiser, seq, **kwargs)
    ours = sample(toy_eps, x_T(), seq, ALPHAS_CUMPROD, key=key if kwargs else None, eps_fn_args=(0.5,), solver=solver)
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-4)
