"""GPU kernels through Pallas's Mosaic GPU lowering (Hopper: TMA copies and WGMMA), 16-bit inputs.

The grouped product is one program per (row tile, output block column), like the Triton kernel: it
loops over its group's blocks (bounds read from the index tables), copies one ``(tm, b)`` panel and one
block into shared memory per step (two TMA copies on one barrier) and accumulates with a WGMMA into
an f32 register accumulator, then stores the tile once (zeros for an empty group). SDD (dW) is one
program per stored block looping over row tiles. Both kernels take their operands untransposed:
dX passes the blocks transposed and dW passes x^T, each transposed once by XLA, because the GPU
interpreter (``compat.mosaic_gpu_interpret_params``, what tests on CPU use) has no transposed
shared-memory operands; lowering (``jax.export`` for ``cuda``) needs no GPU either.

Not timed on hardware yet: ``backend="mosaic_gpu"`` selects it explicitly; ``auto`` on a GPU keeps the
Triton kernels until ``benchmarks/device_suite.sh`` has measured both.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels_pallas import compat

TM = 64  # one warpgroup's WGMMA row tile
DTYPES = ("bfloat16", "float16")
_SMEM_BYTES = 200 * 1024  # of the 227 KiB an H100 block may use


def check_mosaic_gpu_shapes(block_shape: tuple[int, int], tm: int, dtype: Any) -> None:
    """Raise ValueError unless the WGMMA kernels can take these tiles and this dtype."""
    bk, bn = block_shape
    name = jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(
            f"Mosaic GPU Pallas kernel: dtype {name} is not supported (allowed: {', '.join(DTYPES)}); "
            "use backend='gpu' (Triton) or impl='xla'"
        )
    if bk % 64 or bn % 64 or tm % 64:
        raise ValueError(
            f"Mosaic GPU Pallas kernel: block shape {block_shape} and row tile {tm} must be "
            "multiples of 64 (WGMMA tiles); use backend='gpu' (Triton) or impl='xla'"
        )
    itemsize = jnp.dtype(dtype).itemsize
    smem = itemsize * (tm * max(bk, bn) + bk * bn + tm * max(bk, bn))
    if smem > _SMEM_BYTES:
        raise ValueError(
            f"Mosaic GPU Pallas kernel: block shape {block_shape} with row tile {tm} needs {smem} B "
            f"of shared memory (at most {_SMEM_BYTES}); use smaller blocks"
        )


def _transforms(minor: int, dtype: Any) -> tuple:
    plgpu = compat.mosaic_gpu()
    swizzle = plgpu.find_swizzle(minor * jnp.dtype(dtype).itemsize * 8)
    elems = swizzle // jnp.dtype(dtype).itemsize
    return (plgpu.TilingTransform((8, elems)), plgpu.SwizzleTransform(swizzle))


def _store(acc: jax.Array, o_smem, o_gmem_tile) -> None:
    plgpu = compat.mosaic_gpu()
    o_smem[...] = acc.astype(o_smem.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_gmem_tile)
    plgpu.wait_smem_to_gmem(0)


def grouped_matmul(
    x: jax.Array,
    data: jax.Array,
    group_ptr: jax.Array,
    in_idx: jax.Array,
    data_idx: jax.Array,
    *,
    tm: int,
    out_dtype: Any,
    interpret: Any = False,
) -> jax.Array:
    """y[:, g] = sum over positions t of group g of x[:, in_idx[t]] @ data[data_idx[t]].

    ``x`` is (m, K) with m a multiple of ``tm``; blocks are used as stored (pass them transposed for
    dX). ``interpret``: False, or the GPU interpreter's params (``compat.mosaic_gpu_interpret``).
    """
    plgpu = compat.mosaic_gpu()
    m = x.shape[0]
    _, b_in, b_out = data.shape
    num_groups = group_ptr.shape[0] - 1

    def body(ptr_ref, in_ref, d_ref, x_gmem, w_gmem, o_gmem):
        i, g = jax.lax.axis_index("m"), jax.lax.axis_index("g")

        def scope(x_smem, w_smem, o_smem, barrier):
            def accumulate(acc_ref):
                def step(t, carry):
                    panel = x_gmem.at[pl.ds(i * tm, tm), pl.ds(in_ref[t] * b_in, b_in)]
                    plgpu.copy_gmem_to_smem(panel, x_smem, barrier)
                    plgpu.copy_gmem_to_smem(w_gmem.at[d_ref[t]], w_smem, barrier)
                    plgpu.barrier_wait(barrier)
                    plgpu.wgmma(acc_ref, x_smem, w_smem)
                    plgpu.wgmma_wait(0)
                    return carry

                jax.lax.fori_loop(ptr_ref[g], ptr_ref[g + 1], step, None)
                return acc_ref[...]

            acc = pl.run_scoped(accumulate, plgpu.ACC((tm, b_out), jnp.float32))
            _store(acc, o_smem, o_gmem.at[pl.ds(i * tm, tm), pl.ds(g * b_out, b_out)])

        pl.run_scoped(
            scope,
            plgpu.SMEM((tm, b_in), x.dtype, transforms=_transforms(b_in, x.dtype)),
            plgpu.SMEM((b_in, b_out), data.dtype, transforms=_transforms(b_out, data.dtype)),
            plgpu.SMEM((tm, b_out), out_dtype, transforms=_transforms(b_out, out_dtype)),
            plgpu.Barrier(num_arrivals=2),
        )

    kernel = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((m, num_groups * b_out), out_dtype),
        grid=(m // tm, num_groups),
        grid_names=("m", "g"),
        interpret=interpret,
    )
    tables = (t.astype(jnp.int32) for t in (group_ptr, in_idx, data_idx))
    return kernel(*tables, x, data)


def sdd(
    xt: jax.Array,
    dy: jax.Array,
    rows: jax.Array,
    cols: jax.Array,
    block_shape: tuple[int, int],
    *,
    tm: int,
    out_dtype: Any,
    interpret: Any = False,
) -> jax.Array:
    """(nnz, bk, bn) blocks of x^T @ dy at (rows[t], cols[t]), from ``xt = x^T`` (K, m)."""
    plgpu = compat.mosaic_gpu()
    bk, bn = block_shape
    m, nnz = xt.shape[1], rows.shape[0]

    def body(rows_ref, cols_ref, xt_gmem, dy_gmem, o_gmem):
        t = jax.lax.axis_index("t")
        r, c = rows_ref[t], cols_ref[t]

        def scope(x_smem, g_smem, o_smem, barrier):
            def accumulate(acc_ref):
                def step(s, carry):
                    panel = xt_gmem.at[pl.ds(r * bk, bk), pl.ds(s * tm, tm)]
                    plgpu.copy_gmem_to_smem(panel, x_smem, barrier)
                    plgpu.copy_gmem_to_smem(
                        dy_gmem.at[pl.ds(s * tm, tm), pl.ds(c * bn, bn)], g_smem, barrier
                    )
                    plgpu.barrier_wait(barrier)
                    plgpu.wgmma(acc_ref, x_smem, g_smem)
                    plgpu.wgmma_wait(0)
                    return carry

                jax.lax.fori_loop(0, m // tm, step, None)
                return acc_ref[...]

            acc = pl.run_scoped(accumulate, plgpu.ACC((bk, bn), jnp.float32))
            _store(acc, o_smem, o_gmem.at[t])

        pl.run_scoped(
            scope,
            plgpu.SMEM((bk, tm), xt.dtype, transforms=_transforms(tm, xt.dtype)),
            plgpu.SMEM((tm, bn), dy.dtype, transforms=_transforms(bn, dy.dtype)),
            plgpu.SMEM((bk, bn), out_dtype, transforms=_transforms(bn, out_dtype)),
            plgpu.Barrier(num_arrivals=2),
        )

    kernel = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((nnz, bk, bn), out_dtype),
        grid=(nnz,),
        grid_names=("t",),
        interpret=interpret,
    )
    return kernel(rows.astype(jnp.int32), cols.astype(jnp.int32), xt, dy)
