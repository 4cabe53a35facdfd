"""The paper's Table 1 for any run: sample a grid of (spacing, solver, S, eta, seed) cells, measure each.

- :mod:`~ddim_jax.evaluation.cells`: the grid (:func:`make_cells`) and each cell's identity
  (everything that determines its images and its numbers);
- :mod:`~ddim_jax.evaluation.measuring`: the metric registry (``fid``, ``kid``, ``is``, ``pr``,
  ``digits``: what each needs, what it writes) and :func:`prepare_metrics` / :func:`measure`;
- :mod:`~ddim_jax.evaluation.reports`: ``table.json`` (atomic read-merge-write), ``table.md``, plots;
- :mod:`~ddim_jax.evaluation.runner`: :class:`EvaluateOptions` and :func:`run`, all of
  ``evaluate.py``.

docs/evaluation.md describes the records, their identity and the table layout.
"""

from ddim_jax.evaluation import cells, measuring, reports, runner
from ddim_jax.evaluation.cells import Cell, image_identity, make_cells
from ddim_jax.evaluation.measuring import REGISTRY, Metric, MetricSetup, measure, prepare_metrics, register
from ddim_jax.evaluation.reports import TABLE_FILE, markdown_table, plot_metric, read_table
from ddim_jax.evaluation.runner import DEFAULT_NUM, EvaluateOptions, evaluate_cell, run

METRICS = tuple(REGISTRY)

__all__ = [
    "DEFAULT_NUM",
    "METRICS",
    "REGISTRY",
    "TABLE_FILE",
    "Cell",
    "EvaluateOptions",
    "Metric",
    "MetricSetup",
    "cells",
    "evaluate_cell",
    "image_identity",
    "make_cells",
    "markdown_table",
    "measure",
    "measuring",
    "plot_metric",
    "prepare_metrics",
    "read_table",
    "register",
    "reports",
    "run",
    "runner",
]
