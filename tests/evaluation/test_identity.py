"""A table cell is exactly one configuration: reruns never reuse another configuration's records or
sample files, the table pools only seeds, and two evaluate.py on one --out lose nothing.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ddim_jax import evaluation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _evaluate(*args, env, wait=True):
    command = [sys.executable, os.path.join(REPO, "evaluate.py"), *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_rerun_with_other_params_or_num_measures_anew(tiny_run, tmp_path, subprocess_env):
    """--noema (the raw params; at step 0 they equal the EMA params bit for bit, so only the identity's
    EMA/raw field tells them apart) and another N are new cells with their own sample files; the
    same command again is skipped."""
    out = tmp_path / "eval"
    base = [f"--workdir={tiny_run}", "--steps=2", "--num=4", "--batch_size=4", f"--out={out}", "--noprogress"]
    for extra in ([], ["--noema"], ["--num=6"]):
        result = _evaluate(*base, *extra, env=subprocess_env())
        assert result.returncode == 0, result.stderr[-3000:]
        assert "skipped" not in result.stdout, (extra, result.stdout)
    records = json.loads((out / "table.json").read_text())
    assert len(records) == 3
    assert sorted((r["identity"]["ema"], r["num"]) for r in records) == [(False, 4), (True, 4), (True, 6)]
    assert len({r["samples"] for r in records}) == 3            # one sample file per identity
    for record in records:
        assert np.load(record["samples"])["images"].shape[0] == record["num"]
    again = _evaluate(*base, env=subprocess_env())
    assert again.returncode == 0 and again.stdout.count("skipped") == 1, again.stdout


def test_two_evaluates_on_one_out_lose_no_record(tiny_run, tmp_path, subprocess_env):
    """Started together: each either finishes with its record in table.json, or is refused in one
    line naming the other (the lock); never a silently lost record."""
    out = tmp_path / "eval"
    runs = [_evaluate(f"--workdir={tiny_run}", f"--steps={steps}", "--num=4", "--batch_size=4", f"--out={out}",
                      "--noprogress", env=subprocess_env(), wait=False) for steps in (2, 3)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    finished = [steps for steps, (code, _, _) in zip((2, 3), results) if code == 0]
    for code, _, stderr in results:
        if code != 0:
            assert code == 1 and len(stderr.strip().splitlines()) == 1 and "evaluate.py" in stderr, stderr[-2000:]
    assert finished
    records = json.loads((out / "table.json").read_text())
    assert sorted(r["steps"] for r in records) == sorted(finished)


def test_merge_keeps_records_written_meanwhile(tmp_path):
    """table.json is read, merged and written atomically: a record another writer added after this
    run read the table survives; a record of the same identity is replaced, not duplicated."""
    first = _record(seed=0)
    evaluation.reports.merge_records(str(tmp_path), [first])
    other = _record(seed=1)
    evaluation.reports.merge_records(str(tmp_path), [other])
    remeasured = dict(first, fd_digits=1.0)
    merged = evaluation.reports.merge_records(str(tmp_path), [remeasured])
    assert sorted((r["seed"], r["fd_digits"]) for r in merged) == [(0, 1.0), (1, 5.0)]
    assert json.loads((tmp_path / "table.json").read_text()) == merged


def _record(*, seed=0, num=500, dtype="float32", clip_x0=False, steps=10, value=5.0, source="runs/digits"):
    identity = {"params_sha256": "ab" * 32, "source": source, "ema": True, "dtype": dtype, "skip": "uniform",
                "solver": "ddim", "steps": steps, "eta": 0.0, "sigma_hat": False, "clip_x0": clip_x0,
                "guidance": None, "num": num, "seed": seed, "sampling_version": 1, "metrics": ["digits"]}
    record = dict(identity, identity=identity, fd_digits=value)
    record["identity_sha256"] = evaluation.cells.identity_hash(identity)
    return record


def test_table_pools_only_seeds_and_names_the_configuration():
    """Four seed-0 records that differ in dtype, N and clipping are four rows, never '8.5 ± 2.5'."""
    records = [_record(value=5.0), _record(dtype="bfloat16", value=7.0), _record(num=100, value=9.0),
               _record(clip_x0=True, value=13.0)]
    table = evaluation.markdown_table(records, "fd_digits")
    assert "±" not in table
    for value in ("| 5 |", "| 7 |", "| 9 |", "| 13 |"):
        assert value in table, table
    assert "N = 500," in table and "N = [" not in table
    assert "bfloat16" in table and "clipped" in table and "runs/digits" in table
    seeds = evaluation.markdown_table([_record(seed=0, value=4.0), _record(seed=1, value=6.0)], "fd_digits")
    assert "| 5 ± 1.4 |" in seeds                         # only seeds are pooled


def test_plot_x_axis_shows_the_measured_steps(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda figure=None: kept.append(figure))
    records = [_record(steps=steps, value=100.0 / steps) for steps in (10, 20, 50, 100)]
    evaluation.plot_metric(records, "fd_digits", str(tmp_path / "fd.png"))
    figure = kept[0]
    figure.canvas.draw()
    labels = [label.get_text() for label in figure.axes[0].get_xticklabels() if label.get_text()]
    assert labels == ["10", "20", "50", "100"]


@pytest.mark.parametrize("below, message", [("", "is a file"), ("eval", "lies under")])
def test_out_that_is_or_lies_under_a_file_is_one_line(tiny_run, tmp_path, subprocess_env, below, message):
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" / below if below else tmp_path / "taken"
    result = _evaluate(f"--workdir={tiny_run}", f"--out={out}", "--num=4", "--steps=2", env=subprocess_env())
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def test_table_json_that_is_not_a_list_of_records_is_one_line(tiny_run, tmp_path, subprocess_env):
    (tmp_path / "table.json").write_text("[1, 2]")
    result = _evaluate(f"--workdir={tiny_run}", f"--out={tmp_path}", "--num=4", "--steps=2", env=subprocess_env())
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a JSON list of records" in lines[0], result.stderr[-2000:]


def test_every_field_that_changes_the_images_changes_the_identity():
    """The params, their source, EMA or raw, the schedule, the precision (a bf16 rerun never reuses
    fp32 records), the sampler, guidance, N and the seed each give another identity and sample file."""
    import dataclasses
    import types

    from ddim_jax.generation.loading import LoadedModel
    from ddim_jax.generation.sampler_spec import SamplerSpec

    loaded = LoadedModel(model=types.SimpleNamespace(dtype="float32"), params=None,
                         alphas_cumprod=np.linspace(1, 0.1, 10), image_shape=(8, 8, 1),
                         description="runs/a step 5 (EMA params)", fingerprint="f" * 64)
    cell = evaluation.Cell(SamplerSpec(steps=2, clip_x0=False), seed=0)
    base = evaluation.image_identity(loaded, cell, num=4, ema=True)
    variants = [
        evaluation.image_identity(dataclasses.replace(loaded, fingerprint="e" * 64), cell, num=4, ema=True),
        evaluation.image_identity(dataclasses.replace(loaded, description="runs/b"), cell, num=4, ema=True),
        evaluation.image_identity(loaded, cell, num=4, ema=False),
        evaluation.image_identity(dataclasses.replace(loaded, alphas_cumprod=np.linspace(1, 0.2, 10)), cell, num=4,
                                  ema=True),
        evaluation.image_identity(dataclasses.replace(loaded, model=types.SimpleNamespace(dtype="bfloat16")), cell,
                                  num=4, ema=True),
        evaluation.image_identity(loaded, dataclasses.replace(cell, spec=SamplerSpec(steps=2, clip_x0=True)), num=4,
                                  ema=True),
        evaluation.image_identity(loaded, dataclasses.replace(cell, guidance=2.0), num=4, ema=True),
        evaluation.image_identity(loaded, cell, num=8, ema=True),
        evaluation.image_identity(loaded, dataclasses.replace(cell, seed=1), num=4, ema=True),
    ]
    hashes = {evaluation.cells.identity_hash(identity) for identity in [base, *variants]}
    assert len(hashes) == 1 + len(variants)
    names = {evaluation.cells.sample_file_name(cell, identity) for identity in [base, *variants]}
    assert len(names) == 1 + len(variants)
