"""The ADM benchmark's CPU smoke mode runs end to end, and its side-by-side runs agree with
guided-diffusion (the difference column is a real parity check of the network, the DDIM sampler and
classifier guidance on random weights)."""

import json

import numpy as np
import pytest

from benchmarks import bench_adm
from benchmarks.adm_reference import RELEASED_FLAGS
from ddim_jax.models.adm_config import parse_flag_string

pytest.importorskip("torch")
pytest.importorskip("guided_diffusion")


def test_cpu_smoke_table_has_every_row_and_agrees_with_guided_diffusion(capsys, tmp_path):
    rows, table = bench_adm.main(["--cpu-smoke", "--repeats", "1", "--steps", "3", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert table in printed and "load average (1 min) before" in printed and "machine:" in printed
    assert [(row["model"], row["task"]) for row in rows] == [
        ("adm64", "network"), ("adm64", "DDIM-3 sampler"), ("adm64", "DDIM-3 sampler + classifier (scale 1)"),
        ("adm256", "network"), ("adm256", "DDIM-3 sampler")]
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) and all(line.count("|") == len(bench_adm.COLUMNS) + 1 for line in lines)
    for row in rows:
        assert row["rel_diff"] < 1e-3, row  # same weights, same x_T: the implementations agree
        assert np.isfinite(row["ratio"]) and row["ratio"] > 0 and row["ours_s"] > 0 and row["compile_s"] > 0
        assert row["ours_step_s"] == pytest.approx(row["ours_s"] / row["steps"])
    assert rows[2]["params"] > rows[1]["params"]  # the classifier's parameters counted too
    written = json.loads((tmp_path / "bench_adm.json").read_text())
    assert [row["task"] for row in written["rows"]] == [row["task"] for row in rows]
    assert (tmp_path / "bench_adm.md").read_text() == table + "\n"


def test_flag_sets_are_the_released_models_reduced_only_for_the_smoke():
    full = bench_adm.model_flags("adm256")
    assert full == parse_flag_string(RELEASED_FLAGS["adm256"]) and full["num_channels"] == "256"
    smoke = bench_adm.model_flags("adm64", smoke=True)
    assert smoke["image_size"] == "16" and smoke["use_new_attention_order"] == "True"  # other flags kept
    assert bench_adm.model_flags("adm64", width_scale=0.5)["num_channels"] == "96"
    assert bench_adm.classifier_flags("adm64") == {"image_size": "64", "classifier_depth": "4"}
