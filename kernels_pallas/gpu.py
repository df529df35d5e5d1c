"""GPU kernels through the Pallas Triton lowering: grouped block-sparse matmul and SDD.

Triton has no scalar prefetch, so each program owns one (row tile, output block column) and walks its
group's blocks with a loop whose bounds it loads from the index tables; the dense operand and the block
data stay in global memory and each step loads one (tm, b) panel and one block. Every output tile is
written exactly once (zeros for empty groups), which also suits the interpreter.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels_pallas import compat


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def check_gpu_shapes(block_shape: tuple[int, int], tm: int) -> None:
    """Raise ValueError unless every tile is a power of two >= 16 (Triton tensor and tl.dot rules)."""
    dims = (*block_shape, tm)
    if not all(_pow2(d) and d >= 16 for d in dims):
        raise ValueError(
            f"GPU (Triton) Pallas kernel: block shape {block_shape} and row tile {tm} must be powers of "
            f"two >= 16; use impl='xla' or a block size of 16/32/64/128"
        )


def _grouped_kernel(ptr_ref, in_ref, d_ref, x_ref, w_ref, o_ref, *, tm, b_in, nt, prec):
    i, g = pl.program_id(0), pl.program_id(1)
    contract = ((1,), (1,)) if nt else ((1,), (0,))

    def body(t, acc):
        xb = x_ref[pl.ds(i * tm, tm), pl.ds(in_ref[t] * b_in, b_in)]
        wb = w_ref[d_ref[t]]
        return acc + jax.lax.dot_general(
            xb, wb, (contract, ((), ())), precision=prec, preferred_element_type=jnp.float32
        )

    acc = jax.lax.fori_loop(ptr_ref[g], ptr_ref[g + 1], body, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def grouped_matmul(
    x: jax.Array,
    data: jax.Array,
    group_ptr: jax.Array,
    in_idx: jax.Array,
    data_idx: jax.Array,
    *,
    transpose_blocks: bool,
    tm: int,
    out_dtype: Any,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: Any = False,
    precision: Any = None,
) -> jax.Array:
    """y[:, g] = sum over positions t of group g of x[:, in_idx[t]] @ op(data[data_idx[t]])."""
    m = x.shape[0]
    _, bk, bn = data.shape
    b_in, b_out = (bn, bk) if transpose_blocks else (bk, bn)
    num_groups = group_ptr.shape[0] - 1
    kernel = functools.partial(
        _grouped_kernel, tm=tm, b_in=b_in, nt=transpose_blocks, prec=precision
    )
    # Inputs get no BlockSpec: they stay whole in global memory and the kernel indexes them.
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((m, num_groups * b_out), out_dtype),
        grid=(m // tm, num_groups),
        out_specs=compat.block_spec((tm, b_out), lambda i, g: (i, g)),
        compiler_params=compat.triton_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="bsr_grouped_matmul_gpu",
    )(
        group_ptr.astype(jnp.int32),
        in_idx.astype(jnp.int32),
        data_idx.astype(jnp.int32),
        x,
        data,
    )


def _sdd_kernel(rows_ref, cols_ref, x_ref, dy_ref, o_ref, *, tm, steps, prec):
    t = pl.program_id(0)
    bk, bn = o_ref.shape
    r, c = rows_ref[t], cols_ref[t]

    def body(s, acc):
        xb = x_ref[pl.ds(s * tm, tm), pl.ds(r * bk, bk)]
        gb = dy_ref[pl.ds(s * tm, tm), pl.ds(c * bn, bn)]
        return acc + jax.lax.dot_general(
            xb, gb, (((0,), (0,)), ((), ())), precision=prec, preferred_element_type=jnp.float32
        )

    acc = jax.lax.fori_loop(0, steps, body, jnp.zeros((bk, bn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def sdd(
    x: jax.Array,
    dy: jax.Array,
    rows: jax.Array,
    cols: jax.Array,
    block_shape: tuple[int, int],
    *,
    tm: int,
    out_dtype: Any,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: Any = False,
    precision: Any = None,
) -> jax.Array:
    """(nnz, bk, bn) blocks of x^T @ dy at (rows[t], cols[t]); one program per stored block."""
    m = x.shape[0]
    bk, bn = block_shape
    nnz = rows.shape[0]
    kernel = functools.partial(_sdd_kernel, tm=tm, steps=m // tm, prec=precision)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((nnz, bk, bn), out_dtype),
        grid=(nnz,),
        out_specs=compat.block_spec((None, bk, bn), lambda t: (t, 0, 0)),
        compiler_params=compat.triton_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="bsr_sdd_gpu",
    )(rows.astype(jnp.int32), cols.astype(jnp.int32), x, dy)
