"""The two moves every mask-updating algorithm is made of: prune by magnitude, and drop-then-grow.

Algorithms differ only in their scores (``|w|`` to drop; ``|g|`` or uniform noise to grow) and in how many
units move; these functions do the rest, per leaf, at element or block granularity, with exact counts
(see ``topk``). Scores are squared magnitudes (the same order as ``|x|``, and the squared L2 norm of a
tile for block masks).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsejax import masks as mk
from sparsejax.core import MaskUpdate
from sparsejax.masks import Block
from sparsejax.topk import topk_mask, topk_masks

PyTree = Any
Array = jax.Array


def _units(mask: Array, w: Array, block: Block) -> tuple[Array, Array]:
    return mk.to_blocks(mask, block, "any"), mk.to_blocks(jnp.square(w.astype(jnp.float32)), block)


def _noise(key: Array, i: int, shape: tuple[int, ...]) -> Array:
    return jax.random.uniform(jax.random.fold_in(key, i), shape)


def drop_and_grow(
    masks: PyTree,
    params: PyTree,
    grads: PyTree,
    key: Array,
    fraction: Array,
    grow: str = "gradient",
    block: Block = None,
) -> MaskUpdate:
    """In each leaf drop ``floor(fraction * active)`` smallest-``|w|`` actives and grow as many.

    Growth picks, among units inactive after the drop (so a just-dropped unit may return), the largest
    ``|g|`` (``grow="gradient"``, RigL) or uniformly at random (``grow="random"``, SET). Ties are broken by
    random noise. Each leaf keeps exactly its number of actives.
    """
    flat_m, treedef = jax.tree.flatten(masks, is_leaf=mk.is_dense)
    flat_w, flat_g = jax.tree.leaves(params), jax.tree.leaves(grads)
    new_masks, grown = [], []
    for i, (m, w, g) in enumerate(zip(flat_m, flat_w, flat_g)):
        if mk.is_dense(m):
            new_masks.append(m)
            grown.append(m)
            continue
        m_u, w_u = _units(m, w, block)
        active = jnp.sum(m_u, dtype=jnp.int32)
        k = jnp.floor(fraction * active).astype(jnp.int32)
        keep = topk_mask(w_u, active - k, eligible=m_u, tiebreak=_noise(key, 2 * i, m_u.shape))
        if grow == "gradient":
            grow_scores = mk.to_blocks(jnp.square(g.astype(jnp.float32)), block)
            tiebreak = _noise(key, 2 * i + 1, m_u.shape)
        else:
            grow_scores, tiebreak = _noise(key, 2 * i + 1, m_u.shape), None
        new_u = topk_mask(grow_scores, k, eligible=~keep, tiebreak=tiebreak)
        new_masks.append(mk.from_blocks(keep | new_u, block))
        grown.append(mk.from_blocks(new_u, block))
    return MaskUpdate(treedef.unflatten(new_masks), treedef.unflatten(grown))


def prune_to(
    masks: PyTree,
    params: PyTree,
    keep_counts: dict[int, Array],
    key: Array,
    block: Block = None,
) -> PyTree:
    """Per leaf, keep the ``keep_counts[i]`` largest-``|w|`` units among the current actives.

    ``keep_counts`` maps a leaf's flat index to a (possibly traced) count; pruned units never return.
    """
    flat_m, treedef = jax.tree.flatten(masks, is_leaf=mk.is_dense)
    out = []
    for i, (m, w) in enumerate(zip(flat_m, jax.tree.leaves(params))):
        if mk.is_dense(m):
            out.append(m)
            continue
        m_u, w_u = _units(m, w, block)
        keep = topk_mask(w_u, keep_counts[i], eligible=m_u, tiebreak=_noise(key, i, m_u.shape))
        out.append(mk.from_blocks(keep, block))
    return treedef.unflatten(out)


def prune_global(masks: PyTree, params: PyTree, keep: Array, key: Array) -> PyTree:
    """Keep the ``keep`` largest ``|w|`` among the actives of all sparsified leaves jointly.

    One threshold across leaves, found by bisection over per-leaf counts: no concatenation of all
    weights, no global sort, at most one score buffer per leaf alive at a time.
    """
    flat_m, treedef = jax.tree.flatten(masks, is_leaf=mk.is_dense)
    flat_w = jax.tree.leaves(params)
    idx = [i for i, m in enumerate(flat_m) if not mk.is_dense(m)]
    scores = [jnp.square(flat_w[i].astype(jnp.float32)) for i in idx]
    noise = [_noise(key, i, flat_w[i].shape) for i in idx]
    chosen = topk_masks(scores, keep, eligible=[flat_m[i] for i in idx], tiebreak=noise)
    out = list(flat_m)
    for i, c in zip(idx, chosen):
        out[i] = c
    return treedef.unflatten(out)


def no_growth(masks: PyTree) -> PyTree:
    """A ``grown`` tree with nothing grown (for prune-only updates)."""
    return mk.map_sparse(jnp.zeros_like, masks)
