"""block_sparse_matmul through the XLA and dense paths (and auto) against a dense reference."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import (
    BlockSparseMatrix,
    block_sparse_matmul,
    dispatch,
    masked_kernel_matmul,
    ops,
    xla_path,
)
from kernels_pallas.format import from_positions
from kernels_pallas.testing import CASES, assert_matches, make_case

pytestmark = pytest.mark.xdist_group("kernels_ops")


@pytest.mark.parametrize("impl", ["xla", "dense"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_f32_matches_reference(case, impl):
    x, w = make_case(case)
    assert_matches(x, w, 1e-5, impl=impl)


@pytest.mark.parametrize("layout", xla_path.LAYOUTS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_xla_layouts_match_reference(case, layout, monkeypatch):
    """Every XLA layout on every case, whichever ``default_layout`` would pick for it."""
    monkeypatch.setattr(xla_path, "default_layout", lambda *_: layout)
    x, w = make_case(case)
    assert_matches(x, w, 1e-5, impl="xla")


def test_default_layout_rule():
    rule = xla_path.default_layout
    assert rule(4, (3, 12), 1568) == "batched"  # ViT fc1 at 90% of 128-blocks
    assert rule(26, (16, 16), 256) == "blockwise"  # the 2048-wide MLP at 90%, batch 256
    assert rule(26, (16, 16), 2048) == "grouped"  # 2048^3 at 90%
    assert rule(128, (16, 16), 256) == "grouped"  # 2048^2 at 50%
    assert rule(18, (3, 12), 1568) == "grouped"  # ViT fc1 at 50%


def test_auto_matches_reference():
    x, w = make_case("random_empty_lines")
    assert_matches(x, w, 1e-5, impl="auto")


@pytest.mark.parametrize("impl", ["xla", "dense"])
def test_bf16_matches_reference(impl):
    x, w = make_case("random_empty_lines", jnp.bfloat16)
    assert_matches(x, w, 3e-2, impl=impl)


def test_batched_leading_dims_and_errors():
    x, w = make_case("rectangular")
    x3 = x.reshape(2, 8, x.shape[-1])
    y = block_sparse_matmul(x3, w, impl="xla")
    assert y.shape == (2, 8, w.shape[1])
    np.testing.assert_allclose(
        np.asarray(y.reshape(16, -1)), np.asarray(x @ w.to_dense()), atol=1e-4
    )
    with pytest.raises(ValueError, match="features"):
        block_sparse_matmul(x[:, :-1], w)
    with pytest.raises(ValueError, match="impl must be one of"):
        block_sparse_matmul(x, w, impl="fast")


@pytest.mark.parametrize("impl", ["xla", "dense"])
@pytest.mark.parametrize("dense_weight_grad", [False, True])
def test_masked_kernel_matmul_gradients(dense_weight_grad, impl):
    rng = np.random.default_rng(3)
    kernel = jnp.asarray(rng.standard_normal((64, 96)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((6, 64)), jnp.float32)
    positions = jnp.array([0, 4, 5, 10], jnp.int32)  # grid (4, 3)
    bs = (16, 32)

    def loss(k, x):
        y = masked_kernel_matmul(
            x, k, positions, bs, dense_weight_grad=dense_weight_grad, impl=impl
        )
        return jnp.sum(jnp.sin(y))

    def loss_ref(k, x):
        return jnp.sum(jnp.sin(x @ from_positions(k, positions, bs).to_dense()))

    gk, gx = jax.jit(jax.grad(loss, (0, 1)))(kernel, x)
    gk_ref, gx_ref = jax.jit(jax.grad(loss_ref, (0, 1)))(kernel, x)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(gx_ref), atol=1e-4)
    if dense_weight_grad:
        # dL/d(W restricted) everywhere: the dense x^T dY, nonzero outside the stored blocks too.
        dy = jnp.cos(x @ from_positions(kernel, positions, bs).to_dense())
        np.testing.assert_allclose(np.asarray(gk), np.asarray(x.T @ dy), atol=1e-4)
    else:
        np.testing.assert_allclose(np.asarray(gk), np.asarray(gk_ref), atol=1e-4)


def test_auto_crossover_on_cpu():
    """Dense wins at high density, the XLA path at low density (tests/test_kernels_dispatch.py has
    the cost model's properties). A tiny batch does not force dense: the fallback must densify the
    whole weight, more work than a few blocks of four rows."""
    big = dict(shape=(2048, 2048), block_shape=(128, 128), dtype=jnp.float32)
    assert dispatch.make_plan(2048, nnz=26, **big).fwd == "xla"
    assert dispatch.make_plan(2048, nnz=230, **big).fwd == "dense"
    assert dispatch.make_plan(4, nnz=230, **big).fwd == "dense"


def test_auto_falls_back_with_one_log_line(monkeypatch, caplog):
    """A Pallas compile failure under impl="auto" logs once and runs the XLA path instead."""
    rng = np.random.default_rng(4)
    mask = np.zeros((2, 3), bool)
    mask[0, 1] = mask[1, 2] = True
    w_dense = jnp.asarray(rng.standard_normal((256, 384)), jnp.float32)
    from kernels_pallas import from_dense

    w = from_dense(w_dense, mask)
    x = jnp.asarray(rng.standard_normal((8, 256)), jnp.float32)
    # Pretend to be on a TPU: the probe then compiles the real Mosaic kernel on the CPU backend, which
    # fails ("Only interpret mode is supported on CPU"), a genuine compile error.
    monkeypatch.setattr(dispatch, "platform", lambda: "tpu")
    monkeypatch.setattr(ops, "_PROBED", {})
    with caplog.at_level(logging.WARNING, logger="kernels_pallas"):
        y = block_sparse_matmul(x, w, impl="auto")
        y2 = block_sparse_matmul(x, w, impl="auto")  # cached: no second log line
    records = [r for r in caplog.records if r.name == "kernels_pallas"]
    assert len(records) == 1 and "falling back to the XLA path" in records[0].getMessage()
    np.testing.assert_allclose(np.asarray(y), np.asarray(x @ w.to_dense()), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))
    assert isinstance(w, BlockSparseMatrix)
