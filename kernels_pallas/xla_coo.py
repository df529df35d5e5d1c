"""Block-sparse products over a list of block coordinates, in any order: two XLA layouts.

W is given as its blocks ``data[t]`` and their (block row, block column) ``(rows[t], cols[t])``, in
any order and with no CSR view: the compressed layers (``compressed.py``) pass their slots as they
are, with no sort and no permutation of the blocks or of their gradient.

- "batched": every block's panel of x gathered side by side and one batched GEMM (few blocks, large
  M: a ViT MLP layer at 90% of 128-blocks);
- "blockwise": one block per loop step, each step a panel slice, one GEMM and an in-place add (the
  blocks share few panels and M is small: the 2048-wide MLP at 90%, batch 256, about 1.6 blocks per
  block row and column, where grouping by panel buys no wider GEMMs).

``xla_path.default_layout`` says when each runs (``benchmarks/results/xla_layout_cpu.md``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas import dispatch, xla_path

Array = jax.Array


def order_free(plan: dispatch.Plan) -> bool:
    """Whether all three products run an XLA layout that takes the blocks in any order (``coo_*``)."""
    xla_only = (plan.fwd, plan.dx, plan.dw) == ("xla",) * 3
    return xla_only and plan.xla.layout in xla_path.ORDER_FREE


def coo_product(
    plan: dispatch.Plan,
    x: Array,
    data: Array,
    rows: Array,
    cols: Array,
    grid: tuple[int, int],
    transpose: bool,
) -> Array:
    """x @ W (or x @ W^T) for W's blocks ``data[t]`` at (rows[t], cols[t]) in any order, under an
    order-free XLA layout (``plan.xla.layout`` in ``xla_path.ORDER_FREE``): no CSR view needed.

    Block t reads panel ``ins[t]`` of x and adds into panel ``outs[t]`` of the result: (rows, cols)
    for the forward, (cols, rows) with each block read transposed for dX.
    """
    ins, outs, num_out = (cols, rows, grid[0]) if transpose else (rows, cols, grid[1])
    fn = _batched_product if plan.xla.layout == "batched" else _blockwise_product
    y = fn(x, data, ins, outs, num_out, transpose)
    return y.astype(dispatch.result_dtype(x, data))


def coo_weight_grad(
    plan: dispatch.Plan, x: Array, dy: Array, rows: Array, cols: Array, data: Array
) -> Array:
    """Blocks of x^T @ dy at (rows[t], cols[t]), in that order, shaped and typed like ``data``."""
    fn = _batched_sdd if plan.xla.layout == "batched" else _blockwise_sdd
    return fn(x, dy, rows, cols, tuple(data.shape[1:])).astype(data.dtype)


def _batched_product(x, data, ins, outs, num_out: int, transpose: bool) -> Array:
    """The batched layout: the (M, b) panels of x that the blocks read gathered side by side, one
    ``einsum`` with their blocks, the products added into the (M, num_out, b') f32 result. No loop
    and no data-dependent trip count."""
    m = x.shape[0]
    _, bk, bn = data.shape
    b_in, b_out = (bn, bk) if transpose else (bk, bn)
    panels = jnp.take(x.reshape(m, -1, b_in), ins, axis=1, mode="clip")  # (M, nnz, b_in)
    spec = "mti,toi->mto" if transpose else "mti,tio->mto"
    prods = jnp.einsum(spec, *_f32(panels, data))
    y = jnp.zeros((m, num_out, b_out), jnp.float32).at[:, outs].add(prods, mode="drop")
    return y.reshape(m, num_out * b_out)


def _batched_sdd(x, dy, rows, cols, block_shape: tuple[int, int]) -> Array:
    """Both operands' panels gathered, one ``einsum`` to the (nnz, bk, bn) f32 blocks."""
    bk, bn = block_shape
    m = x.shape[0]
    xs = jnp.take(x.reshape(m, -1, bk), rows, axis=1, mode="clip")  # (M, nnz, bk)
    dys = jnp.take(dy.reshape(m, -1, bn), cols, axis=1, mode="clip")  # (M, nnz, bn)
    return jnp.einsum("mtk,mtn->tkn", *_f32(xs, dys))


def _blockwise_product(x, data, ins, outs, num_out: int, transpose: bool) -> Array:
    """The blockwise layout: one block per loop step, which slices its panel of x, multiplies it by
    the block (read transposed in place for dX) and adds the product into its output panel."""
    m = x.shape[0]
    nnz, bk, bn = data.shape
    b_in, b_out = (bn, bk) if transpose else (bk, bn)
    dims = (((1,), (1 if transpose else 0,)), ((), ()))

    def body(t, y):
        panel = jax.lax.dynamic_slice_in_dim(x, ins[t] * b_in, b_in, axis=1)
        prod = jax.lax.dot_general(panel, data[t], dims, preferred_element_type=jnp.float32)
        cur = jax.lax.dynamic_slice_in_dim(y, outs[t] * b_out, b_out, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(y, cur + prod, outs[t] * b_out, axis=1)

    return jax.lax.fori_loop(0, nnz, body, jnp.zeros((m, num_out * b_out), jnp.float32))


def _blockwise_sdd(x, dy, rows, cols, block_shape: tuple[int, int]) -> Array:
    """One block per loop step: an (M, bk) panel of x and an (M, bn) panel of dy contracted over M
    in place (no transposed copy of x), written as f32 block t."""
    bk, bn = block_shape
    nnz = rows.shape[0]
    dims = (((0,), (0,)), ((), ()))

    def body(t, out):
        a = jax.lax.dynamic_slice_in_dim(x, rows[t] * bk, bk, axis=1)
        d = jax.lax.dynamic_slice_in_dim(dy, cols[t] * bn, bn, axis=1)
        blk = jax.lax.dot_general(a, d, dims, preferred_element_type=jnp.float32)
        return jax.lax.dynamic_update_index_in_dim(out, blk, t, axis=0)

    return jax.lax.fori_loop(0, nnz, body, jnp.zeros((nnz, bk, bn), jnp.float32))


def _f32(*arrays: Array) -> tuple[Array, ...]:
    # f32 operands: XLA:CPU has no batched 16-bit dot with an f32 result.
    return tuple(a.astype(jnp.promote_types(a.dtype, jnp.float32)) for a in arrays)
