"""Block-granular scoring and mask helpers for block drop/grow (RigL/SET at block granularity).

Everything here is jittable and works on the (K // bk, N // bn) block grid; the library side calls these to
turn element scores (|w|, |grad|) into block decisions, and the layer uses ``top_block_positions`` to derive
its topology from the (masked) weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.format import blocked
from sparsejax.topk import topk_mask


def as_block_shape(block_size: int | tuple[int, int]) -> tuple[int, int]:
    """Normalize an int or (bk, bn) block size to a (bk, bn) tuple."""
    if isinstance(block_size, int):
        return (block_size, block_size)
    bk, bn = block_size
    return (int(bk), int(bn))


def block_norms(w: jax.Array, block_size: int | tuple[int, int], ord: int = 2) -> jax.Array:
    """(KB, NB) f32 norm of every (bk, bn) block of a dense (K, N) array: Frobenius (2) or L1 (1)."""
    b = blocked(w.astype(jnp.float32), as_block_shape(block_size))
    if ord == 1:
        return jnp.sum(jnp.abs(b), axis=(2, 3))
    if ord == 2:
        return jnp.sqrt(jnp.sum(b * b, axis=(2, 3)))
    raise ValueError(f"ord must be 1 or 2, got {ord}")


def block_mask_from_dense(w: jax.Array, block_size: int | tuple[int, int]) -> jax.Array:
    """(KB, NB) bool mask of the blocks of ``w`` that hold any nonzero."""
    return jnp.any(blocked(w, as_block_shape(block_size)) != 0, axis=(2, 3))


def block_mask_from_elements(
    mask: jax.Array, block_size: int | tuple[int, int], reduce: str = "any"
) -> jax.Array:
    """Coarsen an element mask (K, N) to a block mask with ``reduce`` in {"any", "all"}."""
    b = blocked(mask.astype(bool), as_block_shape(block_size))
    if reduce == "any":
        return jnp.any(b, axis=(2, 3))
    if reduce == "all":
        return jnp.all(b, axis=(2, 3))
    raise ValueError(f"reduce must be 'any' or 'all', got {reduce!r}")


def expand_block_mask(block_mask: jax.Array, block_size: int | tuple[int, int]) -> jax.Array:
    """(KB, NB) block mask -> (KB * bk, NB * bn) element mask."""
    bk, bn = as_block_shape(block_size)
    return jnp.repeat(jnp.repeat(block_mask, bk, axis=0), bn, axis=1)


def topk_block_mask(scores: jax.Array, k: int | jax.Array) -> jax.Array:
    """Bool mask (shape of ``scores``) of the ``k`` highest scores (ties: lower flat index first);
    ``k`` may be traced. The sort-free exact top-k of ``sparsejax.topk``."""
    return topk_mask(scores.astype(jnp.float32), k)


def top_block_positions(w: jax.Array, block_size: int | tuple[int, int], nnz: int) -> jax.Array:
    """Sorted flat positions (row * NB + col) of the ``nnz`` blocks of ``w`` with the largest norms.

    This is how a layer holding a masked dense kernel recovers its block topology: after masking, the
    active blocks are the nonzero ones, so they rank first (explicitly zero active blocks tie with the
    inactive ones and are equivalent in the forward pass). The result carries no gradient.
    """
    scores = jax.lax.stop_gradient(block_norms(w, block_size)).reshape(-1)
    _, pos = jax.lax.top_k(scores, nnz)
    return jnp.sort(pos).astype(jnp.int32)


def drop_grow_blocks(
    block_mask: jax.Array, drop_scores: jax.Array, grow_scores: jax.Array, num_swap: int | jax.Array
) -> jax.Array:
    """One block-granular RigL/SET step: drop then grow ``num_swap`` blocks, keeping the block count.

    Drops the ``num_swap`` active blocks with the lowest ``drop_scores`` (RigL: block weight norms) and
    grows the ``num_swap`` blocks with the highest ``grow_scores`` (RigL: block norms of the dense gradient;
    SET: random) among those inactive after the drop, so a block just dropped may come straight back.
    ``num_swap`` may be traced; it is clipped to the number of active blocks.
    """
    active = block_mask.astype(bool)
    n_active = jnp.sum(active)
    num_swap = jnp.minimum(num_swap, n_active)
    keep_scores = jnp.where(active, drop_scores.astype(jnp.float32), -jnp.inf)
    kept = topk_block_mask(keep_scores, n_active - num_swap) & active
    candidates = jnp.where(kept, -jnp.inf, grow_scores.astype(jnp.float32))
    grown = topk_block_mask(candidates, num_swap) & ~kept
    return kept | grown
