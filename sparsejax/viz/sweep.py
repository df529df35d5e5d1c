"""Across runs: final accuracy against sparsity, one line per algorithm."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sparsejax.viz.curves import new_figure
from sparsejax.viz.workdir import Run


def run_record(run: Run, metric: str = "accuracy") -> dict[str, Any]:
    """``{algorithm, sparsity, <metric>}`` of a finished run (final eval value, measured sparsity)."""
    s = run.config.get("sparsity", {})
    name = run.algorithm if run.algorithm in ("dense", "ste", "sr_ste", "pgf") else (
        f"{run.algorithm} ({s.get('distribution', '')})"
    )  # fmt: skip
    sparsity = run.final("sparsity", "train")
    return {"algorithm": name, "sparsity": sparsity or 0.0, metric: run.final(metric, "eval")}


def plot_accuracy_vs_sparsity(
    records: Sequence[Run | Mapping[str, Any]],
    metric: str = "accuracy",
    ax: Axes | None = None,
    title: str = "",
) -> Figure:
    """``metric`` against sparsity, one line per ``algorithm`` (error bars from an optional ``std``).

    ``records`` are runs (final eval ``metric`` and sparsity) or dicts with ``algorithm``, ``sparsity``,
    ``metric`` and optionally ``std``. A ``dense`` algorithm is drawn as a horizontal reference line.
    """
    rows = [run_record(r, metric) if isinstance(r, Run) else dict(r) for r in records]
    fig = ax.figure if ax is not None else new_figure()
    ax = ax if ax is not None else fig.axes[0]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get(metric) is not None:
            groups[r["algorithm"]].append(r)
    for i, (algo, pts) in enumerate(groups.items()):
        pts.sort(key=lambda r: r["sparsity"])
        x = np.asarray([r["sparsity"] for r in pts])
        y = np.asarray([r[metric] for r in pts])
        err = np.asarray([r.get("std", 0.0) or 0.0 for r in pts])
        if algo == "dense":
            ax.axhline(float(y.mean()), color="k", linestyle=":", label="dense")
            continue
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{i}", label=algo)
    ax.set(xlabel="sparsity", ylabel=metric, title=title or f"{metric} vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return fig
