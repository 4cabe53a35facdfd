"""guided-diffusion (the ADM reference; dev extra ``guided-diffusion-sdk``) on random weights, for the
ADM benchmarks and the ADM parity tests.

- :data:`RELEASED_FLAGS` / :data:`RELEASED_CLASSIFIER_FLAGS`: the ``MODEL_FLAGS`` / classifier flags
  of guided-diffusion's README for the class-conditional ImageNet 64 and 256 models.
- :func:`reference_unet` / :func:`reference_classifier`: guided-diffusion's own networks built from
  such flags by its own flag parsing (``add_dict_to_argparser``) and factories (``create_model``,
  ``create_classifier``), float32.
- :func:`randomize`: every parameter random, so that no branch is zero (speed does not depend on
  the values; parity checks need every path exercised).
- :func:`reference_diffusion`: guided-diffusion's ``SpacedDiffusion`` on *our* float32 schedule.
- :func:`reference_cond_fn`: the classifier gradient of guided-diffusion's ``classifier_sample.py``.

torch and guided_diffusion are imported inside the functions (dev-only dependencies).
"""

from __future__ import annotations

import argparse
import inspect
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# guided-diffusion's README, "Sampling from pre-trained models": the class-conditional ImageNet models.
RELEASED_FLAGS = {
    "adm64": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
             "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 "
             "--num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True "
             "--use_scale_shift_norm True",
    "adm256": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
              "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
              "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
}
# Their noisy classifiers' flags (the 64 one is deeper than classifier_defaults()).
RELEASED_CLASSIFIER_FLAGS = {"adm64": "--image_size 64 --classifier_depth 4", "adm256": "--image_size 256"}
# Classifier flags of ours that guided-diffusion's create_classifier fixes (channel multipliers by
# image size, 64 channels per head, 1000 classes); flags setting them need EncoderUNetModel directly.
_OUR_CLASSIFIER_FLAGS = ("classifier_channel_mult", "classifier_num_head_channels", "num_classes")


def flag_string(flags: Mapping[str, Any]) -> str:
    """``{"image_size": 64}`` -> ``"--image_size 64"``."""
    return " ".join(f"--{key} {value}" for key, value in flags.items())


def _parse_with_guided_diffusion(flags: Mapping[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``flags`` parsed as guided-diffusion's scripts parse their command line."""
    from guided_diffusion import script_util

    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, defaults)
    return vars(parser.parse_args(shlex.split(flag_string(flags))))


def reference_unet(flags: Mapping[str, Any]):
    """guided-diffusion's ``UNetModel`` for model flags (diffusion flags among them are ignored),
    float32 whatever ``use_fp16`` says, in eval mode, with its default (random) initialisation."""
    from guided_diffusion import script_util

    args = _parse_with_guided_diffusion(flags, script_util.model_and_diffusion_defaults())
    names = inspect.signature(script_util.create_model).parameters
    return script_util.create_model(**{k: v for k, v in args.items() if k in names and k != "use_fp16"},
                                    use_fp16=False).eval()


def reference_classifier(flags: Mapping[str, Any]):
    """guided-diffusion's noisy classifier (``EncoderUNetModel``) for classifier flags, float32, eval.

    With only guided-diffusion's own flags it is its ``create_classifier``; flags that only we have
    (:data:`_OUR_CLASSIFIER_FLAGS`, for small test networks) build ``EncoderUNetModel`` directly with
    the same keyword arguments ``create_classifier`` passes.
    """
    from guided_diffusion import script_util
    from guided_diffusion.unet import EncoderUNetModel

    ours = {key: flags[key] for key in _OUR_CLASSIFIER_FLAGS if key in flags}
    args = _parse_with_guided_diffusion({k: v for k, v in flags.items() if k not in ours},
                                        script_util.classifier_defaults())
    args["classifier_use_fp16"] = False
    if not ours:
        return script_util.create_classifier(**args).eval()
    size = args["image_size"]
    return EncoderUNetModel(
        image_size=size, in_channels=3, model_channels=args["classifier_width"],
        out_channels=int(ours.get("num_classes", 1000)), num_res_blocks=args["classifier_depth"],
        attention_resolutions=tuple(size // int(r) for r in args["classifier_attention_resolutions"].split(",")),
        channel_mult=tuple(int(m) for m in str(ours["classifier_channel_mult"]).split(",")),
        num_head_channels=int(ours.get("classifier_num_head_channels", 64)),
        use_scale_shift_norm=args["classifier_use_scale_shift_norm"],
        resblock_updown=args["classifier_resblock_updown"], pool=args["classifier_pool"]).eval()


def randomize(module, seed: int):
    """Every parameter random (zero-initialised output layers too): weights N(0, 1 / fan_in),
    norms' scales 1 + 0.3 N, biases 0.3 N, so that no branch is zero. Returns the module in eval mode."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * noise)
            elif name.endswith("label_emb.weight"):
                p.copy_(noise)
            else:
                p.copy_(noise / np.sqrt(p[0].numel() if "positional_embedding" not in name else p.shape[0]))
    return module.eval()


def state_dict_numpy(module) -> dict[str, np.ndarray]:
    """A torch module's state dict as NumPy arrays (copies), what the ADM converter reads."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def reference_diffusion(alphas_cumprod: Any, respacing: str):
    """guided-diffusion's ``create_gaussian_diffusion(learn_sigma=True, timestep_respacing=...)`` on the
    float32 ``alphas_cumprod`` we sample with (betas re-derived from it in float64). With its own
    float64 schedule, ``1 - alphas_cumprod`` near t = 0 (4e-5 for the cosine schedule) differs from
    ours by the float32 rounding of alphas_cumprod, 5e-4 relative, which moves the last steps'
    variance and mean coefficients by as much; on the same schedule only the implementations differ."""
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion.respace import SpacedDiffusion, space_timesteps

    ac = np.asarray(alphas_cumprod, np.float64)
    betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
    return SpacedDiffusion(use_timesteps=space_timesteps(len(ac), respacing), betas=betas,
                           model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.LEARNED_RANGE,
                           loss_type=gd.LossType.MSE, rescale_timesteps=False)


def reference_cond_fn(classifier, scale: float) -> Callable:
    """``cond_fn(x, t, y)`` of guided-diffusion's ``classifier_sample.py``: ``scale`` times the
    gradient of ``log softmax(classifier(x, t))[y]`` with respect to x."""
    import torch

    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.nn.functional.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn
