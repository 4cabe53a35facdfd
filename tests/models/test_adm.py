"""ADM (guided-diffusion) UNet and noisy classifier, and their converters.

The reference is ``guided-diffusion-sdk`` (a packaging of openai/guided-diffusion; dev extra). The
released flag sets are checked at full size from abstract shapes only (parameter counts, and every
name and shape against the reference built on torch's meta device); reduced-width versions of each
flag set, with every option kept on, are run against ``UNetModel.forward`` with random weights
(zero-initialised layers included) for every label.
"""

import functools
import json
import os

import jax
import numpy as np
import pytest

from benchmarks.adm_reference import randomize
from ddim_jax.models import abstract_params
from ddim_jax.models.adm import create_adm_classifier, create_adm_model
from ddim_jax.models.adm_config import ADMConfigError, parse_flag_string
from ddim_jax.pretrained import PretrainedError, load_adm, main
from ddim_jax.pretrained.adm_convert import adm_schedule
from ddim_jax.pretrained.adm_mapping import convert_adm_state_dict, expected_tensors

torch = pytest.importorskip("torch")

# guided-diffusion's README, "Sampling from pre-trained models" (MODEL_FLAGS of each released model).
_COMMON = ("--attention_resolutions 32,16,8 --diffusion_steps 1000 --learn_sigma True --resblock_updown True "
           "--use_fp16 True --use_scale_shift_norm True ")
RELEASED = {
    "64_cond": _COMMON + "--class_cond True --dropout 0.1 --image_size 64 --noise_schedule cosine --num_channels 192 "
                         "--num_head_channels 64 --num_res_blocks 3 --use_new_attention_order True",
    "128_cond": _COMMON + "--class_cond True --image_size 128 --noise_schedule linear --num_channels 256 "
                          "--num_heads 4 --num_res_blocks 2",
    "256_cond": _COMMON + "--class_cond True --image_size 256 --noise_schedule linear --num_channels 256 "
                          "--num_head_channels 64 --num_res_blocks 2",
    "256_uncond": _COMMON + "--class_cond False --image_size 256 --noise_schedule linear --num_channels 256 "
                            "--num_head_channels 64 --num_res_blocks 2",
    "lsun": _COMMON + "--class_cond False --dropout 0.1 --image_size 256 --noise_schedule linear --num_channels 256 "
                      "--num_head_channels 64 --num_res_blocks 2",
}
# Parameter counts of guided-diffusion's create_model / create_classifier for these flags.
RELEASED_COUNTS = {"64_cond": 295_904_454, "128_cond": 421_529_606, "256_cond": 553_838_086,
                   "256_uncond": 552_814_086, "lsun": 552_814_086}
CLASSIFIER_COUNTS = {(64, 2): 41_287_016, (128, 2): 42_568_040, (256, 2): 54_096_360, (64, 4): 65_438_568}
# Reduced versions: 16 px, width 32, 16-channel heads, three levels, attention at two of them.
_REDUCE = {"64_cond": dict(channel_mult="1,2,3", num_res_blocks="2"), "128_cond": dict(channel_mult="1,1,2"),
           "256_cond": dict(channel_mult="1,1,2"), "256_uncond": dict(channel_mult="1,2,2"),
           "lsun": dict(channel_mult="1,2,2")}
NUM_CLASSES = 6  # small label set, so that a batch holds every label
SMALL_CLASSIFIER = dict(image_size=16, classifier_width=32, classifier_depth=2, classifier_attention_resolutions="8,4",
                        classifier_channel_mult="1,2,3", classifier_num_head_channels=16, num_classes=10)


def _model_flags(flags):
    from guided_diffusion.script_util import model_and_diffusion_defaults

    return {k: v for k, v in flags.items() if k in model_and_diffusion_defaults() and k not in
            ("diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart",
             "rescale_timesteps", "rescale_learned_sigmas")}


