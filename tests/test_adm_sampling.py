"""Whole sampling runs of an ADM model against guided-diffusion's own loops on respaced diffusions:
``ddim_sample_loop`` (eta 0 and 1) and ``p_sample_loop`` (ancestral, learned variance), with and
without classifier guidance, on random-weight reduced networks of the 64-px flag set (16 px, batch
2), with the same x_T and the same per-step noise (``torch.randn_like`` patched to hand out ours)."""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.adm_reference import randomize, reference_cond_fn, reference_diffusion
from ddim_jax.guidance import classifier_cond_fn
from ddim_jax.models.adm import create_adm_classifier, create_adm_model
from ddim_jax.models.adm_calls import ADMEpsFn, ADMLogitsFn
from ddim_jax.pretrained.adm_convert import adm_schedule
from ddim_jax.pretrained.adm_mapping import convert_adm_state_dict
from ddim_jax.sampling import sample
from ddim_jax.schedules import alphas_cumprod_from_betas, timestep_sequence
from ddim_jax.solvers.base import iteration_keys, normal

torch = pytest.importorskip("torch")
pytest.importorskip("guided_diffusion")

NUM_CLASSES = 6
SIZE = 16
# guided-diffusion's 64x64 ImageNet flags at reduced width and depth (every option kept on).
FLAGS = dict(image_size=SIZE, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_head_channels=16, use_new_attention_order=True, learn_sigma=True, class_cond=True,
             resblock_updown=True, use_scale_shift_norm=True, dropout=0.1, use_fp16=False)
CLASSIFIER = dict(image_size=SIZE, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
                  classifier_channel_mult="1,2", classifier_num_head_channels=16, num_classes=NUM_CLASSES)
LABELS = np.array([4, 1])
SCALE = 3.0


@pytest.fixture(scope="module")
def networks():
    """(reference UNetModel, reference classifier, our eps_fn, params, our cond_fn, classifier params)."""
    from guided_diffusion import script_util
    from guided_diffusion.unet import EncoderUNetModel

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(script_util, "NUM_CLASSES", NUM_CLASSES)
        ref = script_util.create_model(**FLAGS)
    ref = randomize(ref, 0)
    ref_classifier = randomize(EncoderUNetModel(
        image_size=SIZE, in_channels=3, model_channels=32, out_channels=NUM_CLASSES, num_res_blocks=1,
        attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=True,
        resblock_updown=True, pool="attention"), 1)
    model = create_adm_model(dtype="float32", **dict(FLAGS, num_classes=NUM_CLASSES))
    classifier = create_adm_classifier(dtype="float32", **CLASSIFIER)
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    classifier_state = {k: v.detach().numpy().copy() for k, v in ref_classifier.state_dict().items()}
    return (ref, ref_classifier, ADMEpsFn(model), convert_adm_state_dict(state, model, SIZE),
            classifier_cond_fn(ADMLogitsFn(classifier)), convert_adm_state_dict(classifier_state, classifier, SIZE))


