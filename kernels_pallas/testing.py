"""Test helpers: named block-sparse cases (empty block rows/columns, dense, one block, rectangular)
and a dense jnp reference for the forward pass and both gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import BlockSparseMatrix, block_sparse_matmul, from_dense

# name -> (M, K, N, bk, bn, mask kind)
CASES = {
    "random_empty_lines": (12, 64, 96, 16, 32, "random"),
    "fully_dense": (8, 32, 32, 16, 16, "dense"),
    "one_block": (5, 48, 32, 16, 16, "one"),
    "rectangular": (16, 64, 128, 32, 16, "random"),
    # Fewer stored blocks than block rows (dW transposes only their panels), 3 in one column.
    "few_blocks_tall": (10, 128, 32, 16, 16, "few"),
    # Between one and two blocks per block row (dW contracts x's panels in place, no transpose).
    "sparse_rows": (10, 64, 64, 16, 16, "rows"),
}


def make_case(name: str, dtype=jnp.float32, seed: int = 0):
    """(x, w_bsr) for a named case; random masks have an empty block row and an empty block column."""
    m, k, n, bk, bn, kind = CASES[name]
    rng = np.random.default_rng(seed)
    grid = (k // bk, n // bn)
    if kind == "dense":
        mask = np.ones(grid, bool)
    elif kind == "few":
        mask = np.zeros(grid, bool)
        mask[[1, 4, 6], 0] = True
        mask[2, 1] = True
    elif kind == "rows":
        mask = np.zeros(grid, bool)
        mask[[0, 0, 1, 2, 3, 3], [0, 2, 2, 1, 1, 3]] = True
    elif kind == "one":
        mask = np.zeros(grid, bool)
        mask[grid[0] - 1, 0] = True
    else:
        mask = rng.random(grid) < 0.5
        mask[1] = False
        mask[:, -1] = False
        mask[0, 0] = True
    w = jnp.asarray(rng.standard_normal((k, n)), dtype)
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)
    # One explicit zero block of padding where possible, as layers with a static count have.
    nnz = int(mask.sum()) + (0 if mask.all() else 1)
    return x, from_dense(w, mask, nnz=nnz)


def _with(w: BlockSparseMatrix, data):
    return BlockSparseMatrix(data, w.indices, w.indptr, w.shape, w.block_shape)


def reference(x, w: BlockSparseMatrix):
    """Forward and (dx, d data) of sum(sin(x @ W)) in f32 through the dense matrix."""
    x32, d32 = x.astype(jnp.float32), w.data.astype(jnp.float32)

    def loss(x, d):
        y = jnp.dot(x, _with(w, d).to_dense(), precision="highest")
        return jnp.sum(jnp.sin(y)), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x32, d32)
    return y, grads


def run(x, w: BlockSparseMatrix, **kw):
    """Forward and (dx, d data) of sum(sin(x @ W)) through block_sparse_matmul."""

    def loss(x, d):
        y = block_sparse_matmul(x, _with(w, d), **kw)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

    # Jitted as a whole: one compile per case instead of one per eager primitive.
    (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x, w.data)
    return y, grads


def assert_matches(x, w, tol, **kw):
    """Check forward and both gradients of ``block_sparse_matmul(**kw)`` against the reference."""
    y_ref, (dx_ref, dw_ref) = reference(x, w)
    y, (dx, dw) = run(x, w, **kw)
    assert y.dtype == x.dtype and dx.dtype == x.dtype and dw.dtype == w.data.dtype
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        got = np.asarray(got.astype(jnp.float32))
        want = np.asarray(want)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=tol * scale, rtol=tol)
