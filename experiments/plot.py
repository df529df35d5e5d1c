r"""Plots of one or several finished runs, written as PNGs.

    python -m experiments.plot --workdir=workdirs/rigl [--workdir=workdirs/static ...] [--out=DIR] \
        [--leaf=dense_0/kernel] [--nm_m=4]

Per run (``<out>/<run name>/``): sparsity (total + per layer), SAD, drop/grow, mask heat map, mask changes
first -> last snapshot, N:M group occupancy. Across runs (``<out>/``): loss and accuracy curves, ITOP,
per-layer density bars, accuracy vs sparsity. ``--out`` defaults to ``<first workdir>/plots``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from experiments import cli


def _save(fig, path: str, written: list[str]) -> None:
    fig.savefig(path, dpi=110)
    written.append(path)


def write_plots(
    workdirs: Sequence[str],
    out: str | None = None,
    leaf: str | None = None,
    nm_m: int | None = None,
) -> list[str]:
    """Writes every applicable plot of ``workdirs`` under ``out``; returns the written paths."""
    from sparsejax import viz

    runs = viz.read_workdirs(workdirs)
    out = out or os.path.join(workdirs[0], "plots")
    os.makedirs(out, exist_ok=True)
    written: list[str] = []
    for run in runs:
        run_out = os.path.join(out, run.name) if len(runs) > 1 else out
        os.makedirs(run_out, exist_ok=True)
        per_run: dict[str, Callable[[], object]] = {}
        if run.mask_steps:
            masks = run.masks()
            m = nm_m or run.config.get("sparsity", {}).get("m") or 4
            per_run.update(
                sparsity=lambda r=run: viz.plot_sparsity(r),
                sad=lambda r=run: viz.plot_sad(r),
                mask_heatmap=lambda r=run: viz.plot_mask_heatmap(r, leaf),
                mask_changes=lambda r=run: viz.plot_run_changes(r, leaf),
            )
            if any(v.ndim >= 2 and v.shape[-2] % m == 0 for v in masks.values()):
                per_run["nm_occupancy"] = lambda ms=masks, m=m: viz.plot_nm_occupancy(ms, m)
        if run.series("dropped")[0].size:
            per_run["drop_grow"] = lambda r=run: viz.plot_drop_grow(r)
        for name, make in per_run.items():
            _save(make(), os.path.join(run_out, f"{name}.png"), written)
    _save(viz.plot_curves(runs, "loss"), os.path.join(out, "loss.png"), written)
    _save(viz.plot_curves(runs, "accuracy"), os.path.join(out, "accuracy.png"), written)
    _save(viz.plot_itop(runs), os.path.join(out, "itop.png"), written)
    with_masks = [r for r in runs if r.mask_steps]
    if with_masks:
        _save(viz.plot_layer_density(with_masks), os.path.join(out, "layer_density.png"), written)
    if len(runs) > 1:
        fig = viz.plot_accuracy_vs_sparsity(runs)
        _save(fig, os.path.join(out, "accuracy_vs_sparsity.png"), written)
    return written


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    f = flags.FLAGS
    if not f.workdir:
        cli.fail("--workdir: required (repeat it for several runs)")
    for w in f.workdir:
        if not os.path.isfile(os.path.join(w, "metrics.jsonl")):
            cli.fail(f"--workdir={w}: no metrics.jsonl there (not a finished or running workdir)")
    import matplotlib

    matplotlib.use("Agg")
    written = write_plots(f.workdir, f.out, f.leaf, f.nm_m)
    print("\n".join(written), file=sys.stdout)


def define_flags() -> None:
    """The CLI flags; defined only when run as a program."""
    flags.DEFINE_multi_string("workdir", None, "Run directory (repeatable).")
    flags.DEFINE_string("out", None, "Output directory (default: <first workdir>/plots).")
    flags.DEFINE_string("leaf", None, "Leaf path for the mask heat maps (default: the largest).")
    flags.DEFINE_integer(
        "nm_m", None, "M of the N:M occupancy plot (default: the run's m, else 4)."
    )


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
