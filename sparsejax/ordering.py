"""Never-true values that order XLA's in-place writes of a donated training state.

A state leaf (masks, PGF's decay) that a step reads and then rewrites is written into its donated
buffer in place only when XLA can see that every read comes first. Data dependencies are all it sees,
so the new value carries a traced False computed from what the reads produced (``x | never``): no
numbers change, copies disappear. ``sparsify`` uses these; measurements are in docs/design.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsejax import masks as mk

PyTree = Any
Array = jax.Array


def false_after(tree: PyTree) -> Array:
    """A traced False read from one element of each array of ``tree`` (``DENSE`` markers skipped):
    a value built with it is ordered after all of them. No NaN or inf makes it true."""
    first = lambda x: jnp.abs(x[(0,) * x.ndim].astype(jnp.float32))  # noqa: E731
    firsts = [first(x) for x in mk.sparse_leaves(tree) if x.size]
    return sum(firsts, jnp.float32(0)) > jnp.inf


def false_after_stats(stats: dict[str, Array]) -> Array:
    """A traced False computed from the mask ``stats``: a value built with it is ordered after them.

    Measured: 3 -> 1 mask copies per non-update step (1-3% of the MLP step).
    """
    return stats["sad"] < 0


def masks_after(masks: PyTree, never: Array) -> PyTree:
    """``masks`` ordered after whatever produced ``never`` (e.g. reads of the old masks)."""
    return mk.map_sparse(lambda m: m | never, masks)


def false_after_grads(grads: PyTree, masks: PyTree) -> Array:
    """A traced False read from one element of each sparsified leaf's gradient.

    The forward pass reads the masks (``forward_params``) that the mask-update ``lax.cond`` rewrites
    in the donated buffers. With this in the cond's predicate the cond runs after the gradients, hence
    after those reads, and XLA writes the masks in place; without it XLA copied every mask on entry
    to the step. The optimizer updates then wait for every gradient too (as RigL's already did), so
    no weight is updated in place while the backward pass may still read it and XLA copies no weights
    either (the plain dense step does). Measured, MLP SET non-update step / dense: 1.11 -> 1.08
    (params kept masked: 1.03 -> 1.00). Waiting for one leaf's gradient instead removed the mask
    copies only and measured 1.09 (1.06). The price: the optimizer no longer overlaps the backward
    pass, which cost the CNN's masked SET step 4% of wall-clock time, no CPU time, on 2 cores.
    PGF's decay scalar, read by the forward pass and rewritten at the end of the step, is ordered by it
    too (an unordered write made XLA copy it, 5% of the MLP's PGF step).
    Indexing, not flattening, moves only scalars off sharded gradients.
    """
    return false_after(mk.map_sparse(lambda m, g: g, masks, grads))
