"""Block topologies of compressed layers: which block of the dense-equivalent kernel each slot holds.

A compressed layer stores ``nnz`` blocks ``data[i]`` (its trainable parameter, shape (nnz, bk, bn));
slot ``i`` holds the block at flat grid position ``positions[i]`` (``row * NB + col``) of the (K, N)
kernel it stands for. Slots are stable: a topology change rewrites the positions of the freed slots
only, so kept blocks never move in memory and neither does their optimizer state; a freed slot takes
a grown block and starts from zero (``sparsify`` zeroes it and resets its optimizer state, as for any
grown weight). The kernels want CSR order, so ``csr`` sorts the (few) positions under jit.

Everything here is integer work on the (KB, NB) grid or gathers of whole blocks: nothing builds a
dense kernel except the explicit conversions ``to_masked_dense`` / ``from_masked_dense``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.format import blocked, unblocked, validate_block_shape

Array = jax.Array


class Csr(NamedTuple):
    """CSR order of a slot topology: ``perm[j]`` is the slot of the j-th block in (row, col) order."""

    perm: Array  # (nnz,) int32 slot index of each CSR position
    indices: Array  # (nnz,) int32 block column, CSR order
    indptr: Array  # (KB + 1,) int32 block-row offsets


def grid_of(shape: tuple[int, int], block_shape: tuple[int, int]) -> tuple[int, int]:
    """(KB, NB) block grid of a (K, N) kernel (ValueError unless the blocks tile it)."""
    validate_block_shape(tuple(shape), tuple(block_shape))
    return shape[0] // block_shape[0], shape[1] // block_shape[1]


def block_mask(positions: Array, grid: tuple[int, int]) -> Array:
    """(KB, NB) bool mask of the blocks held by some slot."""
    kb, nb = grid
    return jnp.zeros((kb * nb,), bool).at[positions].set(True).reshape(kb, nb)


def positions_of(units: Array, nnz: int) -> Array:
    """Sorted flat positions of the ``nnz`` True blocks of a (KB, NB) mask (its count must be nnz)."""
    return jnp.nonzero(units.reshape(-1), size=nnz, fill_value=0)[0].astype(jnp.int32)


def coordinates(positions: Array, grid: tuple[int, int]) -> tuple[Array, Array]:
    """(block rows, block columns) int32 of flat grid positions, in the order given."""
    return (positions // grid[1]).astype(jnp.int32), (positions % grid[1]).astype(jnp.int32)


def csr(positions: Array, grid: tuple[int, int]) -> Csr:
    """CSR view of slot positions (distinct): a sort of ``nnz`` integers, no block data touched."""
    perm = jnp.argsort(positions).astype(jnp.int32)
    rows, cols = coordinates(positions[perm], grid)
    indptr = jnp.searchsorted(rows, jnp.arange(grid[0] + 1, dtype=jnp.int32), side="left")
    return Csr(perm, cols, indptr.astype(jnp.int32))


def slot_scores(data: Array, positions: Array, grid: tuple[int, int]) -> Array:
    """(KB, NB) f32 squared L2 norm of each stored block at its position, 0 at unstored ones.

    The score a block-granular drop ranks by (``sparsejax.masks.magnitude_scores`` of the tile).
    """
    norms = jnp.sum(jnp.square(data.astype(jnp.float32)), axis=(1, 2))
    kb, nb = grid
    return jnp.zeros((kb * nb,), jnp.float32).at[positions].set(norms).reshape(kb, nb)


def move(positions: Array, kept: Array, grown: Array) -> tuple[Array, Array]:
    """New slot positions after a drop/grow on the grid, and the freed slots.

    ``kept`` and ``grown`` are disjoint (KB, NB) bool masks with ``kept | grown`` the new topology and
    as many grown blocks as slots whose block is not kept. Freed slots, in slot order, take the grown
    blocks in flat order; kept slots keep their position. Returns ``(positions, freed)``, ``freed``
    (nnz,) bool: the slots whose block is new (zero it, reset its optimizer state).
    """
    nnz = positions.shape[0]
    freed = ~kept.reshape(-1)[positions]
    rank = jnp.clip(jnp.cumsum(freed) - 1, 0, nnz - 1)
    incoming = jnp.nonzero(grown.reshape(-1), size=nnz, fill_value=0)[0].astype(jnp.int32)
    return jnp.where(freed, incoming[rank], positions).astype(jnp.int32), freed


def to_masked_dense(data: Array, positions: Array, shape: tuple[int, int]) -> tuple[Array, Array]:
    """The dense (K, N) kernel (zero outside the stored blocks) and its bool element mask."""
    nnz, bk, bn = data.shape
    kb, nb = grid_of(shape, (bk, bn))
    slots = jnp.full((kb * nb,), nnz, jnp.int32).at[positions].set(jnp.arange(nnz, dtype=jnp.int32))
    blocks = jnp.take(data, slots, axis=0, mode="fill", fill_value=0)
    kernel = unblocked(blocks.reshape(kb, nb, bk, bn))
    units = block_mask(positions, (kb, nb))
    mask = jnp.repeat(jnp.repeat(units, bk, axis=0), bn, axis=1)
    return kernel, mask


def from_masked_dense(
    kernel: Array, mask: Array, block_shape: tuple[int, int], nnz: int | None = None
) -> tuple[Array, Array]:
    """``(data, positions)`` of a masked dense kernel whose mask is made of whole blocks.

    Slots come in CSR order. ``nnz`` (static) defaults to the mask's block count (a concrete mask);
    a concrete mask that is not made of whole blocks, or holds another count, raises ValueError.
    """
    tiles = blocked(mask.astype(bool), tuple(block_shape))
    units = jnp.any(tiles, axis=(2, 3))
    if not isinstance(mask, jax.core.Tracer):
        concrete = np.asarray(tiles)
        whole = concrete.any(axis=(2, 3))
        if (whole != concrete.all(axis=(2, 3))).any():
            raise ValueError(
                f"block_size={tuple(block_shape)}: the mask is not made of whole blocks; "
                "allowed: block-granular masks (sparsity.block_size equal to the layer's blocks)"
            )
        count = int(whole.sum())
        if nnz is not None and count != nnz:
            raise ValueError(f"nnz={nnz}: the mask holds {count} blocks; allowed: nnz={count}")
        nnz = count
    elif nnz is None:
        raise ValueError("from_masked_dense under jit needs a static nnz")
    positions = positions_of(units, nnz)
    kb, nb = units.shape
    data = blocked(kernel, tuple(block_shape)).reshape(kb * nb, *block_shape)[positions]
    return data, positions
