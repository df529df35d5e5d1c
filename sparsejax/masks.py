"""Masks as functional pytrees.

A mask pytree mirrors the params pytree: sparsified leaves are bool arrays of the leaf's shape (True =
active), dense leaves hold ``DENSE`` (``optax.MaskedNode()``), an empty node that ``jax.tree.map`` handles
over several trees, unlike ``None``. Everything here is a plain function: create, apply, count, combine,
compare, pack to bits and back.

Masks can be element-wise or block-granular (``block=(b0, b1)`` on the last two axes): a block mask
selects whole tiles, as block-sparse kernels need; scores are then reduced per block by squared L2 norm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax.selection import path_str
from sparsejax.topk import count_true, topk_mask

PyTree = Any
Array = jax.Array
Block = tuple[int, int] | None
DENSE = optax.MaskedNode()


def is_dense(x: Any) -> bool:
    """True for the marker of a leaf that is not sparsified."""
    return isinstance(x, optax.MaskedNode)


def map_sparse(f: Callable[..., Any], masks: PyTree, *trees: PyTree) -> PyTree:
    """``f(mask, *leaves)`` on sparsified leaves; dense leaves keep the ``DENSE`` marker."""
    return jax.tree.map(
        lambda m, *xs: m if is_dense(m) else f(m, *xs), masks, *trees, is_leaf=is_dense
    )


def map_params(f: Callable[..., Any], masks: PyTree, params: PyTree, *trees: PyTree) -> PyTree:
    """``f(mask, param, *leaves)`` on sparsified leaves; dense leaves return ``param`` unchanged."""
    return jax.tree.map(
        lambda m, p, *xs: p if is_dense(m) else f(m, p, *xs),
        masks,
        params,
        *trees,
        is_leaf=is_dense,
    )


def sparse_leaves(masks: PyTree) -> list[Array]:
    """The bool arrays of the sparsified leaves, in flattening order."""
    return [m for m in jax.tree.leaves(masks, is_leaf=is_dense) if not is_dense(m)]


# ----------------------------------------------------------------------------- granularity
def to_blocks(x: Array, block: Block, reduce: str = "sum") -> Array:
    """Reduces the last two axes of ``x`` to one value per ``block`` tile (identity if ``block`` is None)."""
    if block is None:
        return x
    *lead, r, c = x.shape
    b0, b1 = block
    tiles = x.reshape(*lead, r // b0, b0, c // b1, b1)
    return tiles.any(axis=(-3, -1)) if reduce == "any" else tiles.sum(axis=(-3, -1))


def from_blocks(units: Array, block: Block) -> Array:
    """Expands a per-tile array back to element resolution (inverse of :func:`to_blocks`)."""
    if block is None:
        return units
    return jnp.repeat(jnp.repeat(units, block[0], axis=-2), block[1], axis=-1)


def check_block(name: str, shape: tuple[int, ...], block: Block) -> None:
    """Raises a one-line error if ``block`` does not tile the last two axes of leaf ``name``."""
    if block is None:
        return
    if len(shape) < 2 or shape[-2] % block[0] or shape[-1] % block[1]:
        raise ValueError(
            f"block_size={tuple(block)}: leaf {name} of shape {shape} is not tiled by it; "
            "allowed: block sizes dividing the last two axes (or an override keeping the leaf dense)"
        )


def unit_count(shape: tuple[int, ...], block: Block) -> int:
    """Number of maskable units (elements, or tiles when ``block`` is set) of a leaf."""
    if block is None:
        return int(np.prod(shape))
    return int(np.prod(shape[:-2])) * (shape[-2] // block[0]) * (shape[-1] // block[1])


def active_units(shape: tuple[int, ...], sparsity: float, block: Block = None) -> int:
    """Exact number of active units of a leaf at ``sparsity``: ``round((1 - s) * units)``."""
    return int(round((1.0 - sparsity) * unit_count(shape, block)))


# ----------------------------------------------------------------------------- creation
def random_mask(key: Array, shape: tuple[int, ...], k: int | Array, block: Block = None) -> Array:
    """Exactly ``k`` active units chosen uniformly at random."""
    unit_shape = (
        shape if block is None else (*shape[:-2], shape[-2] // block[0], shape[-1] // block[1])
    )
    # All scores tie, so the random tie order of ``topk_mask`` decides: a uniform k-subset.
    return from_blocks(topk_mask(jnp.zeros(unit_shape), k, key=key), block)


def magnitude_scores(x: Array, block: Block = None) -> Array:
    """What a magnitude top-k ranks by ``|score|``: ``x`` itself (no copy), or per ``block`` tile the
    squared L2 norm."""
    return x if block is None else to_blocks(jnp.square(x.astype(jnp.float32)), block)


def magnitude_mask(
    w: Array, k: int | Array, block: Block = None, key: Array | None = None
) -> Array:
    """The ``k`` units of largest magnitude (ties broken randomly if ``key`` is given)."""
    scores = magnitude_scores(w, block)
    return from_blocks(topk_mask(scores, k, key=key, magnitude=True), block)


def nm_mask(w: Array, n: int, m: int, axis: int = 0, name: str = "array") -> Array:
    """N:M mask: in every group of ``m`` consecutive weights along ``axis`` keep the ``n`` largest ``|w|``.

    A per-group top-n by pairwise ranks inside each group (an argmax for n = 1), never a sort of the
    leaf. Ties go to the lower index.
    """
    if not 0 < n <= m:
        raise ValueError(f"n={n}, m={m}: allowed 0 < n <= m")
    length = w.shape[axis]
    if length % m:
        raise ValueError(
            f"m={m}: leaf {name} of shape {tuple(w.shape)} has axis {axis} of length "
            f"{length}, not a multiple of m; allowed: m dividing it, or an override keeping it dense"
        )
    if n == m:
        return jnp.ones(w.shape, bool)
    axis = axis % w.ndim
    # Group in place (no transpose): (..., L/m, m, ...) with the group members on axis + 1.
    groups = jnp.abs(w).reshape(*w.shape[:axis], length // m, m, *w.shape[axis + 1 :])
    if n == 1:
        # Top-1 is the first maximum: one argmax per group, O(m) per group where the pairwise ranks
        # below are O(m^2) (docs/design.md, Performance notes).
        first = jnp.expand_dims(jnp.argmax(groups, axis=axis + 1), axis + 1)
        member = jax.lax.broadcasted_iota(first.dtype, groups.shape, axis + 1)
        return (member == first).reshape(w.shape)
    # Rank inside each group by pairwise comparison (ties: lower index first). For the small M of
    # N:M this is a few fused elementwise ops, far cheaper on CPU than lax.top_k or a sort.
    a = jnp.expand_dims(groups, axis + 2)  # member i on axis + 1, member j on axis + 2
    b = jnp.expand_dims(groups, axis + 1)
    earlier = (jnp.arange(m)[None, :] < jnp.arange(m)[:, None]).reshape(
        (m, m) + (1,) * (w.ndim - axis - 1)
    )
    # Ranks in one byte when they fit: the rank array is the one leaf-sized temporary here.
    dtype = jnp.uint8 if m <= 256 else jnp.int32
    # One compare per pair (the tie rule folded into >= vs >): 12-28% faster than ``> | (== & earlier)``.
    rank = jnp.sum(jnp.where(earlier, b >= a, b > a), axis=axis + 2, dtype=dtype)
    return (rank < n).reshape(w.shape)


def create_masks(
    params: PyTree,
    sparsities: Mapping[str, float],
    key: Array,
    method: str = "random",
    block: Block = None,
) -> PyTree:
    """Masks for ``params`` with exactly ``round((1 - s) * units)`` actives per sparsified leaf.

    Args:
      params: params pytree.
      sparsities: leaf path -> sparsity (from ``distributions.leaf_sparsities``); others stay dense.
      key: PRNG key (random init and magnitude tie-breaks).
      method: ``random`` (uniform) or ``magnitude`` (top-k ``|w|``).
      block: optional tile shape for block-granular masks.
    """
    if method not in ("random", "magnitude"):
        raise ValueError(f"init={method!r}: allowed values are random, magnitude")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for i, (path, w) in enumerate(flat):
        name = path_str(path)
        if name not in sparsities:
            out.append(DENSE)
            continue
        check_block(name, w.shape, block)
        k = active_units(w.shape, sparsities[name], block)
        sub = jax.random.fold_in(key, i)
        if k == unit_count(w.shape, block):
            out.append(jnp.ones(w.shape, bool))
        elif method == "random":
            out.append(random_mask(sub, w.shape, k, block))
        else:
            out.append(magnitude_mask(w, k, block, key=sub))
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------- apply / count / combine
def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """``w * m`` on sparsified leaves (exact zeros, dtype kept); dense leaves unchanged."""
    return map_params(lambda m, w: jnp.where(m, w, jnp.zeros_like(w)), masks, params)


def count_active(masks: PyTree) -> Array:
    """Total number of active weights over sparsified leaves (int32 scalar)."""
    return sum((count_true(m, rows=True) for m in sparse_leaves(masks)), jnp.int32(0))


def union(a: PyTree, b: PyTree) -> PyTree:
    """Element-wise OR of two mask pytrees."""
    return map_sparse(jnp.logical_or, a, b)


def intersection(a: PyTree, b: PyTree) -> PyTree:
    """Element-wise AND of two mask pytrees."""
    return map_sparse(jnp.logical_and, a, b)


def difference(a: PyTree, b: PyTree) -> PyTree:
    """Positions active in ``a`` but not in ``b``."""
    return map_sparse(lambda x, y: x & ~y, a, b)


def hamming(a: PyTree, b: PyTree) -> Array:
    """Number of positions where two masks differ (SAD's numerator)."""
    return count_active(map_sparse(jnp.not_equal, a, b))


# ----------------------------------------------------------------------------- bit packing
def pack_masks(masks: PyTree) -> PyTree:
    """Packs each bool mask to uint8 bits along its last axis (8x smaller; leading axes and their
    sharding are kept, unlike a flatten)."""
    return map_sparse(lambda m: jnp.packbits(m, axis=-1), masks)


def unpack_masks(packed: PyTree, like: PyTree) -> PyTree:
    """Inverse of :func:`pack_masks`; ``like`` is the params pytree (or masks) giving the shapes."""
    return map_sparse(
        lambda p, x: jnp.unpackbits(p, axis=-1, count=x.shape[-1]).astype(bool), packed, like
    )
