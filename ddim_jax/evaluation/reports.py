"""``table.json`` (read, merged, written atomically), ``table.md`` and the plots.

The Markdown table has one block per configuration (the identity without rows, S and seed: model,
precision, spacing, clipping, N, metric setup); inside a block, rows are (solver, eta or sigma-hat[,
guidance][, classifier scale]) and columns S, as in the paper's Table 1, and only seeds are pooled into mean ± std.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ddim_jax.evaluation.cells import block_of, record_identity
from ddim_jax.generation.sampler_spec import SampleError
from ddim_jax.io.atomic import atomic_write, save_json

TABLE_FILE = "table.json"
# Titles of keys whose meaning needs a word in the table.
KEY_NOTES = {"precision": "Inception pool features, equal-size sets, k = 3",
             "recall": "Inception pool features, equal-size sets, k = 3",
             "kid": "subset size in the records' kid_subset_size"}


def read_table(out_dir: str) -> list[dict[str, Any]]:
    """The records of ``<out_dir>/table.json`` ([] when there is none); one-line errors otherwise."""
    path = os.path.join(out_dir, TABLE_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as handle:
            records = json.load(handle)
    except (OSError, ValueError) as error:
        raise SampleError(f"cannot read {path} ({type(error).__name__}); move it away to start the table afresh"
                          ) from None
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise SampleError(f"{path} is not a JSON list of records; move it away to start the table afresh")
    return records


def merge_records(out_dir: str, new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Reads ``table.json`` afresh, replaces the records of the same identity as ``new``, appends
    the others, and writes it atomically; returns the merged records."""
    fresh = {record.get("identity_sha256") for record in new}
    records = [record for record in read_table(out_dir) if record.get("identity_sha256") not in fresh]
    records.extend(dict(record) for record in new)
    save_json(os.path.join(out_dir, TABLE_FILE), records)
    return records


def _variance(identity: Mapping[str, Any]) -> str:
    return "sigma-hat" if identity.get("sigma_hat") else f"{identity.get('eta', 0.0):g}"


def _row(identity: Mapping[str, Any]) -> tuple[str, str, float | None, float | None]:
    """(solver, eta or "sigma-hat", guidance, classifier scale): the row a record belongs to."""
    return (str(identity.get("solver")), _variance(identity), identity.get("guidance"),
            identity.get("classifier_scale"))


def _row_order(row: tuple) -> tuple:
    return (row[0], row[1], row[2] or 0, row[3] or 0)


def _fmt(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g}"


def _blocks(records: Sequence[Mapping[str, Any]], key: str) -> list[tuple[dict[str, Any], list[dict]]]:
    """Records holding ``key`` grouped by :func:`block_of` their identity, in first-seen order."""
    blocks: dict[str, tuple[dict[str, Any], list[dict]]] = {}
    for record in records:
        if key not in record:
            continue
        identity = record_identity(record)
        block = block_of(identity)
        name = json.dumps(block, sort_keys=True, default=str)
        blocks.setdefault(name, (block, []))[1].append({"identity": identity, "value": record[key]})
    return sorted(blocks.values(), key=lambda item: json.dumps(item[0], sort_keys=True, default=str))


def _header(key: str, block: Mapping[str, Any]) -> str:
    """The block's configuration in words: metric, spacing, N, precision, clipping, model."""
    parts = [f"**{key}**", f"spacing `{block.get('skip')}`", f"N = {block.get('num')}",
             str(block.get("dtype") or "float32"), "clipped x0" if block.get("clip_x0") else "no clipping"]
    params = str(block.get("params_sha256") or "")[:8]
    parts.append(f"model {block.get('source')}" + (f" (params {params})" if params else ""))
    if block.get("classifier_sha256"):
        parts.append(f"classifier params {str(block['classifier_sha256'])[:8]}")
    if key in KEY_NOTES:
        parts.append(KEY_NOTES[key])
    if block.get("legacy"):
        parts.append("(a record of an earlier release, without a full identity)")
    return ", ".join(parts)


