"""Training-dynamics plots from work directories: curves, sparsity, SAD, ITOP, drop/grow counts.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state, safe
under the Agg backend); ``fig.savefig(path)`` writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from sparsejax.metrics import sad
from sparsejax.viz.workdir import Run


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)) -> Figure:
    """A figure with an ``nrows x ncols`` grid of axes (each ``size`` inches), constrained layout."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    fig.subplots(nrows, ncols, squeeze=False)
    return fig


def _as_runs(runs: Run | Sequence[Run]) -> list[Run]:
    return [runs] if isinstance(runs, Run) else list(runs)


def plot_curves(runs: Run | Sequence[Run], metric: str = "loss") -> Figure:
    """``metric`` (``loss`` or ``accuracy``) over steps: a solid train and a dashed eval line per run."""
    fig = new_figure()
    ax = fig.axes[0]
    for i, run in enumerate(_as_runs(runs)):
        color = f"C{i}"
        for split, style in (("train", "-"), ("eval", "--")):
            steps, values = run.series(metric, split)
            if len(steps):
                ax.plot(steps, values, style, color=color, marker="." if split == "eval" else None,
                        label=f"{run.label} ({split})")  # fmt: skip
    ax.set(xlabel="step", ylabel=metric, title=f"{metric} over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def per_layer_sparsity(run: Run) -> tuple[list[int], dict[str, np.ndarray]]:
    """Per-leaf sparsity at every mask snapshot: ``(steps, {leaf: sparsities})``."""
    steps, history = run.mask_history()
    leaves = list(history[0]) if history else []
    return steps, {
        leaf: np.asarray([1.0 - np.count_nonzero(h[leaf]) / h[leaf].size for h in history])
        for leaf in leaves
    }


def plot_sparsity(run: Run, per_layer: bool = True) -> Figure:
    """Total sparsity (from ``metrics.jsonl``) and, from the mask snapshots, one line per sparsified leaf."""
    fig = new_figure(size=(7.0, 4.0))
    ax = fig.axes[0]
    steps, total = run.series("sparsity")
    ax.plot(steps, total, color="k", linewidth=2.5, label="total (all kernels)")
    if per_layer:
        snap_steps, leaves = per_layer_sparsity(run)
        for leaf, values in leaves.items():
            ax.plot(snap_steps, values, marker=".", linewidth=1, label=leaf)
    ax.set(xlabel="step", ylabel="sparsity (fraction of zeros)", title=f"sparsity: {run.label}")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower right")
    return fig


def plot_layer_density(
    masks: Mapping[str, Mapping[str, np.ndarray | float]] | Sequence[Run], step: int | None = None
) -> Figure:
    """Grouped bars of per-leaf density, one colour per entry (e.g. ERK vs uniform).

    ``masks`` maps a label to ``{leaf: bool mask or density}``, or is a list of runs (their snapshot at
    ``step``, default the last).
    """
    if not isinstance(masks, Mapping):
        masks = {run.label: run.masks(step) for run in masks}
    dens = {
        label: {k: float(np.mean(v)) if np.ndim(v) else float(v) for k, v in leaves.items()}
        for label, leaves in masks.items()
    }
    leaves = list(dict.fromkeys(k for d in dens.values() for k in d))
    fig = new_figure(size=(max(6.0, 0.9 * len(leaves) * max(len(dens), 1)), 4.0))
    ax = fig.axes[0]
    width = 0.8 / max(len(dens), 1)
    x = np.arange(len(leaves))
    for i, (label, d) in enumerate(dens.items()):
        ax.bar(x + (i - (len(dens) - 1) / 2) * width, [d.get(k, np.nan) for k in leaves], width,
               label=label)  # fmt: skip
    ax.set_xticks(x, leaves, rotation=30, ha="right", fontsize="small")
    ax.set(ylabel="density (fraction active)", title="per-layer density")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    return fig


def sad_from_snapshots(run: Run) -> tuple[list[int], np.ndarray, np.ndarray]:
    """``(steps, SAD to the previous snapshot, SAD to the first snapshot)`` as fractions of the weights."""
    steps, history = run.mask_history()
    if not history:
        return [], np.zeros(0), np.zeros(0)
    consecutive = [0.0] + [float(sad(a, b, True)) for a, b in zip(history[:-1], history[1:])]
    from_init = [float(sad(history[0], h, True)) for h in history]
    return steps, np.asarray(consecutive), np.asarray(from_init)


def plot_sad(run: Run) -> Figure:
    """Sparse Architecture Divergence between consecutive mask snapshots and from the initial mask."""
    fig = new_figure()
    ax = fig.axes[0]
    steps, consecutive, from_init = sad_from_snapshots(run)
    ax.plot(steps, consecutive, marker="o", label="SAD to previous snapshot")
    ax.plot(steps, from_init, marker="s", label="SAD to initial mask")
    ax.set(xlabel="step", ylabel="SAD (fraction of sparsified weights)", title=f"SAD: {run.label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def itop_from_snapshots(run: Run) -> tuple[list[int], np.ndarray]:
    """ITOP rate at each snapshot: fraction of weights active in at least one snapshot so far.

    A lower bound on the logged ITOP rate, which also counts masks between snapshots.
    """
    steps, history = run.mask_history()
    ever, rates = None, []
    for h in history:
        ever = (
            {k: v.copy() for k, v in h.items()} if ever is None else {k: ever[k] | h[k] for k in h}
        )
        rates.append(
            sum(int(v.sum()) for v in ever.values()) / max(sum(v.size for v in ever.values()), 1)
        )
    return steps, np.asarray(rates)


def plot_itop(runs: Run | Sequence[Run]) -> Figure:
    """ITOP rate over time, one line per run (logged ``itop``, else from the mask snapshots)."""
    fig = new_figure()
    ax = fig.axes[0]
    for run in _as_runs(runs):
        steps, values = run.series("itop")
        if not len(steps):
            steps, values = itop_from_snapshots(run)
        ax.plot(steps, values, marker=".", label=run.label)
    ax.set(
        xlabel="step", ylabel="ITOP rate (ever active / all)", title="in-time over-parameterisation"
    )
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_drop_grow(run: Run) -> Figure:
    """Weights dropped and grown at each mask update (``dropped``/``grown`` rows of ``metrics.jsonl``)."""
    fig = new_figure()
    ax = fig.axes[0]
    for key, marker in (("dropped", "v"), ("grown", "^")):
        steps, values = run.series(key)
        ax.plot(steps, values, marker=marker, label=key)
    ax.set(xlabel="step", ylabel="weights per update", title=f"drop / grow: {run.label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_series(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Figure:
    """A line per ``label -> (steps, values)``: for in-process curves (per-step SAD, PGF decay)."""
    fig = new_figure()
    ax = fig.axes[0]
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("symlog", linthresh=1e-4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
