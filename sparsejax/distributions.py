"""Layer-wise sparsity distributions: uniform, ER, ERK and custom.

Given a global target ``S`` over the sparsified leaves, decide each leaf's sparsity.

- uniform: every free leaf gets ``S``.
- ER (Mocanu et al., 2018, "Scalable training of artificial neural networks with adaptive sparse
  connectivity"): density proportional to ``(n_in + n_out) / (n_in * n_out)`` of the last two axes.
- ERK (Evci et al., 2020, "Rigging the Lottery"): density proportional to ``sum(shape) / prod(shape)``.
- custom: regex overrides set the leaves they match; the others get ``S``.

For ER/ERK one scale is solved so that total nonzeros (override-fixed leaves included) equal
``(1 - S) * N``. A leaf whose density would exceed 1 is made dense and the scale re-solved until none
does, so the realised total matches the target to within one weight per leaf instead of silently coming
out sparser than asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from sparsejax.selection import path_str, sparsifiable

PyTree = Any
DISTRIBUTIONS = ("uniform", "er", "erk", "custom")


def _raw_density(shape: tuple[int, ...], kind: str) -> float:
    if kind == "erk":
        return float(np.sum(shape) / np.prod(shape))
    n_in, n_out = shape[-2], shape[-1]
    return (n_in + n_out) / (n_in * n_out)


def _solve_scaled(
    sizes: dict[str, int], raw: dict[str, float], budget: float, sparsity: float
) -> dict[str, float]:
    """Densities ``eps * raw`` filling ``budget`` nonzeros, with leaves above density 1 made dense."""
    dense: set[str] = set()
    while True:
        scaled = [n for n in sizes if n not in dense]
        rest = budget - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in scaled)
        if rest < 0 or (scaled and divisor <= 0):
            raise ValueError(
                f"sparsity={sparsity:g}: overrides/dense leaves already exceed the "
                "nonzero budget; allowed: a higher sparsity or sparser overrides"
            )
        if not scaled:
            return {n: 1.0 for n in dense}
        eps = rest / divisor
        over = [n for n in scaled if eps * raw[n] > 1.0]
        if not over:
            out = {n: 1.0 for n in dense}
            out.update({n: eps * raw[n] for n in scaled})
            return out
        dense.update(over)


def leaf_sparsities(
    params: PyTree,
    sparsity: float,
    distribution: str = "erk",
    overrides: Mapping[str, float] | None = None,
    dense_first: bool = False,
    dense_last: bool = False,
) -> dict[str, float]:
    """Per-leaf sparsity for every sparsified leaf, keyed by leaf path; absent leaves stay dense.

    A leaf may get 0.0 (ERK made it dense): it keeps an all-active mask and counts in the totals.

    Args:
      params: the params pytree (arrays or ``jax.ShapeDtypeStruct``).
      sparsity: global target ``S`` in ``[0, 1)``.
      distribution: one of ``uniform, er, erk, custom``.
      overrides: regex on leaf path -> sparsity (0 keeps the leaf dense).
      dense_first, dense_last: keep the first / last sparsifiable layer (call order) dense.
    """
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity={sparsity}: allowed values are in [0, 1)")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution={distribution!r}: allowed values are {', '.join(DISTRIBUTIONS)}"
        )
    free, fixed = sparsifiable(params, overrides, dense_first, dense_last)
    shapes = {
        path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    out = dict(fixed)
    if distribution in ("uniform", "custom") or sparsity == 0.0:
        out.update({n: float(sparsity) for n in free})
    else:
        sizes = {n: int(np.prod(shapes[n])) for n in free}
        total = sum(sizes.values()) + sum(int(np.prod(shapes[n])) for n in fixed)
        budget = (1.0 - sparsity) * total - sum(
            (1.0 - s) * np.prod(shapes[n]) for n, s in fixed.items()
        )
        raw = {n: _raw_density(shapes[n], distribution) for n in free}
        densities = _solve_scaled(sizes, raw, budget, sparsity)
        out.update({n: 1.0 - d for n, d in densities.items()})
    # Leaves ERK made dense stay in the map at 0.0: they are part of the sparsified set (all-active
    # masks), so totals over masks match the target.
    return out


def active_counts(params: PyTree, sparsities: Mapping[str, float]) -> dict[str, int]:
    """Exact number of active weights per sparsified leaf: ``round((1 - s) * size)``."""
    sizes = {
        path_str(p): int(np.prod(x.shape))
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    return {n: int(round((1.0 - s) * sizes[n])) for n, s in sparsities.items()}
