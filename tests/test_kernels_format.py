"""Block-sparse format: conversions, the CSC view, validation, and no recompiles on topology changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import (
    BlockSparseMatrix,
    block_mask_from_dense,
    block_mask_from_elements,
    block_mask_of,
    block_norms,
    block_sparse_matmul,
    drop_grow_blocks,
    expand_block_mask,
    from_dense,
    top_block_positions,
    topk_block_mask,
)

pytestmark = pytest.mark.xdist_group("kernels_format")


def _mask_with_empty_lines(rng, grid, p=0.5):
    mask = rng.random(grid) < p
    mask[0] = False  # empty block row
    mask[:, -1] = False  # empty block column
    mask[-1, 0] = True
    return mask


def test_roundtrip_and_csc_view():
    rng = np.random.default_rng(0)
    grid, bs = (5, 4), (8, 16)
    mask = _mask_with_empty_lines(rng, grid)
    w = rng.standard_normal((40, 64)).astype(np.float32)
    bsr = from_dense(w, mask)
    assert bsr.nnz == mask.sum() and bsr.block_shape == bs and bsr.shape == (40, 64)
    dense = np.asarray(bsr.to_dense())
    np.testing.assert_array_equal(dense, w * np.asarray(expand_block_mask(mask, bs)))
    np.testing.assert_array_equal(np.asarray(block_mask_of(bsr)), mask)
    # CSC view: column order, pointing into the CSR data without copying it.
    view = bsr.csc()
    rows, cols = np.nonzero(mask.T)  # column-major order: (col, row) pairs
    np.testing.assert_array_equal(np.asarray(view.indices), cols)
    np.testing.assert_array_equal(np.asarray(view.indptr), np.r_[0, np.cumsum(mask.sum(0))])
    for i, (c, r) in enumerate(zip(rows, cols, strict=True)):
        blk = np.asarray(bsr.data[view.perm[i]])
        np.testing.assert_array_equal(blk, w[r * 8 : (r + 1) * 8, c * 16 : (c + 1) * 16])
    np.testing.assert_array_equal(np.asarray(bsr.T.to_dense()), dense.T)


def test_padding_limits_and_validation():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    bsr = from_dense(w, mask, nnz=5)  # 4 explicit zero blocks pad the static count
    assert bsr.nnz == 5
    np.testing.assert_array_equal(np.asarray(bsr.to_dense()), w * np.kron(mask, np.ones((8, 8))))
    with pytest.raises(ValueError, match="has 1 blocks but nnz=0"):
        from_dense(w, mask, nnz=0)
    with pytest.raises(ValueError, match="divide"):
        from_dense(w, block_shape=(5, 8))
    with pytest.raises(ValueError, match="static nnz"):
        jax.jit(lambda w, m: from_dense(w, m).data)(w, mask)
    # Under jit with a static nnz, and inferring the mask from nonzeros.
    got = jax.jit(lambda w, m: from_dense(w, m, nnz=3).to_dense())(w, mask)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(bsr.to_dense()))
    auto = from_dense(np.asarray(bsr.to_dense()), block_shape=(8, 8))
    assert auto.nnz == 1 and int(auto.indices[0]) == 2


def test_block_helpers():
    w = jnp.zeros((16, 24)).at[0:8, 8:16].set(2.0).at[8:16, 16:24].set(-1.0)
    norms = block_norms(w, 8)
    assert norms.shape == (2, 3) and float(norms[0, 1]) == pytest.approx(16.0)
    np.testing.assert_array_equal(
        np.asarray(block_mask_from_dense(w, 8)), [[False, True, False], [False, False, True]]
    )
    elems = jnp.zeros((16, 24), bool).at[0, 0].set(True)
    assert bool(block_mask_from_elements(elems, 8)[0, 0]) and not bool(
        block_mask_from_elements(elems, 8, "all")[0, 0]
    )
    np.testing.assert_array_equal(np.asarray(top_block_positions(w, 8, 2)), [1, 5])
    top = topk_block_mask(jnp.array([[3.0, 1.0], [2.0, 5.0]]), jnp.int32(2))
    np.testing.assert_array_equal(np.asarray(top), [[True, False], [False, True]])
    mask = jnp.array([[True, True, False], [False, False, True]])
    new = drop_grow_blocks(mask, norms, jnp.array([[0.0, 0.0, 9.0], [1.0, 0.0, 0.0]]), 1)
    assert int(new.sum()) == 3 and bool(new[0, 2]) and not bool(new[0, 0])


def test_topology_change_does_not_recompile():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    x = rng.standard_normal((8, 64)).astype(np.float32)

    @jax.jit
    def step(x, w_bsr):
        loss = lambda x, d: jnp.sum(  # noqa: E731
            block_sparse_matmul(
                x,
                BlockSparseMatrix(d, w_bsr.indices, w_bsr.indptr, w_bsr.shape, w_bsr.block_shape),
                impl="xla",
            )
            ** 2
        )
        return jax.grad(loss, (0, 1))(x, w_bsr.data)

    results = []
    for seed in range(3):
        m = np.zeros(16, bool)
        m[np.random.default_rng(seed).choice(16, 5, replace=False)] = True
        results.append(step(x, from_dense(w, m.reshape(4, 4), nnz=5)))
    assert step._cache_size() == 1
    assert not np.allclose(np.asarray(results[0][0]), np.asarray(results[1][0]))
