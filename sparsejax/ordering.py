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


def false_after_stats(stats: dict[str, Array]) -> Array:
    """A traced False computed from the mask ``stats``: a value built with it is ordered after them.

    Measured: 3 -> 1 mask copies per non-update step (1-3% of the MLP step). On the STE family's
    per-step mask refresh it measured no faster.
    """
    return stats["sad"] < 0


def masks_after(masks: PyTree, stats: dict[str, Array]) -> PyTree:
    """``masks`` ordered after ``stats`` (which read the old masks), see :func:`false_after_stats`."""
    never = false_after_stats(stats)
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
    No NaN or inf makes it true; indexing, not flattening, moves only scalars off sharded gradients.
    """
    first = lambda m, g: jnp.abs(g[(0,) * g.ndim]) if g.size else jnp.float32(0)  # noqa: E731
    return sum(mk.sparse_leaves(mk.map_sparse(first, masks, grads)), jnp.float32(0)) > jnp.inf
