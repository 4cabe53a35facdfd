"""guided-diffusion's flags for the ADM UNet and its noisy classifier, checked and turned into the
keyword arguments of :class:`~ddim_jax.models.adm.ADMUNet` / :class:`~ddim_jax.models.adm.ADMClassifier`.

The flags are guided-diffusion's command-line flags (the ``MODEL_FLAGS`` / ``CLASSIFIER_FLAGS`` of
its README), with the defaults of its ``model_and_diffusion_defaults()`` and
``classifier_defaults()`` (what its sampling scripts start from). Values may be Python values or
the strings its command line takes (``"True"``, ``"32,16,8"``). Every problem is a one-line
:class:`ADMConfigError` naming the flag.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from ddim_jax.errors import UserError
from ddim_jax.models.adm_blocks import NUM_GROUPS

# The model flags of guided-diffusion's model_and_diffusion_defaults(), plus ``num_classes`` (ours:
# guided-diffusion fixes it at 1000, ImageNet; a different value only for small test models).
MODEL_DEFAULTS: dict[str, Any] = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
    attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
    use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
    learn_sigma=False, num_classes=1000,
)
# guided-diffusion's diffusion_defaults() (learn_sigma also shapes the model: 6 output channels).
DIFFUSION_DEFAULTS: dict[str, Any] = dict(
    learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
)
# guided-diffusion's classifier_defaults(). Its create_classifier fixes the channel multipliers by
# image size, 64 channels per attention head and 1000 classes; the last three flags are ours, for
# other (small) classifiers, and default to those fixed values.
CLASSIFIER_DEFAULTS: dict[str, Any] = dict(
    image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
    classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
    classifier_resblock_updown=True, classifier_pool="attention",
    classifier_channel_mult="", classifier_num_head_channels=64, num_classes=1000,
)
NOISE_SCHEDULES = ("linear", "cosine")
CLASSIFIER_POOLS = ("attention", "adaptive")
DTYPES = ("float32", "bfloat16")
_TRUE, _FALSE = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0")


class ADMConfigError(UserError, ValueError):
    """A guided-diffusion flag is unknown, malformed or out of range; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"ADM {field}: {message}")
        self.field = field
        self.detail = message


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """guided-diffusion's channel multipliers for ``channel_mult=""`` (64, 128, 256 and 512 px)."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if image_size not in table:
        raise ADMConfigError("channel_mult", f"has no default for image_size {image_size} (guided-diffusion "
                                             "knows 64, 128, 256, 512); pass channel_mult")
    return table[image_size]


def parse_flag_string(text: str) -> dict[str, str]:
    """``"--image_size 64 --class_cond True"`` -> ``{"image_size": "64", "class_cond": "True"}``
    (also ``--key=value``); a flag without a value or given twice is an error."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise ADMConfigError("flags", f"cannot split {text!r}: {err}") from None
    flags: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) == 2:
            raise ADMConfigError("flags", f"expected --name value pairs, got {word!r}")
        if "=" in word:
            key, value = word[2:].split("=", 1)
            i += 1
        elif i + 1 < len(words) and not words[i + 1].startswith("--"):
            key, value = word[2:], words[i + 1]
            i += 2
        else:
            raise ADMConfigError(word[2:], "has no value")
        if key in flags:
            raise ADMConfigError(key, "is given twice")
        flags[key] = value
    return flags


def as_bool(field: str, value: Any) -> bool:
    """A bool, or a string guided-diffusion's ``str2bool`` accepts (``"True"``, ``"f"``, ``"1"``...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ADMConfigError(field, f"must be True or False, got {value!r}")


def as_int(field: str, value: Any, minimum: int | None = None) -> int:
    """An int (or its decimal string), at least ``minimum``."""
    if isinstance(value, bool):
        raise ADMConfigError(field, f"must be an integer, got {value!r}")
    try:
        number = int(value) if isinstance(value, (int, str)) else None
    except ValueError:
        number = None
    if number is None:
        raise ADMConfigError(field, f"must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise ADMConfigError(field, f"must be >= {minimum}, got {number}")
    return number


def as_float(field: str, value: Any, low: float, high: float) -> float:
    """A number in ``[low, high)``."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number < high:
        raise ADMConfigError(field, f"must be a number in [{low}, {high}), got {value!r}")
    return number