def _typed(flags):
    """guided-diffusion's own parsing of flag strings (str2bool, int)."""
    from guided_diffusion.script_util import model_and_diffusion_defaults, str2bool

    defaults = model_and_diffusion_defaults()
    return {k: (str2bool(v) if isinstance(defaults.get(k), bool) else type(defaults[k])(v)) for k, v in flags.items()}


def _reduced_flags(name):
    flags = parse_flag_string(RELEASED[name])
    flags.update(dict(image_size="16", num_channels="32", attention_resolutions="8,4", num_res_blocks="1"),
                 **_REDUCE[name])
    if "num_head_channels" in flags:
        flags["num_head_channels"] = "16"
    return flags


def _randomize(module, seed):
    return randomize(module, seed)


def _state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _torch_forward(module, x, *args):
    with torch.no_grad():
        out = module(torch.from_numpy(x.transpose(0, 3, 1, 2)), *(torch.from_numpy(np.asarray(a)) for a in args))
    out = out.numpy()
    return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, x, t, *labels):
    """One compilation per (architecture, shapes): equal modules hash equal."""
    return model.apply({"params": params}, x, t, *labels)


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _inputs(batch, size=16, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 999, batch).round().astype(np.int64)
    return rng.standard_normal((batch, size, size, 3)).astype(np.float32), t


@pytest.fixture(scope="module")
def reduced(request):
    """``reduced(name)`` -> (flags, random reference UNetModel with NUM_CLASSES classes), cached."""
    from guided_diffusion import script_util

    cache = {}

    def make(name):
        if name not in cache:
            flags = _reduced_flags(name)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(script_util, "NUM_CLASSES", NUM_CLASSES)
                ref = script_util.create_model(**_typed(dict(_model_flags(flags), use_fp16="False")))
            cache[name] = (dict(flags, num_classes=str(NUM_CLASSES)), _randomize(ref, len(cache)))
        return cache[name]

    pytest.importorskip("guided_diffusion")
    return make


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_flag_sets_have_guided_diffusions_parameters(name):
    flags = parse_flag_string(RELEASED[name])
    model = create_adm_model(**flags)
    assert model.dtype == "bfloat16" and model.out_channels == 6  # use_fp16, learn_sigma
    size = int(flags["image_size"])
    assert _count(abstract_params(model, (size, size, 3))) == RELEASED_COUNTS[name]
    if name == "lsun":  # the same architecture as 256_uncond (dropout only differs)
        return
    script_util = pytest.importorskip("guided_diffusion.script_util")
    with torch.device("meta"):
        ref = script_util.create_model(**_typed(_model_flags(flags)))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: shape for k, (_, shape) in expected_tensors(model, size).items()} == want


@pytest.mark.parametrize("size,depth", list(CLASSIFIER_COUNTS))
def test_classifier_flag_sets_have_guided_diffusions_parameters(size, depth):
    model = create_adm_classifier(image_size=size, classifier_depth=depth)
    assert _count(abstract_params(model, (size, size, 3))) == CLASSIFIER_COUNTS[(size, depth)]
    script_util = pytest.importorskip("guided_diffusion.script_util")
    defaults = script_util.classifier_defaults()
    with torch.device("meta"):
        ref = script_util.create_classifier(**dict(defaults, image_size=size, classifier_depth=depth))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: shape for k, (_, shape) in expected_tensors(model, size).items()} == want


def test_lsun_is_the_256_uncond_architecture_with_dropout():
    """So the 256_uncond forward test below covers the LSUN flag set (dropout is off at sampling)."""
    for lsun_flags, uncond_flags in ((parse_flag_string(RELEASED["lsun"]), parse_flag_string(RELEASED["256_uncond"])),
                                     (_reduced_flags("lsun"), _reduced_flags("256_uncond"))):
        lsun, uncond = create_adm_model(**lsun_flags), create_adm_model(**uncond_flags)
        assert lsun.dropout == 0.1 and uncond.dropout == 0.0 and lsun == uncond.clone(dropout=0.1)


