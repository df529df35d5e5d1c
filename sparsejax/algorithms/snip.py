"""SNIP: single-shot network pruning by connection sensitivity.

Lee et al. (2019), "SNIP: Single-shot Network Pruning based on Connection Sensitivity". Before training,
score every connection by ``|g * w|`` on one batch (how much the loss changes when it is removed), keep
the ``(1 - s)`` fraction with the largest scores across all sparsified layers at once (one threshold),
then train the sparse network with the masks fixed.

Here the masks start all active, so the first step's gradient is the dense one at the initial
weights; that step's mask update prunes to the global top-k of ``|g * w|`` (exact count, no sort)
and zeroes the rest before any weight moves. The masks never change again.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as mk
from sparsejax import schedules
from sparsejax.algorithms.drop_grow import no_growth, prune_global
from sparsejax.core import MaskUpdate, SparseAlgorithm
from sparsejax.layout import Layout


def sensitivity(params: Any, grads: Any) -> Any:
    """SNIP's connection sensitivity ``|g * w|`` (ranked by magnitude, so ``g * w`` itself)."""
    return jax.tree.map(lambda g, w: g * w, grads, params)


def snip(sparsity: float = 0.9, *, seed: int = 0, **layout: Any) -> SparseAlgorithm:
    """SNIP at global ``sparsity`` over the sparsified leaves (``overrides``, ``dense_first`` and
    ``dense_last`` choose them; the threshold is global, so ``distribution`` plays no part)."""
    lay = Layout(sparsity=sparsity, **layout)
    if lay.block_size is not None:
        raise ValueError("block_size: snip supports element masks only (None)")

    def update(masks, params, grads, step, key):
        total = sum(int(np.size(m)) for m in mk.sparse_leaves(masks))
        keep = jnp.int32(round((1.0 - sparsity) * total))
        pruned = prune_global(masks, sensitivity(params, grads), keep, key)
        return MaskUpdate(pruned, no_growth(masks))

    return SparseAlgorithm(
        name="snip",
        init_masks=lambda params, key: lay.all_active(params),
        update_masks=update,
        is_update_step=schedules.one_shot(0),
        seed=seed,
    )
