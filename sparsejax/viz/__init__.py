"""Plots of mask dynamics and training runs (matplotlib; never imported by ``import sparsejax``).

The workdir reader (:mod:`sparsejax.viz.workdir`) is NumPy only; the plotting functions are loaded on
first access, so ``from sparsejax.viz import read_workdir`` does not import matplotlib either.
Every plotting function returns a :class:`matplotlib.figure.Figure` (no pyplot, Agg-safe).
"""

from __future__ import annotations

import importlib
from typing import Any

from sparsejax.viz.workdir import Run, as_matrix, density, read_workdir, read_workdirs

_PLOTS = {
    "new_figure": "curves",
    "plot_curves": "curves",
    "plot_sparsity": "curves",
    "plot_layer_density": "curves",
    "plot_sad": "curves",
    "plot_itop": "curves",
    "plot_drop_grow": "curves",
    "plot_series": "curves",
    "per_layer_sparsity": "curves",
    "sad_from_snapshots": "curves",
    "itop_from_snapshots": "curves",
    "plot_mask_heatmap": "mask_plots",
    "plot_mask_changes": "mask_plots",
    "plot_run_changes": "mask_plots",
    "plot_nm_occupancy": "mask_plots",
    "plot_input_connectivity": "mask_plots",
    "group_occupancy": "mask_plots",
    "plot_accuracy_vs_sparsity": "sweep",
    "run_record": "sweep",
}

__all__ = ["Run", "as_matrix", "density", "read_workdir", "read_workdirs", *_PLOTS]


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        module = importlib.import_module(f"sparsejax.viz.{_PLOTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'sparsejax.viz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