@pytest.mark.parametrize("name", [name for name in RELEASED if name != "lsun"])
def test_reduced_flag_sets_match_unet_forward_for_every_label(name, reduced):
    flags, ref = reduced(name)
    model = create_adm_model(dtype="float32", **flags)
    params = convert_adm_state_dict(_state(ref), model, 16)
    cond = model.num_classes > 0
    x, t = _inputs(NUM_CLASSES if cond else 2)
    labels = (np.arange(NUM_CLASSES),) if cond else ()
    got = np.asarray(_apply(model, params, x, t, *labels))
    want = _torch_forward(ref, x, t, *labels)
    assert got.shape == want.shape == x.shape[:3] + (6,)
    # eps and the variance interpolation v separately: float32, different summation orders (~2e-6).
    assert _rel(got[..., :3], want[..., :3]) < 1e-5 and _rel(got[..., 3:], want[..., 3:]) < 1e-5
    if cond:  # every label changes the output, so the comparison above covers them
        shifted = np.asarray(_apply(model, params, x, t, np.roll(labels[0], 1)))
        assert _rel(shifted, want) > 1e-2


def test_the_two_attention_orders_split_heads_differently():
    """The same fused projection under guided-diffusion's QKVAttention and QKVAttentionLegacy orders
    gives different outputs (so the multi-head parity tests above tell the orders apart), and each
    order matches an explicit per-head computation with the channel layout of its class."""
    from ddim_jax.models.adm_blocks import qkv_attention

    rng = np.random.default_rng(0)
    heads, c, length = 3, 4, 5
    qkv = rng.standard_normal((2, length, 3 * heads * c)).astype(np.float32)
    for new_order in (True, False):
        want = np.zeros((2, length, heads * c))
        for h in range(heads):
            # new: channel j*H*c + h*c + i; legacy: h*3c + j*c + i (part j = q, k, v)
            part = [qkv[..., j * heads * c + h * c:][..., :c] if new_order else qkv[..., h * 3 * c + j * c:][..., :c]
                    for j in range(3)]
            logits = np.einsum("bti,bsi->bts", part[0], part[1]) / np.sqrt(c)
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            want[..., h * c:(h + 1) * c] = np.einsum("bts,bsi->bti", weights, part[2])
        got = np.asarray(qkv_attention(qkv, heads, new_order))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert _rel(qkv_attention(qkv, heads, True), qkv_attention(qkv, heads, False)) > 0.1


def test_bf16_compute_stays_close_to_the_float32_reference():
    """use_fp16 -> bfloat16 compute (params float32) stays within bf16 rounding of the float32
    reference (a two-level version of the 128 flag set, to keep the extra compilation small)."""
    script_util = pytest.importorskip("guided_diffusion.script_util")
    flags = dict(_reduced_flags("128_cond"), channel_mult="1,2", class_cond="False")
    ref = _randomize(script_util.create_model(**_typed(dict(_model_flags(flags), use_fp16="False"))), 5)
    model = create_adm_model(**flags)
    assert model.dtype == "bfloat16"
    params = convert_adm_state_dict(_state(ref), model, 16)
    x, t = _inputs(2)
    got = np.asarray(_apply(model, params, x, t))
    assert got.dtype == np.float32 and _rel(got, _torch_forward(ref, x, t)) < 3e-2


# The adaptive pool (not used by the released classifiers) on a smaller trunk: two levels, depth 1.
_SMALL_ADAPTIVE = dict(classifier_pool="adaptive", classifier_depth=1, classifier_channel_mult="1,2",
                       classifier_attention_resolutions="8")