def markdown_table(records: Sequence[Mapping[str, Any]], metric_key: str) -> str:
    """One block per configuration; rows (solver, eta[, guidance][, classifier scale]), columns S,
    like the paper's Table 1; several seeds give mean ± standard deviation (ddof = 1)."""
    lines = []
    for block, members in _blocks(records, metric_key):
        steps = sorted({member["identity"].get("steps") for member in members})
        guided = any(member["identity"].get("guidance") is not None for member in members)
        classified = any(member["identity"].get("classifier_scale") is not None for member in members)
        row_names = ["solver", "eta"] + (["guidance"] if guided else []) + (["classifier"] if classified else [])
        lines += [_header(metric_key, block), "",
                  "| " + " | ".join(row_names + [f"S = {s}" for s in steps]) + " |",
                  "|" + "---|" * (len(row_names) + len(steps))]
        rows = sorted({_row(member["identity"]) for member in members}, key=_row_order)
        for row in rows:
            cells = []
            for num_steps in steps:
                values = [member["value"] for member in members
                          if _row(member["identity"]) == row and member["identity"].get("steps") == num_steps]
                cells.append(_fmt(values) if values else "")
            label = (f"{row[0]} | {row[1]} | " + (f"{row[2]:g} | " if guided else "")
                     + (f"{row[3]:g} | " if classified else ""))
            lines.append(f"| {label}" + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, figure, path: str) -> None:
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"), ".png")
    plt.close(figure)


def plot_metric(records: Sequence[Mapping[str, Any]], metric_key: str, path: str) -> None:
    """``metric_key`` against S (log axis labelled with the S values measured), one line per
    (configuration, row); the mean over seeds."""
    blocks = _blocks(records, metric_key)
    if not blocks:
        return
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    all_steps: set[int] = set()
    for index, (block, members) in enumerate(blocks):
        prefix = f"[{index + 1}] " if len(blocks) > 1 else ""
        for row in sorted({_row(m["identity"]) for m in members}, key=_row_order):
            mine = [m for m in members if _row(m["identity"]) == row]
            steps = sorted({m["identity"]["steps"] for m in mine})
            means = [np.mean([m["value"] for m in mine if m["identity"]["steps"] == s]) for s in steps]
            variance = row[1] if row[1] == "sigma-hat" else f"eta={row[1]}"
            guidance = ("" if row[2] is None else f" s={row[2]:g}") + ("" if row[3] is None else f" cs={row[3]:g}")
            axis.plot(steps, means, marker="o", label=f"{prefix}{block.get('skip')} {row[0]} {variance}{guidance}")
            all_steps.update(steps)
    axis.set_xscale("log")
    axis.set_xticks(sorted(all_steps), [str(s) for s in sorted(all_steps)])
    axis.set_xticks([], minor=True)
    axis.set_xlabel("S (sampling steps)")
    axis.set_ylabel(metric_key)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    _save_figure(plt, figure, path)


def plot_tradeoff(records: Sequence[Mapping[str, Any]], path: str) -> bool:
    """The FID-vs-IS trade-off of guidance: one point per scale, one line per S and kind of guidance
    (classifier-free ``s``, classifier ``cs``; a cell with both is drawn on the classifier's line).
    Returns whether there was anything to draw."""
    def kind(record):
        return ("cs", "classifier_scale") if record.get("classifier_scale") is not None else ("s", "guidance")

    rows = [r for r in records if (r.get("guidance") is not None or r.get("classifier_scale") is not None)
            and "fid" in r and "is" in r]
    if not rows:
        return False
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for (num_steps, (prefix, key)) in sorted({(r["steps"], kind(r)) for r in rows}):
        members = sorted((r for r in rows if r["steps"] == num_steps and kind(r) == (prefix, key)),
                         key=lambda r: r[key])
        name = "classifier" if key == "classifier_scale" else "classifier-free"
        axis.plot([r["is"] for r in members], [r["fid"] for r in members], marker="o",
                  label=f"S = {num_steps}, {name}")
        for r in members:
            axis.annotate(f"{prefix}={r[key]:g}", (r["is"], r["fid"]), fontsize=7)
    axis.set_xlabel("Inception Score")
    axis.set_ylabel("FID")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    _save_figure(plt, figure, path)
    return True


def write_reports(records: Sequence[Mapping[str, Any]], out_dir: str, keys: Sequence[str]) -> list[str]:
    """``table.md``, one ``<key>.png`` per key and, for guided FID + IS records, ``fid_vs_is.png``
    (``table.json`` itself is written by :func:`merge_records`); returns the paths."""
    keys = list(keys) + (["accuracy"] if any("accuracy" in record for record in records) else [])
    markdown_path = os.path.join(out_dir, "table.md")
    text = "\n".join(markdown_table(records, key) for key in keys).encode()
    atomic_write(markdown_path, lambda handle: handle.write(text), ".md")
    paths = [os.path.join(out_dir, TABLE_FILE), markdown_path]
    for key in keys:
        path = os.path.join(out_dir, f"{key}.png")
        plot_metric(records, key, path)
        paths.append(path)
    tradeoff = os.path.join(out_dir, "fid_vs_is.png")
    if plot_tradeoff(records, tradeoff):
        paths.append(tradeoff)
    return paths
