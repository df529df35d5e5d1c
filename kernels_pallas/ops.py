"""``block_sparse_matmul``: y = x @ W for dense x and block-sparse W, with a custom VJP.

Gradients: dX = dY @ W^T runs the same grouped kernel on the column (CSC) view, reading each block
transposed in place; dW = x^T @ dY is computed only on the stored blocks (SDD). ``jax.grad`` cannot
differentiate ``pallas_call``, so the VJP is explicit for every backend.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp

from kernels_pallas import dispatch, gpu, gpu_mosaic, tpu, xla_coo, xla_path
from kernels_pallas.format import BlockSparseMatrix, blocked
from kernels_pallas.schedule import grouped_schedule

log = logging.getLogger("kernels_pallas")


def _pad_rows(a: jax.Array, tm: int) -> jax.Array:
    pad = dispatch.zero_rows(a.shape[0], tm)
    return jnp.pad(a, ((0, pad), (0, 0))) if pad else a


def grouped_product(
    impl: str,
    plan: dispatch.Plan,
    x: jax.Array,
    w: BlockSparseMatrix,
    transpose: bool,
    dense_w: jax.Array | None = None,
) -> jax.Array:
    """x @ W (transpose=False) or x @ W^T (transpose=True); ``dense_w`` reuses W's dense form."""
    out_dtype = dispatch.result_dtype(x, w.data)
    if impl == "dense":
        wd = w.to_dense() if dense_w is None else dense_w
        return jnp.dot(x, wd.T if transpose else wd, precision=plan.precision).astype(out_dtype)
    if impl == "xla":
        if plan.xla.layout in xla_path.ORDER_FREE:
            return xla_coo.coo_product(
                plan, x, w.data, w.block_rows(), w.indices, w.grid, transpose
            )
        # Grouped: blocks grouped by the panel of x they read: block rows of W for the forward
        # (CSR order), block columns for dX (the CSC view).
        if transpose:
            view = w.csc()
            args = (view.indptr, view.indices, view.perm, w.grid[0])
        else:
            args = (w.indptr, w.indices, jnp.arange(w.nnz, dtype=jnp.int32), w.grid[1])
        return xla_path.grouped_matmul(
            x, w.data, *args, transpose_blocks=transpose, out_dtype=out_dtype, config=plan.xla
        )
    # The kernels group blocks by the output block they write: columns of W for the forward (CSC
    # view), rows for dX (CSR order), so each output tile is owned by one run or one program.
    if transpose:
        ptr, in_idx, data_idx = w.indptr, w.indices, jnp.arange(w.nnz, dtype=jnp.int32)
    else:
        view = w.csc()
        ptr, in_idx, data_idx = view.indptr, view.indices, view.perm
    m = x.shape[0]
    xp = _pad_rows(x.astype(out_dtype), plan.tm)
    data = w.data.astype(out_dtype)
    common = dict(
        transpose_blocks=transpose,
        tm=plan.tm,
        out_dtype=out_dtype,
        interpret=plan.interpret,
        precision=plan.precision,
    )
    if impl == "pallas_tpu":
        sched = grouped_schedule(ptr, in_idx, data_idx)
        y = tpu.grouped_matmul(xp, data, sched, ptr.shape[0] - 1, **common)
    elif impl == "pallas_mosaic_gpu":
        # Untransposed blocks only (see gpu_mosaic): dX reads W^T's blocks, transposed once here.
        blocks = data.transpose(0, 2, 1) if transpose else data
        y = gpu_mosaic.grouped_matmul(
            xp,
            blocks,
            ptr,
            in_idx,
            data_idx,
            tm=plan.tm,
            out_dtype=out_dtype,
            interpret=plan.interpret,
        )
    elif impl == "pallas_gpu":
        y = gpu.grouped_matmul(
            xp,
            data,
            ptr,
            in_idx,
            data_idx,
            num_warps=plan.num_warps,
            num_stages=plan.num_stages,
            **common,
        )
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return y[:m]


