"""Mosaic TPU kernels: grouped block-sparse matmul (forward and dX) and SDD (dW on stored blocks).

Block tables are scalar-prefetched into SMEM (``PrefetchScalarGridSpec``) and read by the index maps, so
the pipeline DMAs exactly the blocks a work item needs; the grid has a static length, so topology changes
reuse the compiled kernel.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels_pallas import compat
from kernels_pallas.schedule import FIRST, LAST, VALID, GroupedSchedule

LANE = 128


def sublane(dtype: Any) -> int:
    """Second-minor tiling of ``dtype`` on TPU (8 rows of 32-bit, 16 of 16-bit, 32 of 8-bit)."""
    return 8 * max(1, 4 // jnp.dtype(dtype).itemsize)


def check_tpu_shapes(block_shape: tuple[int, int], tm: int, dtype: Any) -> None:
    """Raise ValueError unless the blocks tile TPU vregs: bk and bn multiples of 128, tm of the sublane."""
    bk, bn = block_shape
    sub = sublane(dtype)
    if bk % LANE or bn % LANE or tm % sub:
        raise ValueError(
            f"TPU Pallas kernel: block shape {block_shape} must be multiples of ({LANE}, {LANE}) and the "
            f"row tile {tm} a multiple of {sub} for {jnp.dtype(dtype).name}; use impl='xla' or "
            f"a block size of 128/256"
        )


def _grouped_kernel(
    in_ref, data_ref, out_ref, flags_ref, x_ref, w_ref, o_ref, acc_ref, *, nt, prec
):
    del in_ref, data_ref, out_ref  # only the index maps read these
    flags = flags_ref[pl.program_id(1)]

    @pl.when((flags & FIRST) != 0)
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when((flags & VALID) != 0)
    def _accumulate():
        contract = ((1,), (1,)) if nt else ((1,), (0,))
        acc_ref[...] += jax.lax.dot_general(
            x_ref[...],
            w_ref[...],
            (contract, ((), ())),
            precision=prec,
            preferred_element_type=jnp.float32,
        )

    @pl.when((flags & LAST) != 0)
    def _store():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def grouped_matmul(
    x: jax.Array,
    data: jax.Array,
    sched: GroupedSchedule,
    num_groups: int,
    *,
    transpose_blocks: bool,
    tm: int,
    out_dtype: Any,
    interpret: Any = False,
    precision: Any = None,
) -> jax.Array:
    """y[:, g] = sum over group g's items of x[:, in] @ op(data[d]); x rows must be a multiple of tm."""
    m = x.shape[0]
    _, bk, bn = data.shape
    b_in, b_out = (bn, bk) if transpose_blocks else (bk, bn)
    num_items = sched.flags.shape[0]
    in_specs = [
        compat.block_spec((tm, b_in), lambda i, w, ib, db, ob, fl: (i, ib[w])),
        compat.block_spec((None, bk, bn), lambda i, w, ib, db, ob, fl: (db[w], 0, 0)),
    ]
    out_spec = compat.block_spec((tm, b_out), lambda i, w, ib, db, ob, fl: (i, ob[w]))
    grid_spec = compat.prefetch_grid_spec(
        4, (m // tm, num_items), in_specs, out_spec, [compat.vmem((tm, b_out), jnp.float32)]
    )
    kernel = functools.partial(_grouped_kernel, nt=transpose_blocks, prec=precision)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((m, num_groups * b_out), out_dtype),
        grid_spec=grid_spec,
        compiler_params=compat.tpu_compiler_params(("parallel", "arbitrary")),
        interpret=interpret,
        name="bsr_grouped_matmul_tpu",
    )(sched.in_blk, sched.data_blk, sched.out_blk, sched.flags, x, data)


def _sdd_kernel(rows_ref, cols_ref, x_ref, dy_ref, o_ref, acc_ref, *, prec):
    del rows_ref, cols_ref
    step = pl.program_id(1)

    @pl.when(step == 0)
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    acc_ref[...] += jax.lax.dot_general(
        x_ref[...],
        dy_ref[...],
        (((0,), (0,)), ((), ())),
        precision=prec,
        preferred_element_type=jnp.float32,
    )

    @pl.when(step == pl.num_programs(1) - 1)
    def _store():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def sdd(
    x: jax.Array,
    dy: jax.Array,
    rows: jax.Array,
    cols: jax.Array,
    block_shape: tuple[int, int],
    *,
    tm: int,
    out_dtype: Any,
    interpret: Any = False,
    precision: Any = None,
) -> jax.Array:
    """(nnz, bk, bn) blocks of x^T @ dy at (rows[t], cols[t]), reducing over row tiles of size tm."""
    m = x.shape[0]
    bk, bn = block_shape
    nnz = rows.shape[0]
    in_specs = [
        compat.block_spec((tm, bk), lambda t, i, r, c: (i, r[t])),
        compat.block_spec((tm, bn), lambda t, i, r, c: (i, c[t])),
    ]
    out_spec = compat.block_spec((None, bk, bn), lambda t, i, r, c: (t, 0, 0))
    grid_spec = compat.prefetch_grid_spec(
        2, (nnz, m // tm), in_specs, out_spec, [compat.vmem((bk, bn), jnp.float32)]
    )
    return pl.pallas_call(
        functools.partial(_sdd_kernel, prec=precision),
        out_shape=jax.ShapeDtypeStruct((nnz, bk, bn), out_dtype),
        grid_spec=grid_spec,
        compiler_params=compat.tpu_compiler_params(("parallel", "arbitrary")),
        interpret=interpret,
        name="bsr_sdd_tpu",
    )(rows.astype(jnp.int32), cols.astype(jnp.int32), x, dy)