def as_numbers(field: str, value: Any, cast=int) -> tuple:
    """``"32,16,8"`` or a sequence -> a tuple of positive numbers."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(cast(v) for v in items if not isinstance(v, bool))
        ok = len(numbers) == len(items) > 0 and all(n > 0 for n in numbers)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ADMConfigError(field, f"must be a comma-separated list of positive numbers, got {value!r}")
    return numbers


def complete_flags(flags: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``defaults`` updated with ``flags``; a flag ``defaults`` does not know is an error."""
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ADMConfigError(unknown[0], f"is not a {what} flag (known: {', '.join(sorted(defaults))})")
    return {**defaults, **flags}


def typed_flags(flags: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Every flag of ``defaults`` as a value of its default's type (``"True"`` -> True, ``"192"`` ->
    192; list flags as guided-diffusion's comma-separated strings), for storing in a JSON config."""
    typed: dict[str, Any] = {}
    for key, default in defaults.items():
        value = flags.get(key, default)
        if isinstance(default, bool):
            value = as_bool(key, value)
        elif isinstance(default, int):
            value = as_int(key, value)
        elif isinstance(default, float):
            value = as_float(key, value, float("-inf"), float("inf"))
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        typed[key] = str(value) if isinstance(default, str) else value
    return typed


def _dtype(use_fp16: bool, dtype: str | None) -> str:
    if dtype is None:
        return "bfloat16" if use_fp16 else "float32"
    if dtype not in DTYPES:
        raise ADMConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def _check_widths(field: str, channels: Sequence[int], attention_levels: Sequence[int], heads: int,
                  head_channels: int, heads_field: str) -> None:
    """Every level's width divisible by the 32 GroupNorm groups; every attention level's by its heads."""
    for level, width in enumerate(channels):
        if width % NUM_GROUPS:
            raise ADMConfigError(field, f"level {level} has {width} channels, not divisible by the "
                                        f"{NUM_GROUPS} GroupNorm groups")
    for level in attention_levels:
        width = channels[level]
        if head_channels != -1 and width % head_channels:
            raise ADMConfigError("num_head_channels", f"{head_channels} does not divide the {width} channels of "
                                                      f"attention level {level}")
        if head_channels == -1 and width % heads:
            raise ADMConfigError(heads_field, f"{heads} heads do not divide the {width} channels of attention "
                                              f"level {level}")


def _trunk_kwargs(image_size: int, width: int, depth: int, channel_mult: Any, resolutions: Any,
                  names: Mapping[str, str]) -> tuple[dict[str, Any], list[int]]:
    """The kwargs shared by the UNet and the classifier, and the levels' widths; ``names`` gives
    the flags' spellings."""
    if channel_mult in ("", None):
        mult = default_channel_mult(image_size)
    else:
        mult = as_numbers(names["channel_mult"], channel_mult, float)
        mult = tuple(int(m) if float(m).is_integer() else m for m in mult)
    channels = [int(m * width) for m in mult]
    if min(channels) < 1:
        raise ADMConfigError(names["channel_mult"], f"gives a level with no channels: {channels}")
    if image_size % 2 ** (len(mult) - 1):
        raise ADMConfigError("image_size", f"{image_size} is not divisible by 2 ** {len(mult) - 1} "
                                           f"({len(mult)} levels)")
    # Resolutions become downsample rates (image_size // res), exactly as guided-diffusion does.
    attention_ds = tuple(sorted({image_size // r for r in as_numbers(names["attention_resolutions"], resolutions)}))
    return dict(model_channels=width, channel_mult=mult, num_res_blocks=depth, attention_ds=attention_ds), channels


def adm_unet_kwargs(flags: Mapping[str, Any], dtype: str | None = None) -> dict[str, Any]:
    """:class:`~ddim_jax.models.adm.ADMUNet` kwargs for guided-diffusion model flags (missing ones
    take :data:`MODEL_DEFAULTS`; diffusion flags are ignored here). ``dtype`` overrides ``use_fp16``."""
    flags = complete_flags({k: v for k, v in flags.items() if k not in DIFFUSION_DEFAULTS or k == "learn_sigma"},
                           MODEL_DEFAULTS, "model")
    image_size = as_int("image_size", flags["image_size"], 1)
    width = as_int("num_channels", flags["num_channels"], 1)
    depth = as_int("num_res_blocks", flags["num_res_blocks"], 1)
    kwargs, channels = _trunk_kwargs(image_size, width, depth, flags["channel_mult"], flags["attention_resolutions"],
                                     {"channel_mult": "channel_mult", "attention_resolutions": "attention_resolutions"})
    heads = as_int("num_heads", flags["num_heads"], 1)
    heads_up = as_int("num_heads_upsample", flags["num_heads_upsample"], -1)
    head_channels = as_int("num_head_channels", flags["num_head_channels"], -1)
    for field, value in (("num_heads_upsample", heads_up), ("num_head_channels", head_channels)):
        if value in (0,) or value < -1:
            raise ADMConfigError(field, f"must be -1 or positive, got {value}")
    heads_up = heads if heads_up == -1 else heads_up
    levels = len(channels)
    attn_levels = [lv for lv in range(levels) if 2 ** lv in kwargs["attention_ds"]]
    _check_widths("num_channels", channels, attn_levels + [levels - 1], heads, head_channels, "num_heads")
    _check_widths("num_channels", channels, attn_levels, heads_up, head_channels, "num_heads_upsample")
    class_cond = as_bool("class_cond", flags["class_cond"])
    as_bool("use_checkpoint", flags["use_checkpoint"])  # gradient checkpointing: no effect on the outputs
    return dict(
        kwargs,
        dropout=as_float("dropout", flags["dropout"], 0.0, 1.0),
        num_heads=heads,
        num_head_channels=head_channels,
        num_heads_upsample=heads_up,
        use_scale_shift_norm=as_bool("use_scale_shift_norm", flags["use_scale_shift_norm"]),
        resblock_updown=as_bool("resblock_updown", flags["resblock_updown"]),
        use_new_attention_order=as_bool("use_new_attention_order", flags["use_new_attention_order"]),
        out_channels=6 if as_bool("learn_sigma", flags["learn_sigma"]) else 3,
        num_classes=as_int("num_classes", flags["num_classes"], 1) if class_cond else 0,
        dtype=_dtype(as_bool("use_fp16", flags["use_fp16"]), dtype),
    )


def adm_classifier_kwargs(flags: Mapping[str, Any], dtype: str | None = None) -> dict[str, Any]:
    """:class:`~ddim_jax.models.adm.ADMClassifier` kwargs for guided-diffusion classifier flags
    (missing ones take :data:`CLASSIFIER_DEFAULTS`, which give its ``create_classifier``)."""
    flags = complete_flags({k: v for k, v in flags.items() if k not in DIFFUSION_DEFAULTS},
                           CLASSIFIER_DEFAULTS, "classifier")
    image_size = as_int("image_size", flags["image_size"], 1)
    width = as_int("classifier_width", flags["classifier_width"], 1)
    depth = as_int("classifier_depth", flags["classifier_depth"], 1)
    kwargs, channels = _trunk_kwargs(image_size, width, depth, flags["classifier_channel_mult"],
                                     flags["classifier_attention_resolutions"],
                                     {"channel_mult": "classifier_channel_mult",
                                      "attention_resolutions": "classifier_attention_resolutions"})
    head_channels = as_int("classifier_num_head_channels", flags["classifier_num_head_channels"], 1)
    attn_levels = [lv for lv in range(len(channels)) if 2 ** lv in kwargs["attention_ds"]]
    try:  # the pool's heads, too, have head_channels channels (at the last level)
        _check_widths("classifier_width", channels, attn_levels + [len(channels) - 1], 1, head_channels, "")
    except ADMConfigError as err:
        if err.field != "num_head_channels":
            raise
        raise ADMConfigError("classifier_num_head_channels", err.detail) from None
    pool = flags["classifier_pool"]
    if pool not in CLASSIFIER_POOLS:
        raise ADMConfigError("classifier_pool", f"must be one of {', '.join(CLASSIFIER_POOLS)}, got {pool!r}")
    return dict(
        kwargs,
        image_size=image_size,
        num_head_channels=head_channels,
        use_scale_shift_norm=as_bool("classifier_use_scale_shift_norm", flags["classifier_use_scale_shift_norm"]),
        resblock_updown=as_bool("classifier_resblock_updown", flags["classifier_resblock_updown"]),
        pool=pool,
        out_channels=as_int("num_classes", flags["num_classes"], 1),
        dtype=_dtype(as_bool("classifier_use_fp16", flags["classifier_use_fp16"]), dtype),
    )
