"""The dense baseline: no leaf is sparsified, so the wrapped optimizer runs unchanged."""

from __future__ import annotations

from sparsejax import masks as mk
from sparsejax.core import SparseAlgorithm


def dense(seed: int = 0) -> SparseAlgorithm:
    """A no-op algorithm with the same interface, so dense runs share the sparse code path."""
    return SparseAlgorithm(
        name="dense",
        init_masks=lambda params, key: mk.create_masks(params, {}, key),
        seed=seed,
    )
