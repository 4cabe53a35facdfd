"""sample.py on converted ADM directories (random-weight reduced networks through convert-adm /
convert-adm-classifier): --pretrained DIR with the learned-variance output type, guided-diffusion's
respacing as --skip, and classifier guidance (--classifier, --classifier-scale, --label)."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.adm_reference import randomize
from ddim_jax.generation import program
from ddim_jax.generation.loading import load_pretrained
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.pretrained import main as pretrained_main

torch = pytest.importorskip("torch")
pytest.importorskip("guided_diffusion")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 6
MODEL_FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                   num_head_channels=16, use_new_attention_order=True, learn_sigma=True, class_cond=True,
                   resblock_updown=True, use_scale_shift_norm=True, use_fp16=False, noise_schedule="cosine",
                   diffusion_steps=1000)
CLASSIFIER_FLAGS = dict(image_size=16, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
                        classifier_channel_mult="1,2", classifier_num_head_channels=16, num_classes=NUM_CLASSES)


def _flags(flags):
    return " ".join(f"--{k} {v}" for k, v in flags.items())


@pytest.fixture(scope="module")
def adm_dirs(tmp_path_factory):
    """(model dir, classifier dir): converted from random guided-diffusion networks."""
    from guided_diffusion import script_util
    from guided_diffusion.unet import EncoderUNetModel

    root = tmp_path_factory.mktemp("adm")
    model_flags = {k: v for k, v in MODEL_FLAGS.items() if k not in ("noise_schedule", "diffusion_steps")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(script_util, "NUM_CLASSES", NUM_CLASSES)
        ref = randomize(script_util.create_model(**model_flags), 0)
    classifier = randomize(EncoderUNetModel(
        image_size=16, in_channels=3, model_channels=32, out_channels=NUM_CLASSES, num_res_blocks=1,
        attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=True,
        resblock_updown=True, pool="attention"), 1)
    torch.save(ref.state_dict(), root / "model.pt")
    torch.save(classifier.state_dict(), root / "classifier.pt")
    flags = _flags(dict(MODEL_FLAGS, num_classes=NUM_CLASSES))
    assert pretrained_main(["convert-adm", str(root / "model.pt"), str(root / "model"), "--flags", flags]) == 0
    assert pretrained_main(["convert-adm-classifier", str(root / "classifier.pt"), str(root / "classifier"),
                            "--flags", _flags(CLASSIFIER_FLAGS)]) == 0
    return str(root / "model"), str(root / "classifier")


def test_sample_py_with_ddim25_and_a_classifier_end_to_end(adm_dirs, tmp_path, subprocess_env):
    """The issue's command on two (host) devices gives the images of one device in this process."""
    model, classifier = adm_dirs
    out = tmp_path / "guided.npz"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "sample.py"), "--pretrained", model, "--skip", "ddim", "--steps", "25",
         "--classifier", classifier, "--classifier-scale", "1", "--label", "all", "--num", "3", "--batch-size", "4",
         "--out", str(out), "--noprogress"], cwd=REPO, capture_output=True, text=True, timeout=400,
        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ADM" in result.stdout and "classifier" in result.stdout and "on 2 device(s)" in result.stdout
    images = np.load(out)["images"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8 and images.std() > 0
    one_device = program.run(program.SampleOptions(
        workdir=None, pretrained=model, skip="ddim", steps=25, classifier=classifier, classifier_scale=1.0,
        label="all", num=3, batch_size=4, progress=False, out=str(tmp_path / "one_device.npz")))
    # Per-image keys: the same images whatever the device count (up to uint8 rounding of float sums).
    assert np.abs(np.asarray(one_device).astype(int) - images.astype(int)).max() <= 1


def test_adm_directory_loads_with_its_diffusion_settings(adm_dirs):
    loaded = load_pretrained(adm_dirs[0])
    assert loaded.output_type == "learned_range" and loaded.num_classes == NUM_CLASSES and not loaded.null_class
    assert loaded.defaults["clip_x0"] and loaded.rederive_eps and loaded.num_timesteps == 1000
    np.testing.assert_array_equal(loaded.timesteps(4, "ddim"), [750, 500, 250, 0])


@pytest.mark.parametrize("solver", ["dpmpp_2m", "ddpm"])
def test_other_solvers_and_ancestral_sampling_run_on_an_adm_directory(adm_dirs, tmp_path, solver):
    options = program.SampleOptions(workdir=None, pretrained=adm_dirs[0], steps=4, skip="respace", num=2,
                                    batch_size=2, progress=False, solver=solver, label="3",
                                    out=str(tmp_path / f"{solver}.npz"))
    images = program.run(options)
    assert np.asarray(images).shape == (2, 16, 16, 3)


@pytest.mark.parametrize("changes, message", [
    (dict(guidance=2.0), "needs a null class"),
    (dict(skip="ddim", steps=999), "integer stride"),
    (dict(skip="respace:2,2", steps=5), "sum to 4"),
    (dict(classifier_scale=2.0), "needs --classifier"),
    (dict(skip="sideways"), "unknown --skip"),
])
def test_adm_user_errors_are_one_line(adm_dirs, tmp_path, changes, message):
    options = program.SampleOptions(workdir=None, pretrained=adm_dirs[0], steps=4, num=2, progress=False,
                                    out=str(tmp_path / "x.npz"))
    with pytest.raises(SampleError, match=message):
        program.run(dataclasses.replace(options, **changes))


def test_timestep_respacing_becomes_the_default_skip_and_steps():
    from ddim_jax.generation.adm_loading import respacing_defaults

    assert respacing_defaults("") == {}
    assert respacing_defaults("ddim25") == {"skip": "ddim", "num_steps": 25}
    assert respacing_defaults("250") == {"skip": "respace", "num_steps": 250}
    assert respacing_defaults("10,15,20") == {"skip": "respace:10,15,20", "num_steps": 45}


def test_evaluate_loads_the_classifier_and_refuses_classifier_free_guidance(adm_dirs, tmp_path):
    """evaluate.py's options on converted directories: the classifier is loaded (and checked) before
    the metric inputs; a model without a null class has no classifier-free guidance axis."""
    from ddim_jax import evaluation

    model, classifier = adm_dirs
    base = evaluation.EvaluateOptions(pretrained=model, steps=[4], skips=["ddim"], num=4, out=str(tmp_path / "eval"),
                                      progress=False)
    with pytest.raises(SampleError, match="needs a null class"):
        evaluation.run(dataclasses.replace(base, guidances=[2.0]))
    with pytest.raises(SampleError, match="holds a diffusion UNet, not a classifier"):
        evaluation.run(dataclasses.replace(base, classifier=model))
    with pytest.raises(SampleError, match="--inception"):   # classifier loaded; then the metric's inputs
        evaluation.run(dataclasses.replace(base, classifier=classifier, classifier_scales=[0.0, 1.0]))
    assert not (tmp_path / "eval" / "table.json").exists()
