"""The two moves every mask-updating algorithm is made of: prune by a score, and drop-then-grow.

Algorithms differ only in their score pytrees (``|w|`` to drop; ``|g|``, or nothing for random, to
grow; SNIP's ``|g * w|`` to prune) and in how many units move; these functions do the rest, at element
or block granularity, with exact counts (see ``topk``). All leaves are searched in one bisection loop
(one group per leaf). Element scores are ranked by ``|x|`` inside the search (raw weights or gradients
need no score copy); block scores are the squared L2 norms of the tiles.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsejax import masks as mk
from sparsejax.core import MaskUpdate
from sparsejax.masks import Block
from sparsejax.topk import count_true, topk_masks

PyTree = Any
Array = jax.Array


def _sparse(masks: PyTree, *trees: PyTree) -> tuple[list[int], list, Any, list[list[Array]]]:
    """Flat indices of sparsified leaves, flat masks, the treedef, and the matching leaves of ``trees``."""
    flat_m, treedef = jax.tree.flatten(masks, is_leaf=mk.is_dense)
    idx = [i for i, m in enumerate(flat_m) if not mk.is_dense(m)]
    leaves = [jax.tree.leaves(t) for t in trees]
    return idx, flat_m, treedef, [[lv[i] for i in idx] for lv in leaves]


def _rebuild(flat_m: list, treedef: Any, idx: list[int], new: list[Array], block: Block) -> PyTree:
    out = list(flat_m)
    for i, n in zip(idx, new):
        out[i] = mk.from_blocks(n, block)
    return treedef.unflatten(out)


def drop_and_grow(
    masks: PyTree,
    drop_scores: PyTree,
    grow_scores: PyTree | None,
    key: Array,
    fraction: Array,
    block: Block = None,
) -> MaskUpdate:
    """In each leaf drop the ``floor(fraction * active)`` actives of smallest ``|drop_scores|`` and grow
    as many of largest ``|grow_scores|``.

    Growth picks among units inactive after the drop (so a just-dropped unit may return); with
    ``grow_scores=None`` uniformly at random (SET), with the dense gradient RigL. Scores are ranked by
    magnitude inside the search (no copy); per ``block`` tile by squared L2 norm. Ties are broken
    uniformly at random. Each leaf keeps exactly its number of actives.
    """
    idx, flat_m, treedef, (ds,) = _sparse(masks, drop_scores)
    if not idx:
        return MaskUpdate(masks, masks)
    gs = [None] * len(idx) if grow_scores is None else _sparse(masks, grow_scores)[3][0]
    m_u = [mk.to_blocks(flat_m[i], block, "any") for i in idx]
    active = jnp.stack([count_true(m, rows=True) for m in m_u])
    units = jnp.asarray([m.size for m in m_u], jnp.int32)
    # A fully dense leaf (ERK overflow) has nowhere to grow: dropping would only zero weights.
    k = jnp.where(active < units, jnp.floor(fraction * active), 0).astype(jnp.int32)
    groups = list(range(len(idx)))
    drop_key, grow_key = jax.random.split(key)
    keep = topk_masks(
        [mk.magnitude_scores(d, block) for d in ds], active - k, m_u, drop_key, groups, True
    )
    grow = [None if g is None else mk.magnitude_scores(g, block) for g in gs]
    new = topk_masks(grow, k, None, grow_key, groups, True, ineligible=keep)
    return MaskUpdate(
        _rebuild(flat_m, treedef, idx, [kp | n for kp, n in zip(keep, new)], block),
        _rebuild(flat_m, treedef, idx, new, block),
    )


def prune_to(
    masks: PyTree, scores: PyTree, keep_counts: dict[int, Array], key: Array, block: Block = None
) -> PyTree:
    """Per leaf, keep the ``keep_counts[i]`` units of largest ``|scores|`` among the current actives.

    ``keep_counts`` maps a leaf's flat index to a (possibly traced) count; pruned units never return.
    """
    idx, flat_m, treedef, (ws,) = _sparse(masks, scores)
    if not idx:
        return masks
    m_u = [mk.to_blocks(flat_m[i], block, "any") for i in idx]
    counts = jnp.stack([jnp.asarray(keep_counts[i], jnp.int32) for i in idx])
    keep = topk_masks(
        [mk.magnitude_scores(w, block) for w in ws], counts, m_u, key, list(range(len(idx))), True
    )
    return _rebuild(flat_m, treedef, idx, keep, block)


def prune_global(masks: PyTree, scores: PyTree, keep: Array, key: Array) -> PyTree:
    """Keep the ``keep`` largest ``|scores|`` among the actives of all sparsified leaves jointly.

    One threshold across leaves, found by bisection over per-leaf counts: no concatenation of all
    weights and no global sort.
    """
    idx, flat_m, treedef, (ws,) = _sparse(masks, scores)
    if not idx:
        return masks
    chosen = topk_masks(ws, keep, [flat_m[i] for i in idx], key, magnitude=True)
    return _rebuild(flat_m, treedef, idx, chosen, None)


def no_growth(masks: PyTree) -> PyTree:
    """A ``grown`` tree with nothing grown (for prune-only updates)."""
    return mk.map_sparse(jnp.zeros_like, masks)