def _reference_classifier(flags, seed=7):
    """guided-diffusion's EncoderUNetModel with the kwargs its create_classifier derives from ``flags``."""
    from guided_diffusion.unet import EncoderUNetModel

    ref = EncoderUNetModel(
        image_size=16, in_channels=3, model_channels=32, out_channels=10, num_res_blocks=flags["classifier_depth"],
        attention_resolutions=tuple(16 // int(r) for r in flags["classifier_attention_resolutions"].split(",")),
        channel_mult=tuple(int(m) for m in flags["classifier_channel_mult"].split(",")), num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True, pool=flags.get("classifier_pool", "attention"))
    return _randomize(ref, seed)


@pytest.mark.parametrize("changes", [{}, _SMALL_ADAPTIVE], ids=["attention_pool", "adaptive_pool"])
def test_reduced_classifier_matches_encoder_unet_forward(changes):
    pytest.importorskip("guided_diffusion")
    flags = dict(SMALL_CLASSIFIER, **changes)
    ref = _reference_classifier(flags)
    model = create_adm_classifier(dtype="float32", **flags)
    params = convert_adm_state_dict(_state(ref), model, 16)
    x, t = _inputs(2)
    got = np.asarray(_apply(model, params, x, t))
    want = _torch_forward(ref, x, t)
    assert got.shape == want.shape == (2, 10)
    assert _rel(got, want) < 1e-5


def _flag_string(flags):
    return " ".join(f"--{k} {v}" for k, v in flags.items())


def test_convert_adm_round_trip(tmp_path, reduced, capsys):
    flags, ref = reduced("64_cond")
    pt = tmp_path / "model.pt"
    torch.save(ref.state_dict(), pt)
    assert main(["convert-adm", str(pt), str(tmp_path / "out"), "--flags", _flag_string(flags)]) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "adm_config.json").read_text())
    assert config["architecture"] == "ADMUNet" and config["format"] == "ddim-jax-adm"
    assert config["flags"]["num_channels"] == 32 and config["flags"]["use_fp16"] is True  # typed, not strings
    assert config["diffusion"] == dict(noise_schedule="cosine", diffusion_steps=1000, learn_sigma=True,
                                       rescale_timesteps=False, timestep_respacing="", predict_xstart=False)
    model, params, schedule = load_adm(tmp_path / "out", dtype="float32")
    x, t = _inputs(NUM_CLASSES, seed=3)
    labels = np.arange(NUM_CLASSES)[::-1].copy()
    assert _rel(_apply(model, params, x, t, labels), _torch_forward(ref, x, t, labels)) < 1e-5
    assert schedule["learn_sigma"] and schedule["prediction_type"] == "eps"
    assert create_adm_model(**config["flags"]).dtype == "bfloat16"  # use_fp16 True: load_adm's default dtype


def test_convert_adm_classifier_round_trip(tmp_path, capsys):
    pytest.importorskip("guided_diffusion")
    ref = _reference_classifier(SMALL_CLASSIFIER, seed=11)
    pt = tmp_path / "classifier.pt"
    torch.save(ref.state_dict(), pt)
    flags = _flag_string(dict(SMALL_CLASSIFIER, classifier_scale=2.5))
    assert main(["convert-adm-classifier", str(pt), str(tmp_path / "out"), "--flags", flags]) == 0
    model, params, _ = load_adm(tmp_path / "out", dtype="float32")
    config = json.loads((tmp_path / "out" / "adm_config.json").read_text())
    assert config["architecture"] == "ADMClassifier" and config["sampling"] == {"classifier_scale": 2.5}
    x, t = _inputs(2, seed=5)
    assert _rel(_apply(model, params, x, t), _torch_forward(ref, x, t)) < 1e-5


@pytest.mark.parametrize("schedule,steps", [("linear", 1000), ("cosine", 1000), ("linear", 4000), ("cosine", 10)])
def test_schedules_match_guided_diffusion(schedule, steps):
    gd = pytest.importorskip("guided_diffusion.gaussian_diffusion")
    ours = adm_schedule(dict(noise_schedule=schedule, diffusion_steps=steps, learn_sigma=True,
                             rescale_timesteps=False, timestep_respacing=""))
    np.testing.assert_allclose(ours["betas"], gd.get_named_beta_schedule(schedule, steps), rtol=1e-12, atol=0)


class _NotATensor:
    pass


