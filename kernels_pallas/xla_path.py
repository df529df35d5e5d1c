"""Block-sparse products in plain XLA: runs on every backend and is the fast path on CPU.

Layout choice (measured on a 2-core CPU, see docs/kernels.md): one loop over the stored blocks in
output-group order; each step slices one (M, b) panel of the dense operand, does one small GEMM and
accumulates straight into the (M, N) output with an in-place dynamic-update-slice. Gathering several
blocks into one wider GEMM, batched dot_general, segment sums and transposed layouts all lost on CPU:
the gathers and the final transposes cost more than the wider GEMMs gain, and padding unbalanced groups
wastes work.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kernels_pallas.format import block_rows_from_indptr


@dataclasses.dataclass(frozen=True)
class XlaConfig:
    """Tunable knobs of the XLA path (see ``autotune``)."""

    unroll: int = 1  # fori_loop unroll factor: fewer loop trips, larger loop bodies


def grouped_matmul(
    x: jax.Array,
    data: jax.Array,
    group_ptr: jax.Array,
    in_idx: jax.Array,
    data_idx: jax.Array,
    *,
    transpose_blocks: bool,
    out_dtype: jnp.dtype,
    config: XlaConfig = XlaConfig(),
) -> jax.Array:
    """y[:, g] = sum over positions t of group g of x[:, in_idx[t]] @ op(data[data_idx[t]]).

    ``group_ptr`` (G+1,) gives each output block column its range of positions; ``op`` is the identity
    (forward, y = x @ W, groups = block columns of W) or a transpose (dX = dY @ W^T, groups = block rows).
    Empty groups stay zero because the accumulator starts at zero.
    """
    m = x.shape[0]
    nnz, bk, bn = data.shape
    b_in, b_out = (bn, bk) if transpose_blocks else (bk, bn)
    num_groups = group_ptr.shape[0] - 1
    groups = block_rows_from_indptr(group_ptr, nnz)
    contract = ((1,), (1,)) if transpose_blocks else ((1,), (0,))

    def body(t: jax.Array, y: jax.Array) -> jax.Array:
        xb = jax.lax.dynamic_slice_in_dim(x, in_idx[t] * b_in, b_in, axis=1)
        wb = jax.lax.dynamic_index_in_dim(data, data_idx[t], axis=0, keepdims=False)
        p = jax.lax.dot_general(xb, wb, (contract, ((), ())), preferred_element_type=jnp.float32)
        col = groups[t] * b_out
        cur = jax.lax.dynamic_slice_in_dim(y, col, b_out, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(y, cur + p, col, axis=1)

    y = jnp.zeros((m, num_groups * b_out), jnp.float32)
    y = jax.lax.fori_loop(0, nnz, body, y, unroll=config.unroll)
    return y.astype(out_dtype)


def sdd(
    x: jax.Array,
    dy: jax.Array,
    rows: jax.Array,
    cols: jax.Array,
    block_shape: tuple[int, int],
    *,
    out_dtype: jnp.dtype,
    config: XlaConfig = XlaConfig(),
) -> jax.Array:
    """(nnz, bk, bn) blocks of x^T @ dy at block positions (rows[t], cols[t]): dW on stored blocks only."""
    bk, bn = block_shape
    nnz = rows.shape[0]

    def body(t: jax.Array, out: jax.Array) -> jax.Array:
        xb = jax.lax.dynamic_slice_in_dim(x, rows[t] * bk, bk, axis=1)
        gb = jax.lax.dynamic_slice_in_dim(dy, cols[t] * bn, bn, axis=1)
        blk = jax.lax.dot_general(
            xb, gb, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
        )
        return jax.lax.dynamic_update_index_in_dim(out, blk.astype(out_dtype), t, axis=0)

    out = jnp.zeros((nnz, bk, bn), out_dtype)
    return jax.lax.fori_loop(0, nnz, body, out, unroll=config.unroll)
