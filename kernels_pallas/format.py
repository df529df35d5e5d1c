"""The block-sparse weight format: blocked CSR with a static block shape and a static block count.

A ``BlockSparseMatrix`` stores a (K, N) matrix as ``nnz`` dense blocks of shape (bk, bn) in row-major
block order (CSR). Only the integer index arrays depend on the topology, and their shapes depend only on
``nnz`` and the block grid, so RigL/SET moving blocks around never changes a shape and never recompiles.
The transposed (CSC) view is three integer arrays computed under jit; it points into ``data`` instead of
copying it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockSparseMatrix:
    """A (K, N) matrix stored as ``nnz`` blocks of shape ``block_shape`` in blocked CSR order.

    Attributes:
      data: (nnz, bk, bn) block values, sorted by (block row, block column).
      indices: (nnz,) int32 block-column index of each block.
      indptr: (K // bk + 1,) int32 offsets of each block row into ``data``/``indices``.
      shape: static (K, N).
      block_shape: static (bk, bn).
    """

    data: jax.Array
    indices: jax.Array
    indptr: jax.Array
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    block_shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))

    @property
    def nnz(self) -> int:
        """Static number of stored blocks."""
        return self.data.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        """Block grid (K // bk, N // bn)."""
        return (self.shape[0] // self.block_shape[0], self.shape[1] // self.block_shape[1])

    @property
    def dtype(self) -> jnp.dtype:
        """Dtype of the block values."""
        return self.data.dtype

    @property
    def density(self) -> float:
        """Static fraction of blocks stored (explicitly stored zero blocks count as stored)."""
        return self.nnz / (self.grid[0] * self.grid[1])

    def block_rows(self) -> jax.Array:
        """(nnz,) int32 block-row index of every stored block (derived from ``indptr``)."""
        return block_rows_from_indptr(self.indptr, self.nnz)

    def to_dense(self) -> jax.Array:
        """The dense (K, N) matrix; unstored blocks are zero."""
        return to_dense(self)

    def csc(self) -> CscView:
        """Integer-only column view (see ``csc_view``)."""
        return csc_view(self)

    def transpose(self) -> BlockSparseMatrix:
        """W^T as its own BlockSparseMatrix. This copies the blocks; the kernels use ``csc`` instead."""
        view = csc_view(self)
        data = jnp.swapaxes(self.data[view.perm], 1, 2)
        return BlockSparseMatrix(
            data, view.indices, view.indptr, self.shape[::-1], self.block_shape[::-1]
        )

    @property
    def T(self) -> BlockSparseMatrix:  # noqa: N802 (numpy spelling)
        """Alias of ``transpose()``."""
        return self.transpose()


class CscView(NamedTuple):
    """Column-major view of a BlockSparseMatrix, without block data.

    Block ``i`` in column order is ``data[perm[i]]``, sits in block row ``indices[i]``, and column ``j``
    owns positions ``indptr[j]:indptr[j + 1]``.
    """

    perm: jax.Array
    indices: jax.Array
    indptr: jax.Array


def block_rows_from_indptr(indptr: jax.Array, nnz: int) -> jax.Array:
    """(nnz,) int32 group index of each position given group offsets ``indptr``."""
    pos = jnp.arange(nnz, dtype=jnp.int32)
    return (jnp.searchsorted(indptr, pos, side="right") - 1).astype(jnp.int32)


def _indptr_from_sorted(groups: jax.Array, num_groups: int) -> jax.Array:
    """Offsets of each group in a sorted (nnz,) array of group ids."""
    bounds = jnp.arange(num_groups + 1, dtype=jnp.int32)
    return jnp.searchsorted(groups, bounds, side="left").astype(jnp.int32)


def csc_view(w: BlockSparseMatrix) -> CscView:
    """Column-major (CSC) view of ``w``: a stable sort of the column indices, no block data copied."""
    perm = jnp.argsort(w.indices, stable=True).astype(jnp.int32)
    cols_sorted = w.indices[perm]
    rows = w.block_rows()[perm]
    return CscView(perm, rows, _indptr_from_sorted(cols_sorted, w.grid[1]))


def validate_block_shape(shape: tuple[int, int], block_shape: tuple[int, int]) -> None:
    """Raise ValueError unless ``block_shape`` is positive and tiles ``shape`` exactly."""
    (k, n), (bk, bn) = shape, block_shape
    if bk <= 0 or bn <= 0 or k % bk or n % bn:
        raise ValueError(
            f"block shape {block_shape} must be positive and divide the matrix shape {shape} exactly"
        )


def blocked(w: jax.Array, block_shape: tuple[int, int]) -> jax.Array:
    """(K, N) -> (K // bk, N // bn, bk, bn) view of a dense matrix."""
    validate_block_shape(w.shape, block_shape)
    (k, n), (bk, bn) = w.shape, block_shape
    return w.reshape(k // bk, bk, n // bn, bn).transpose(0, 2, 1, 3)


def unblocked(blocks: jax.Array) -> jax.Array:
    """(KB, NB, bk, bn) -> (KB * bk, NB * bn), the inverse of ``blocked``."""
    kb, nb, bk, bn = blocks.shape
    return blocks.transpose(0, 2, 1, 3).reshape(kb * bk, nb * bn)


def from_positions(
    w: jax.Array, positions: jax.Array, block_shape: tuple[int, int], keep: jax.Array | None = None
) -> BlockSparseMatrix:
    """Build a BlockSparseMatrix from sorted flat block positions (row * NB + col) of a dense ``w``.

    ``positions`` must be strictly increasing (CSR order). Blocks with ``keep == False`` are stored as
    explicit zeros. Differentiable in ``w`` (the gradient lands on the stored blocks).
    """
    validate_block_shape(w.shape, block_shape)
    kb, nb = w.shape[0] // block_shape[0], w.shape[1] // block_shape[1]
    positions = positions.astype(jnp.int32)
    data = blocked(w, block_shape).reshape(kb * nb, *block_shape)[positions]
    if keep is not None:
        data = jnp.where(keep[:, None, None], data, jnp.zeros((), data.dtype))
    rows, cols = positions // nb, positions % nb
    return BlockSparseMatrix(
        data, cols.astype(jnp.int32), _indptr_from_sorted(rows, kb), tuple(w.shape), block_shape
    )


def _concrete_count(mask: jax.Array | np.ndarray) -> int | None:
    """Number of True entries of a concrete mask, or None for a traced one."""
    try:
        return int(np.asarray(mask).sum())
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def from_dense(
    w: jax.Array,
    block_mask: jax.Array | np.ndarray | None = None,
    nnz: int | None = None,
    *,
    block_shape: tuple[int, int] | None = None,
) -> BlockSparseMatrix:
    """Convert a dense (K, N) weight and a (K // bk, N // bn) bool block mask to a BlockSparseMatrix.

    ``block_shape`` is inferred from the mask's shape; without a mask it is required and the mask is
    "blocks with any nonzero". ``nnz`` (static) defaults to the mask's count, which needs a concrete mask.
    With fewer masked blocks than ``nnz``, unmasked positions are stored as explicit zero blocks; with
    more, a concrete mask raises and a traced one keeps the first ``nnz`` in row-major order.
    """
    if block_mask is None:
        if block_shape is None:
            raise ValueError("from_dense needs a block_mask or a block_shape")
        block_mask = jnp.any(blocked(w, block_shape) != 0, axis=(2, 3))
    elif block_shape is None:
        kb, nb = block_mask.shape
        if w.shape[0] % kb or w.shape[1] % nb:
            raise ValueError(f"block mask of shape {block_mask.shape} does not tile {w.shape}")
        block_shape = (w.shape[0] // kb, w.shape[1] // nb)
    validate_block_shape(w.shape, block_shape)
    grid = (w.shape[0] // block_shape[0], w.shape[1] // block_shape[1])
    if tuple(block_mask.shape) != grid:
        raise ValueError(f"block mask shape {block_mask.shape} != block grid {grid}")
    count = _concrete_count(block_mask)
    if count is not None:
        nnz = count if nnz is None else nnz
        if count > nnz:
            raise ValueError(f"block mask has {count} blocks but nnz={nnz}")
    elif nnz is None:
        raise ValueError("from_dense under jit needs a static nnz")
    nnz = max(int(nnz), 1)  # kernels need at least one stored block; it may be an explicit zero
    if nnz > grid[0] * grid[1]:
        raise ValueError(f"nnz={nnz} exceeds the {grid[0] * grid[1]} blocks of the grid")
    flat = jnp.asarray(block_mask).reshape(-1)
    # Masked blocks first (row-major), then unmasked ones as zero padding; re-sorted into CSR order.
    chosen = jnp.sort(jnp.argsort(jnp.logical_not(flat), stable=True)[:nnz])
    return from_positions(w, chosen, block_shape, keep=flat[chosen])


def block_slots(w: BlockSparseMatrix) -> jax.Array:
    """(KB * NB,) int32: the data index stored at each grid position, ``nnz`` where none is."""
    kb, nb = w.grid
    flat = w.block_rows() * nb + w.indices
    return jnp.full((kb * nb,), w.nnz, jnp.int32).at[flat].set(jnp.arange(w.nnz, dtype=jnp.int32))


def to_dense(w: BlockSparseMatrix) -> jax.Array:
    """The dense (K, N) array with unstored blocks zero (differentiable in ``w.data``).

    A gather of blocks (out-of-range slots fill zeros) after a small integer scatter: on CPU this is
    about 3x faster than scattering the blocks themselves.
    """
    kb, nb = w.grid
    blocks = jnp.take(w.data, block_slots(w), axis=0, mode="fill", fill_value=0)
    return unblocked(blocks.reshape(kb, nb, *w.block_shape))


def block_mask_of(w: BlockSparseMatrix) -> jax.Array:
    """(KB, NB) bool mask of the stored block positions (explicit zero blocks included)."""
    kb, nb = w.grid
    flat = w.block_rows() * nb + w.indices
    return jnp.zeros((kb * nb,), bool).at[flat].set(True).reshape(kb, nb)
