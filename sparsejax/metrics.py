"""What every run can report: sparsity, SAD, ITOP, drop/grow counts, average parameter count.

Host-side summaries (``summarize``) return plain Python numbers; ``sad`` and ``itop`` work on device
arrays too and are cheap enough to call on every mask update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as mk
from sparsejax.flops import forward_flops, train_flops_per_step  # noqa: F401  (re-exported)
from sparsejax.selection import path_str
from sparsejax.state import sparse_state

PyTree = Any


def summarize(tree: PyTree) -> dict[str, Any]:
    """Per-leaf and total sparsity, nonzeros and size of a params or masks pytree.

    For params, nonzeros are the nonzero values of every leaf. For masks, only sparsified leaves are
    counted (dense markers are skipped) and nonzeros are the active positions.

    Returns:
      ``{"total": {"sparsity", "nonzeros", "size"}, "leaves": {path: {"sparsity", "nonzeros", "size"}}}``
    """
    leaves = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=mk.is_dense)[0]:
        if mk.is_dense(x):
            continue
        arr = np.asarray(x)
        nnz, size = int(np.count_nonzero(arr)), int(arr.size)
        leaves[path_str(path)] = {
            "sparsity": 1.0 - nnz / size if size else 0.0,
            "nonzeros": nnz,
            "size": size,
        }
    nnz = sum(v["nonzeros"] for v in leaves.values())
    size = sum(v["size"] for v in leaves.values())
    total = {"sparsity": 1.0 - nnz / size if size else 0.0, "nonzeros": nnz, "size": size}
    return {"total": total, "leaves": leaves}


def sad(m1: PyTree, m2: PyTree, fraction: bool = False) -> jax.Array:
    """Sparse Architecture Divergence (Zhou et al., 2021): positions where two masks differ.

    With ``fraction=True``, divided by the number of sparsified weights.
    """
    diff = mk.hamming(m1, m2)
    if not fraction:
        return diff
    size = sum(int(np.size(m)) for m in mk.sparse_leaves(m1))
    return diff / max(size, 1)


def itop(state_or_ever_active: Any) -> jax.Array:
    """In-Time Over-Parameterisation rate (Liu et al., 2021): the fraction of sparsified weights that
    have been active at least once so far. Takes an optimizer state or an ``ever_active`` mask tree."""
    try:
        tracked = sparse_state(state_or_ever_active).metrics
    except ValueError:
        ever = state_or_ever_active
    else:
        if not tracked:
            raise ValueError("itop needs tracked metrics: use sparsify(..., track_metrics=True)")
        ever = tracked.ever_active
    leaves = mk.sparse_leaves(ever)
    size = sum(int(np.size(m)) for m in leaves)
    return mk.count_active(ever) / max(size, 1)


def update_counts(state: Any) -> dict[str, int]:
    """Dropped, grown and SAD counts of the latest mask update, as Python ints."""
    return {k: int(v) for k, v in sparse_state(state).stats.items()}


def grown_survival(grown: PyTree, next_masks: PyTree) -> jax.Array:
    """Fraction of the weights grown at one update that are still active at the next one."""
    kept = mk.count_active(mk.intersection(grown, next_masks))
    return kept / jnp.maximum(mk.count_active(grown), 1)


def average_param_count(nonzeros: Sequence[float], steps: Sequence[int] | None = None) -> float:
    """Average nonzero parameter count over training ("The Journey Matters": the scaling-law variable
    for sparse pre-training). With ``steps``, a step-weighted (trapezoid) average of logged counts."""
    counts = np.asarray(nonzeros, dtype=np.float64)
    if steps is None or len(counts) < 2:
        return float(counts.mean()) if len(counts) else 0.0
    t = np.asarray(steps, dtype=np.float64)
    return float(np.trapezoid(counts, t) / (t[-1] - t[0])) if t[-1] > t[0] else float(counts[-1])