def weight_grad(
    impl: str, plan: dispatch.Plan, x: jax.Array, dy: jax.Array, w: BlockSparseMatrix
) -> jax.Array:
    """(nnz, bk, bn) gradient of the stored blocks: blocks of x^T @ dy."""
    rows, cols = w.block_rows(), w.indices
    dtype = w.data.dtype
    if impl == "dense":
        full = jnp.dot(x.T, dy, precision=plan.precision, preferred_element_type=jnp.float32)
        kb, nb = w.grid
        flat = blocked(full, w.block_shape).reshape(kb * nb, *w.block_shape)
        return flat[rows * nb + cols].astype(dtype)
    if impl == "xla":
        if plan.xla.layout in xla_path.ORDER_FREE:
            return xla_coo.coo_weight_grad(plan, x, dy, rows, cols, w.data)
        view = w.csc()
        return xla_path.sdd(
            x,
            dy,
            view.indptr,
            view.indices,
            view.perm,
            w.block_shape,
            out_dtype=dtype,
            config=plan.xla,
        )
    xp, dyp = _pad_rows(x, plan.tm), _pad_rows(dy.astype(x.dtype), plan.tm)
    common = dict(tm=plan.tm, out_dtype=dtype, interpret=plan.interpret, precision=plan.precision)
    if impl == "pallas_tpu":
        return tpu.sdd(xp, dyp, rows, cols, w.block_shape, **common)
    if impl == "pallas_mosaic_gpu":
        xt = xp.T  # the kernel reads x^T's row panels untransposed
        return gpu_mosaic.sdd(
            xt,
            dyp,
            rows,
            cols,
            w.block_shape,
            tm=plan.tm,
            out_dtype=dtype,
            interpret=plan.interpret,
        )
    if impl == "pallas_gpu":
        return gpu.sdd(
            xp,
            dyp,
            rows,
            cols,
            w.block_shape,
            num_warps=plan.num_warps,
            num_stages=plan.num_stages,
            **common,
        )
    raise ValueError(f"unknown implementation {impl!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def bsmm(plan: dispatch.Plan, x: jax.Array, w: BlockSparseMatrix) -> jax.Array:
    """y = x @ W for 2-D x under a resolved ``plan``, with the custom VJP below."""
    return grouped_product(plan.fwd, plan, x, w, transpose=False)


def _bsmm_fwd(plan, x, w):
    # A dense plan densifies W once and keeps it for dX instead of scattering the blocks again.
    dense_w = w.to_dense() if "dense" in (plan.fwd, plan.dx) else None
    y = grouped_product(plan.fwd, plan, x, w, False, dense_w)
    return y, (x, w, dense_w if plan.dx == "dense" else None)


def _bsmm_bwd(plan, res, dy):
    x, w, dense_w = res
    dx = grouped_product(plan.dx, plan, dy, w, True, dense_w).astype(x.dtype)
    dw = weight_grad(plan.dw, plan, x, dy, w)
    return dx, BlockSparseMatrix(dw, None, None, w.shape, w.block_shape)


bsmm.defvjp(_bsmm_fwd, _bsmm_bwd)


_PROBED: dict[tuple, bool] = {}


def _probe(m: int, w_meta: tuple, dtype: Any, plan: dispatch.Plan) -> bool:
    """Compile the plan's Pallas kernels (forward and backward) once per problem; log on failure."""
    key = (m, w_meta, jnp.dtype(dtype).name, plan)
    if key not in _PROBED:
        shape, block_shape, nnz = w_meta
        kb = shape[0] // block_shape[0]
        w = BlockSparseMatrix(
            jax.ShapeDtypeStruct((nnz, *block_shape), dtype),
            jax.ShapeDtypeStruct((nnz,), jnp.int32),
            jax.ShapeDtypeStruct((kb + 1,), jnp.int32),
            shape,
            block_shape,
        )
        x = jax.ShapeDtypeStruct((m, shape[0]), dtype)

        def fwd_bwd(x, w):
            y, vjp = jax.vjp(lambda x, d: bsmm(plan, x, _with_data(w, d)), x, w.data)
            return vjp(y)

        try:
            jax.jit(fwd_bwd).lower(x, w).compile()
            _PROBED[key] = True
        except Exception as err:  # noqa: BLE001 - any failure means "fall back"
            first = str(err).splitlines()[0] if str(err) else ""
            log.warning(
                "kernels_pallas: Pallas kernel failed to compile for x%s @ W%s blocks %s nnz=%d "
                "(%s: %s); falling back to the XLA path",
                (m, shape[0]),
                shape,
                block_shape,
                nnz,
                type(err).__name__,
                first,
            )
            _PROBED[key] = False
    return _PROBED[key]


def _with_data(w: BlockSparseMatrix, data: jax.Array) -> BlockSparseMatrix:
    return BlockSparseMatrix(data, w.indices, w.indptr, w.shape, w.block_shape)


def plan_for(x2: jax.Array, w: BlockSparseMatrix, dtype: Any, kw: dict) -> dispatch.Plan:
    """Resolve the ``impl`` keywords ``kw`` for 2-D x and W (only W's static metadata is read)."""
    meta = (tuple(w.shape), tuple(w.block_shape), w.nnz)
    return dispatch.make_plan(
        x2.shape[0],
        w.shape,
        w.block_shape,
        w.nnz,
        dtype,
        probe=functools.partial(_probe, x2.shape[0], meta, jnp.dtype(dtype)),
        **kw,
    )


def block_sparse_matmul(
    x: jax.Array,
    w: BlockSparseMatrix,
    *,
    impl: str = "auto",
    interpret: Any = None,
    backend: str | None = None,
    precision: Any = None,
) -> jax.Array:
    """y = x @ W for x of shape (..., K) and a block-sparse W of shape (K, N); differentiable.

    Args:
      impl: "auto" (autotuned or modeled choice, Pallas on TPU/GPU, XLA or dense elsewhere, compile
        failures fall back with one log line), "xla", "pallas" or "dense".
      interpret: Pallas interpreter: None (interpret only on CPU), True, False, or
        ``pltpu.InterpretParams(...)`` for the TPU kernels.
      backend: Pallas kernel family, "tpu" or "gpu"; None follows the default device (TPU kernels on CPU).
      precision: passed to every dot (None = the platform default, as for ``jnp.dot``).
    """
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"x has {x.shape[-1]} features but W has shape {w.shape}")
    dtype = dispatch.result_dtype(x, w.data)
    x2 = x.reshape(-1, x.shape[-1]).astype(dtype)
    plan = plan_for(
        x2, w, dtype, dict(impl=impl, interpret=interpret, backend=backend, precision=precision)
    )
    y = bsmm(plan, x2, _with_data(w, w.data.astype(dtype)))
    return y.reshape(*x.shape[:-1], w.shape[1])
