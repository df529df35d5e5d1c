"""Mask pictures: heat maps of one leaf over time, where connections were grown and dropped, N:M group
occupancy, and the input-pixel fan-out of a first layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sparsejax.viz.curves import new_figure
from sparsejax.viz.workdir import Run, as_matrix


def _default_leaf(masks: Mapping[str, np.ndarray]) -> str:
    return max(masks, key=lambda k: masks[k].size)


def plot_mask_heatmap(
    run: Run, leaf: str | None = None, steps: Sequence[int] | None = None, max_rows: int = 1024
) -> Figure:
    """One leaf's mask (as ``fan_in x fan_out``, black = active) at ``steps`` (default first/middle/last).

    ``leaf`` defaults to the largest sparsified leaf. Rows beyond ``max_rows`` are cut for legibility.
    """
    available = run.mask_steps
    if steps is None:
        steps = sorted({available[0], available[len(available) // 2], available[-1]})
    leaf = leaf or _default_leaf(run.masks(steps[0]))
    fig = new_figure(1, len(steps), size=(4.0, 4.5))
    for ax, step in zip(fig.axes, steps):
        m = as_matrix(run.masks(step)[leaf])[:max_rows]
        ax.imshow(m, cmap="Greys", interpolation="nearest", aspect="auto", vmin=0, vmax=1)
        ax.set(title=f"step {step}: {m.mean():.1%} active", xlabel="fan-out", ylabel="fan-in")
    fig.suptitle(f"{leaf} ({run.label})")
    return fig


_CHANGES = ListedColormap(["white", "0.75", "tab:red", "tab:green"])


def plot_mask_changes(
    before: np.ndarray, after: np.ndarray, title: str = "", max_rows: int = 1024
) -> Figure:
    """Where connections were dropped (red) and grown (green) between two masks of one leaf; grey kept."""
    a, b = as_matrix(before).astype(bool), as_matrix(after).astype(bool)
    code = np.zeros(a.shape, np.int8)
    code[a & b], code[a & ~b], code[~a & b] = 1, 2, 3
    fig = new_figure(size=(7.0, 5.0))
    ax = fig.axes[0]
    ax.imshow(
        code[:max_rows], cmap=_CHANGES, vmin=0, vmax=3, interpolation="nearest", aspect="auto"
    )
    counts = {
        "kept": int((code == 1).sum()),
        "dropped": int((code == 2).sum()),
        "grown": int((code == 3).sum()),
    }
    colors = {"kept": "0.75", "dropped": "tab:red", "grown": "tab:green"}
    ax.legend(handles=[Patch(color=colors[k], label=f"{k}: {v}") for k, v in counts.items()],
              fontsize="small", loc="upper right")  # fmt: skip
    ax.set(xlabel="fan-out", ylabel="fan-in", title=title or "mask changes")
    return fig


def plot_run_changes(
    run: Run, leaf: str | None = None, start: int | None = None, end: int | None = None
) -> Figure:
    """:func:`plot_mask_changes` between two snapshots of a run (default: the first and the last)."""
    steps = run.mask_steps
    start = steps[0] if start is None else start
    end = steps[-1] if end is None else end
    before, after = run.masks(start), run.masks(end)
    leaf = leaf or _default_leaf(before)
    return plot_mask_changes(
        before[leaf], after[leaf], f"{leaf}: step {start} -> {end} ({run.label})"
    )


def group_occupancy(mask: np.ndarray, m: int, axis: int = -2) -> np.ndarray:
    """Active count in every group of ``m`` consecutive positions along ``axis`` (the contraction axis)."""
    mask = np.moveaxis(np.asarray(mask, bool), axis, -1)
    if mask.shape[-1] % m:
        raise ValueError(f"axis of size {mask.shape[-1]} is not a multiple of M={m}")
    return mask.reshape(*mask.shape[:-1], -1, m).sum(-1).ravel()


def plot_nm_occupancy(masks: Mapping[str, np.ndarray], m: int, axis: int = -2) -> Figure:
    """Histogram of actives per group of ``m`` (``0..m``), one panel per leaf whose axis ``m`` divides.

    An N:M mask is a single bar at N; an unstructured mask of the same density spreads around it.
    """
    leaves = {k: v for k, v in masks.items() if np.ndim(v) >= 2 and np.shape(v)[axis] % m == 0}
    if not leaves:
        raise ValueError(f"no leaf has a grouped axis divisible by M={m}")
    fig = new_figure(1, len(leaves), size=(3.5, 3.2))
    for ax, (leaf, mask) in zip(fig.axes, leaves.items()):
        counts = np.bincount(group_occupancy(mask, m, axis), minlength=m + 1)
        ax.bar(np.arange(m + 1), counts / counts.sum(), color="C0")
        ax.set(title=leaf, xlabel=f"active per group of {m}", ylabel="fraction of groups")
        ax.set_xticks(np.arange(m + 1))
    fig.suptitle(f"N:M group occupancy (M = {m})")
    return fig


def plot_input_connectivity(
    mask: np.ndarray, image_shape: tuple[int, int] = (28, 28), title: str = ""
) -> Figure:
    """Fan-out of every input pixel of a first Dense layer ``(pixels, units)``, shown as an image."""
    fan_out = np.asarray(mask, bool).reshape(*image_shape, -1).sum(-1)
    fig = new_figure(size=(4.5, 4.0))
    ax = fig.axes[0]
    im = ax.imshow(fan_out, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="active connections")
    ax.set(title=title or "connections per input pixel", xticks=[], yticks=[])
    return fig
