"""``masked_kernel_matmul``: the layer-facing op, x @ (a dense kernel restricted to some blocks).

A Flax layer keeps a dense kernel; this op gathers the chosen blocks and runs the block-sparse product,
optionally returning the full dense kernel gradient x^T @ dY (RigL grows by it). When the plan is
dense, the kernel is masked in place instead of being converted to blocks and back.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from kernels_pallas.format import BlockSparseMatrix, from_positions
from kernels_pallas.ops import bsmm, grouped_product, plan_for


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _bsmm_dense_grad(plan, x, kernel, positions, block_shape):
    return grouped_product(plan.fwd, plan, x, from_positions(kernel, positions, block_shape), False)


def _dense_grad_fwd(plan, x, kernel, positions, block_shape):
    w = from_positions(kernel, positions, block_shape)
    return grouped_product(plan.fwd, plan, x, w, False), (x, w)


def _dense_grad_bwd(plan, block_shape, res, dy):
    x, w = res
    dx = grouped_product(plan.dx, plan, dy, w, transpose=True).astype(x.dtype)
    dk = jnp.dot(x.T, dy, precision=plan.precision, preferred_element_type=jnp.float32)
    return dx, dk.astype(w.data.dtype), None


_bsmm_dense_grad.defvjp(_dense_grad_fwd, _dense_grad_bwd)


def positions_mask(positions: jax.Array, shape: tuple[int, int], block_shape) -> jax.Array:
    """(K, N) element mask of the blocks at flat ``positions`` (one small scatter, then a broadcast)."""
    kb, nb = shape[0] // block_shape[0], shape[1] // block_shape[1]
    blocks = jnp.zeros((kb * nb,), bool).at[positions].set(True).reshape(kb, nb)
    return jnp.repeat(jnp.repeat(blocks, block_shape[0], axis=0), block_shape[1], axis=1)


def masked_kernel_matmul(
    x: jax.Array,
    kernel: jax.Array,
    positions: jax.Array,
    block_shape: tuple[int, int],
    *,
    dense_weight_grad: bool = False,
    impl: str = "auto",
    interpret: Any = None,
    backend: str | None = None,
    precision: Any = None,
) -> jax.Array:
    """y = x @ (the blocks of a dense ``kernel`` at sorted flat ``positions``), block-sparse.

    The gradient w.r.t. ``kernel`` is zero outside the stored blocks, or, with ``dense_weight_grad``,
    the full dense x^T @ dY (what RigL's gradient-based growth scores). When the plan is dense, the
    kernel is masked in place instead of being converted to blocks and back.
    """
    nnz = positions.shape[0]
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    x2 = x.reshape(-1, x.shape[-1]).astype(dtype)
    kernel = kernel.astype(dtype)
    meta = BlockSparseMatrix(
        jax.ShapeDtypeStruct((nnz, *block_shape), dtype), None, None, kernel.shape, block_shape
    )
    plan = plan_for(
        x2, meta, dtype, dict(impl=impl, interpret=interpret, backend=backend, precision=precision)
    )
    out_shape = (*x.shape[:-1], kernel.shape[1])
    if plan.fwd == "dense" and plan.dx == "dense":
        masked = jnp.where(positions_mask(positions, kernel.shape, block_shape), kernel, 0)
        if dense_weight_grad:  # straight-through: d/d(kernel) is d/d(masked) everywhere
            masked = kernel + jax.lax.stop_gradient(masked - kernel)
        return jnp.dot(x2, masked, precision=precision).reshape(out_shape)
    if not dense_weight_grad:
        w = from_positions(kernel, positions, tuple(block_shape))
        return bsmm(plan, x2, w).reshape(out_shape)
    return _bsmm_dense_grad(plan, x2, kernel, positions, tuple(block_shape)).reshape(out_shape)