def test_conversion_errors_are_one_line_and_named(tmp_path, reduced, capsys):
    flags, ref = reduced("256_uncond")
    good = _state(ref)
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "out.2.weight"}, "missing weights: out.2.weight"),
        "unexpected": (dict(good, **{"extra.weight": np.zeros(3, np.float32)}), "unexpected weights: extra.weight"),
        "shape": (dict(good, **{"out.2.bias": np.zeros(5, np.float32)}), "wrong shapes: out.2.bias"),
        "int": (dict(good, **{"out.2.bias": np.zeros(6, np.int64)}), "non-float tensors: out.2.bias"),
    }
    for case, (state, message) in cases.items():
        pt = tmp_path / f"{case}.pt"
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pt)
        assert main(["convert-adm", str(pt), str(tmp_path / case), "--flags", _flag_string(flags)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, case
        assert not os.path.exists(tmp_path / case)
    torch.save(ref.state_dict(), tmp_path / "good.pt")
    bad_flags = {"--num_channels abc": "ADM num_channels: must be an integer",
                 "--batch_size 4": "ADM batch_size: is not a model flag",
                 "--noise_schedule quad": "ADM noise_schedule", "--predict_xstart True": "ADM predict_xstart",
                 "--num_head_channels 24": "ADM num_head_channels", "--class_cond maybe": "ADM class_cond",
                 "--image_size": "ADM image_size: has no value"}
    for extra, message in bad_flags.items():
        key = extra.split()[0][2:]
        given = _flag_string({k: v for k, v in flags.items() if k != key})
        assert main(["convert-adm", str(tmp_path / "good.pt"), str(tmp_path / "x"), "--flags", f"{given} {extra}"]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, extra
    torch.save({"w": _NotATensor()}, tmp_path / "object.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    for name, message in (("object.pt", "cannot read"), ("list.pt", "does not hold a state dict"),
                          ("absent.pt", "no such file")):
        assert main(["convert-adm", str(tmp_path / name), str(tmp_path / "y"), "--flags", _flag_string(flags)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, name
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    assert main(["convert-adm", str(tmp_path / "good.pt"), str(tmp_path / "full"), "--flags", _flag_string(flags)]) == 1
    assert "not an empty directory" in capsys.readouterr().err


def test_load_adm_refuses_what_it_cannot_read(tmp_path, reduced):
    with pytest.raises(PretrainedError, match="no adm_config.json"):
        load_adm(tmp_path)
    flags, ref = reduced("256_uncond")
    torch.save(ref.state_dict(), tmp_path / "m.pt")
    assert main(["convert-adm", str(tmp_path / "m.pt"), str(tmp_path / "d"), "--flags", _flag_string(flags)]) == 0
    config_path = tmp_path / "d" / "adm_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, format_version=2)))
    with pytest.raises(PretrainedError, match="format"):
        load_adm(tmp_path / "d")
    config_path.write_text(json.dumps(dict(config, flags=dict(config["flags"], num_channels=64))))
    with pytest.raises(PretrainedError, match="wrong shapes"):
        load_adm(tmp_path / "d")
    config_path.write_text(json.dumps(dict(config, flags=dict(config["flags"], dropout=2))))
    with pytest.raises(PretrainedError, match="ADM dropout"):
        load_adm(tmp_path / "d")


def test_flag_errors_name_the_flag():
    for flags, field in ((dict(num_channels=0), "num_channels"), (dict(channel_mult="1,x"), "channel_mult"),
                         (dict(image_size=48), "channel_mult"), (dict(num_heads=3), "num_heads"),
                         (dict(num_heads_upsample=0), "num_heads_upsample"), (dict(use_fp16="sure"), "use_fp16"),
                         (dict(num_channels=48), "num_channels"), (dict(typo=1), "typo")):
        with pytest.raises(ADMConfigError) as info:
            create_adm_model(**flags)
        assert info.value.field == field and "\n" not in str(info.value)
    with pytest.raises(ADMConfigError, match="classifier_pool"):
        create_adm_classifier(classifier_pool="spatial")
    with pytest.raises(ADMConfigError, match="classifier_num_head_channels"):
        create_adm_classifier(classifier_width=96)
