"""Static sparse training ("random pruning").

Liu et al. (2022), "The Unreasonable Effectiveness of Random Pruning: Return of the Most Naive Baseline
for Sparse Training": masks drawn once at initialisation with a layer-wise distribution (ERK by default)
and never changed; a randomly pruned wide network can match its dense equivalent.
"""

from __future__ import annotations

from typing import Any

from sparsejax.core import SparseAlgorithm
from sparsejax.layout import Layout


def static(sparsity: float = 0.9, *, seed: int = 0, **layout: Any) -> SparseAlgorithm:
    """Fixed masks at ``sparsity``; ``layout`` takes the :class:`~sparsejax.layout.Layout` fields
    (``distribution="erk"``, ``overrides``, ``dense_first``, ``dense_last``, ``init``, ``block_size``)."""
    lay = Layout(sparsity=sparsity, **layout)
    return SparseAlgorithm(name="static", init_masks=lay.init_masks, seed=seed)