def _reference_run(networks, respacing, loop, eta, guided, x_T, noises, alphas_cumprod, float64=False):
    """guided-diffusion's loop from our x_T and noise; ``float64``: the networks, the schedule's
    coefficients (its ``_extract_into_tensor`` casts them to float32), the time embedding and
    GroupNorm (both cast to float32 too) in float64, as a reference for the ill-conditioned runs."""
    from guided_diffusion import gaussian_diffusion, unet
    from guided_diffusion import nn as gd_nn

    ref, ref_classifier = networks[:2]
    dtype = torch.float64 if float64 else torch.float32
    diffusion = reference_diffusion(alphas_cumprod, respacing)
    y = torch.from_numpy(LABELS)

    def to_torch(array):
        return torch.from_numpy(np.asarray(array, np.float64 if float64 else np.float32).transpose(0, 3, 1, 2).copy())

    pending = [to_torch(n) for n in noises]
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(torch, "randn_like", lambda x: pending.pop(0))
        if float64:
            ref, ref_classifier = copy.deepcopy(ref).double(), copy.deepcopy(ref_classifier).double()
            ref.dtype = ref_classifier.dtype = torch.float64
            embedding = unet.timestep_embedding
            patch.setattr(unet, "timestep_embedding", lambda *args, **kwargs: embedding(*args, **kwargs).double())
            patch.setattr(gd_nn.GroupNorm32, "forward", lambda self, x: torch.nn.GroupNorm.forward(self, x))
            patch.setattr(gaussian_diffusion, "_extract_into_tensor", lambda arr, timesteps, shape: torch.from_numpy(
                arr)[timesteps].to(dtype).reshape((-1,) + (1,) * (len(shape) - 1)).expand(shape))
        cond_fn = reference_cond_fn(ref_classifier, SCALE)  # classifier_sample.py's
        run = functools.partial(diffusion.ddim_sample_loop, eta=eta) if loop == "ddim" else diffusion.p_sample_loop
        out = run(lambda x, t, y=None: ref(x, t, y), (2, 3, SIZE, SIZE), noise=to_torch(x_T), clip_denoised=True,
                  model_kwargs={"y": y}, cond_fn=cond_fn if guided else None, device="cpu", progress=False)
    assert not pending, "one draw per step"
    assert out.dtype == dtype
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "classifier"])
@pytest.mark.parametrize("loop, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)], ids=["ddim", "ddim_eta1", "ddpm"])
@pytest.mark.parametrize("respacing, kind, steps", [("ddim5", "ddim", 5), ("10", "respace", 10)])
def test_sampling_matches_guided_diffusion_loops(networks, respacing, kind, steps, loop, eta, guided):
    _check_against_guided_diffusion(networks, respacing, kind, steps, loop, eta, guided)


@pytest.mark.parametrize("respacing, kind, steps, loop, eta", [
    ("ddim25", "ddim", 25, "ddim", 0.0),     # classifier_sample.py --timestep_respacing ddim25 --use_ddim True
    ("50", "respace", 50, "ddpm", 0.0),       # --timestep_respacing 50 (ancestral, learned variance)
])
def test_the_issue_respacings_with_the_classifier(networks, respacing, kind, steps, loop, eta):
    """The respacings the ADM paper's DDIM rows and issue 18 name, guided (the grid above uses
    shorter ones of the same two rules)."""
    _check_against_guided_diffusion(networks, respacing, kind, steps, loop, eta, True)


def _check_against_guided_diffusion(networks, respacing, kind, steps, loop, eta, guided):
    _, _, eps_fn, params, cond_fn, classifier_params = networks
    schedule = adm_schedule(dict(noise_schedule="cosine", diffusion_steps=1000, learn_sigma=True,
                                 rescale_timesteps=False, timestep_respacing=""))
    alphas_cumprod = alphas_cumprod_from_betas(schedule["betas"])
    seq = timestep_sequence(steps, 1000, kind)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (2, SIZE, SIZE, 3))
    key = jax.random.PRNGKey(1)
    noises = [normal(k, x_T.shape, jnp.float32) for k in iteration_keys(key, steps)]
    guidance = dict(cond_fn=cond_fn, cond_fn_args=(classifier_params, jnp.asarray(LABELS), SCALE)) if guided else {}
    ours = sample(eps_fn, x_T, seq, alphas_cumprod, eta=eta, key=key if (eta or loop == "ddpm") else None,
                  eps_fn_args=(params, jnp.asarray(LABELS)), clip_x0=True, solver="ddim" if loop == "ddim" else "ddpm",
                  output_type="learned_range", **guidance)
    want = _reference_run(networks, respacing, loop, eta, guided, x_T, noises, alphas_cumprod)
    error = float(np.abs(np.asarray(ours, np.float64) - want).max())
    print(f"{respacing} {loop} eta={eta} guided={guided}: max abs error {error:.2e}")
    if not _ill_conditioned(seq, loop, eta, guided):
        assert error < 1e-4
        return
    # Against guided-diffusion in float64: its float32 run is itself off there.
    want64 = _reference_run(networks, respacing, loop, eta, guided, x_T, noises, alphas_cumprod, float64=True)
    error64 = float(np.abs(np.asarray(ours, np.float64) - want64).max())
    reference_error64 = float(np.abs(want - want64).max())
    print(f"  vs float64: ours {error64:.2e}, guided-diffusion float32 {reference_error64:.2e}")
    if guided:
        assert error64 < 2.5e-3
    else:   # eta = 1: the cancellation-free eps coefficient (ddim_jax/diffusion.py:direction_kernel)
        assert error64 < 1e-4 and reference_error64 > 10 * error64


def _ill_conditioned(seq, loop, eta, guided):
    """DDIM runs that start at t = 999 of the cosine schedule (alpha = 2.4e-9) with noise or guidance.
    Errors elsewhere are 5e-6 .. 1.1e-5. There eta = 1's ``sqrt(1 - a_prev - sigma^2)`` cancels in
    guided-diffusion's float32 (3.45e-4 against the exact 2.78e-4; ours does not cancel: 1e-3 from
    its float32 run, 7e-6 from its float64 one), and guidance's x0 = (x - sqrt(1 - a) eps) / sqrt(a)
    amplifies the rounding of eps 2e4 times: guided-diffusion in float32 is 1.7e-3 (eta 0) and
    5e-4 (eta 1) from itself in float64, ours 1.0e-3 and 1.5e-4."""
    return loop == "ddim" and seq[0] == 999 and (eta > 0 or guided)
