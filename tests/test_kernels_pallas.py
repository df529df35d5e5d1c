"""Pallas kernels on CPU: both interpreters, export lowering for TPU and CUDA, and shape rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import BlockSparseMatrix, block_sparse_matmul, compat, from_dense
from kernels_pallas.testing import CASES, assert_matches, make_case

pytestmark = pytest.mark.xdist_group("kernels_pallas")

InterpretParams = compat.interpret_params_class()
needs_interpret_params = pytest.mark.skipif(
    InterpretParams is None, reason="this jax has no pltpu.InterpretParams"
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tpu_kernel_interpret_true(case):
    x, w = make_case(case)
    assert_matches(x, w, 1e-5, impl="pallas", backend="tpu", interpret=True)


@needs_interpret_params
@pytest.mark.parametrize("case", sorted(CASES))
def test_tpu_kernel_interpret_params(case):
    # The TPU interpreter raises on non-consecutive revisits of an output block and poisons
    # uninitialized memory with NaN, so this also checks the schedule visits every block once.
    x, w = make_case(case)
    assert_matches(x, w, 1e-5, impl="pallas", backend="tpu", interpret=InterpretParams())


@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_kernel_interpret(case):
    x, w = make_case(case)
    assert_matches(x, w, 1e-5, impl="pallas", backend="gpu", interpret=True)


@pytest.mark.parametrize(
    "backend,interpreter", [("tpu", "true"), ("tpu", "params"), ("gpu", "true")]
)
def test_bf16_kernels_interpret(backend, interpreter):
    if interpreter == "params" and InterpretParams is None:
        pytest.skip("this jax has no pltpu.InterpretParams")
    interpret = True if interpreter == "true" else InterpretParams()
    x, w = make_case("random_empty_lines", jnp.bfloat16)
    assert_matches(x, w, 3e-2, impl="pallas", backend=backend, interpret=interpret)


def _export_problem(block=128, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    mask = np.array([[True, False, False], [False, False, False], [True, True, False]])
    w = from_dense(jnp.asarray(rng.standard_normal((3 * block, 3 * block)), dtype), mask, nnz=4)
    x = jnp.asarray(rng.standard_normal((64, 3 * block)), dtype)
    return x, w


def _fwd_bwd(backend):
    def f(x, w):
        def g(x, d):
            return block_sparse_matmul(
                x,
                BlockSparseMatrix(d, w.indices, w.indptr, w.shape, w.block_shape),
                impl="pallas",
                backend=backend,
                interpret=False,
            )

        y, vjp = jax.vjp(g, x, w.data)
        return y, vjp(y)

    return jax.jit(f)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_export_lowers_tpu_kernels(dtype):
    x, w = _export_problem(dtype=dtype)
    exported = jax.export.export(_fwd_bwd("tpu"), platforms=["tpu"])(x, w)
    text = exported.mlir_module()
    assert text.count(compat.TPU_CUSTOM_CALL_TARGET) == 3  # forward, dX, dW


def test_export_lowers_cuda_kernels():
    x, w = _export_problem(block=64)
    checks = [
        jax.export.DisabledSafetyCheck.custom_call(t) for t in compat.TRITON_CUSTOM_CALL_TARGETS
    ]
    exported = jax.export.export(_fwd_bwd("gpu"), platforms=["cuda"], disabled_checks=checks)(x, w)
    text = exported.mlir_module()
    assert sum(text.count(t) for t in compat.TRITON_CUSTOM_CALL_TARGETS) == 3


@pytest.mark.parametrize(
    "backend,block,platform,match",
    [("tpu", 64, "tpu", "multiples of \\(128, 128\\)"), ("gpu", 24, "cuda", "powers of two >= 16")],
)
def test_illegal_block_shape_rejected(backend, block, platform, match):
    x, w = _export_problem(block=block)
    with pytest.raises(ValueError, match=match):
        jax.export.export(_fwd_bwd(backend), platforms=[platform])(x, w)


# Mosaic GPU (Hopper WGMMA) kernels: numerics in the GPU interpreter, lowering through jax.export.
needs_mosaic_interpreter = pytest.mark.skipif(
    compat.mosaic_gpu_interpret_params() is None, reason="this jax has no Mosaic GPU interpreter"
)


def _mosaic_case(dtype, m=72):
    """64-blocks with an empty block row, an empty block column and one explicit zero block."""
    rng = np.random.default_rng(2)
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], bool)
    w = from_dense(jnp.asarray(rng.standard_normal((192, 256)), dtype), mask, nnz=5)
    return jnp.asarray(rng.standard_normal((m, 192)), dtype), w


@needs_mosaic_interpreter
@pytest.mark.parametrize("dtype,tol", [(jnp.bfloat16, 3e-2), (jnp.float16, 1e-2)])
def test_mosaic_gpu_kernels_interpret(dtype, tol):
    # M = 72 is not a multiple of the 64-row tile: the padded rows must not leak into dW.
    x, w = _mosaic_case(dtype)
    assert_matches(x, w, tol, impl="pallas", backend="mosaic_gpu")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_export_lowers_mosaic_gpu_kernels(dtype):
    x, w = _mosaic_case(dtype, m=128)
    exported = jax.export.export(_fwd_bwd("mosaic_gpu"), platforms=["cuda"])(x, w)
    text = exported.mlir_module()
    assert sum(text.count(t) for t in compat.MOSAIC_GPU_CUSTOM_CALL_TARGETS[:1]) == 3


@pytest.mark.parametrize(
    "dtype,block,match",
    [(jnp.float32, 64, "dtype float32 is not supported"), (jnp.bfloat16, 32, "multiples of 64")],
)
def test_mosaic_gpu_rejects_what_wgmma_cannot_take(dtype, block, match):
    x, w = _export_problem(block=block, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        jax.export.export(_fwd_bwd("mosaic_gpu"), platforms=["cuda"])(x, w)
