"""Static choice of the implementation for each of the three products (forward, dX, dW).

``impl="auto"`` picks, per product: an autotuned entry if the cache has one for this exact problem;
else dense when the block density is too high for sparsity to pay (a cost model calibrated on the
measured crossover); else the Pallas kernel on TPU/GPU when the block shapes suit it and it compiles
(probed once per problem; a failure logs one line and falls back); else the XLA path.
An explicit ``impl`` is obeyed and its errors propagate.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from kernels_pallas import autotune_cache, gpu, tpu
from kernels_pallas.xla_path import XlaConfig

log = logging.getLogger("kernels_pallas")

IMPLS = ("auto", "xla", "pallas", "dense")

# CPU cost model of the XLA path against jnp.dot, fitted to a sweep on the 2-core Xeon of
# docs/kernels.md (M in {128, 512, 2048}, K = N = 2048, blocks 32/64/128, densities 5-50%).
# One stored block costs STEP_S plus, per row of x, a GEMM part (2 bk bn flops at SMALL_GEMM_FLOPS)
# and a memory part (panel slice and output update; strided rows of short blocks are slow), inflated
# when blocks per panel r is small (chunks are then narrow): (1 + CHUNK_R / r).
_STEP_S = 5e-6
_SMALL_GEMM_FLOPS = 140e9
_MEM_S_PER_ELEM_32 = 2.7e-9  # per row per block column at b = 32, scaling as (32 / b) ** 1.5
_CHUNK_R = 0.8
_FIXED_S_PER_OUT = 0.5e-9  # zero-init and write of the (M, N) f32 accumulator
_DENSE_FLOPS = {128: 165e9}  # jnp.dot rate for small M (rows); 200e9 otherwise
_SDD_FACTOR = {16: 0.65, 32: 0.65, 64: 1.35}  # dW loop vs grouped loop; 1.1 for larger blocks
# Sparse must be modeled >= 15% faster than dense: keeps auto within 10% of dense near the crossover.
MARGIN = 0.85
# Pallas on accelerators: not timed on hardware here, so stay conservative until autotuned.
_ACCEL_MAX_DENSITY = 0.5


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static per-call choices (hashable: it is a nondiff argument of the custom VJP)."""

    fwd: str  # one of "xla", "dense", "pallas_tpu", "pallas_gpu"
    dx: str
    dw: str
    interpret: Any = False
    tm: int = 128
    num_warps: int = 4
    num_stages: int = 2
    xla: XlaConfig = XlaConfig()
    precision: Any = None


def platform() -> str:
    """The default backend's platform: "cpu", "gpu" or "tpu"."""
    return jax.default_backend()


def pallas_family(backend: str | None) -> str:
    """Which kernel family to build: explicit ``backend`` or the platform's (TPU kernels on CPU)."""
    if backend is not None:
        if backend not in ("tpu", "gpu"):
            raise ValueError(f"backend must be 'tpu' or 'gpu', got {backend!r}")
        return backend
    return "gpu" if platform() == "gpu" else "tpu"


def default_tm(family: str, m: int, dtype: Any) -> int:
    """Row tile: 128 (rounded down for small M, to a power of two on GPU, a sublane multiple on TPU)."""
    if family == "gpu":
        return max(16, min(128, 1 << max(m - 1, 1).bit_length()))
    sub = tpu.sublane(dtype)
    return min(128 if m >= 128 else -(-m // sub) * sub, 256)


def check_shapes(family: str, block_shape: tuple[int, int], tm: int, dtype: Any) -> None:
    """Raise a clear ValueError if the Pallas kernel of ``family`` cannot take these tiles."""
    if family == "gpu":
        gpu.check_gpu_shapes(block_shape, tm)
    else:
        tpu.check_tpu_shapes(block_shape, tm, dtype)


def cpu_model_seconds(
    m: int, k: int, n: int, block_shape: tuple[int, int], nnz: int, sdd: bool = False
) -> tuple[float, float]:
    """(modeled XLA-path seconds, modeled jnp.dot seconds) of one product on the CPU."""
    bk, bn = block_shape
    b = (bk + bn) / 2
    per_row = 2.0 * bk * bn / _SMALL_GEMM_FLOPS + _MEM_S_PER_ELEM_32 * (32 / b) ** 1.5 * b
    blocks_per_panel = nnz / max(k // bk, 1)
    per_row *= 1.0 + _CHUNK_R / max(blocks_per_panel, 1e-3)
    factor = _SDD_FACTOR.get(min(bk, bn), 1.1) if sdd else 1.0
    sparse = nnz * (_STEP_S + m * per_row) * factor + m * n * _FIXED_S_PER_OUT + 2e-4
    dense = 2.0 * m * k * n / _DENSE_FLOPS.get(128 if m < 256 else 0, 200e9) + 1e-5
    return sparse, dense


def _cpu_prefers_sparse(m: int, k: int, n: int, block_shape, nnz: int, sdd: bool) -> bool:
    sparse, dense = cpu_model_seconds(m, k, n, block_shape, nnz, sdd)
    return sparse < MARGIN * dense


def _auto_choice(op: str, m: int, k: int, n: int, block_shape, nnz: int, family: str) -> str:
    kb, nb = k // block_shape[0], n // block_shape[1]
    density = nnz / (kb * nb)
    where = platform()
    if where in ("tpu", "gpu"):
        return f"pallas_{family}" if density <= _ACCEL_MAX_DENSITY else "dense"
    if op == "dx":  # dY (m, N) @ W^T: panels are W's block columns
        k, n, block_shape = n, k, block_shape[::-1]
    return "xla" if _cpu_prefers_sparse(m, k, n, block_shape, nnz, op == "dw") else "dense"


def make_plan(
    m: int,
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    nnz: int,
    dtype: Any,
    *,
    impl: str = "auto",
    interpret: Any = None,
    backend: str | None = None,
    precision: Any = None,
    probe: Callable[[Plan], bool] | None = None,
) -> Plan:
    """Resolve ``impl`` into a ``Plan`` for an (m, K) @ (K, N) product with ``nnz`` stored blocks.

    ``probe(plan) -> bool`` compiles the Pallas plan (supplied by ``ops``); auto falls back to XLA when
    it returns False.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    family = pallas_family(backend)
    k, n = shape
    on_cpu = platform() == "cpu"
    if interpret is None:
        interpret = on_cpu  # Pallas only runs interpreted on CPU
    tm = default_tm(family, m, dtype)
    base = dict(interpret=interpret, tm=tm, precision=precision)
    if impl in ("xla", "dense"):
        return Plan(impl, impl, impl, **base)
    if impl == "pallas":
        if interpret is False:
            check_shapes(family, block_shape, tm, dtype)
        p = f"pallas_{family}"
        return Plan(p, p, p, **base)
    tuned = autotune_cache.lookup(m, shape, block_shape, nnz, dtype)
    if tuned is not None:
        return dataclasses.replace(
            Plan(tuned["fwd"], tuned["dx"], tuned["dw"], **base),
            tm=tuned.get("tm", tm),
            num_warps=tuned.get("num_warps", 4),
            num_stages=tuned.get("num_stages", 2),
            xla=XlaConfig(tuned.get("max_chunk", 8), tuned.get("batch", 1)),
        )
    choice = {op: _auto_choice(op, m, k, n, block_shape, nnz, family) for op in ("fwd", "dx", "dw")}
    plan = Plan(choice["fwd"], choice["dx"], choice["dw"], **base)
    if any(c.startswith("pallas") for c in choice.values()):
        try:
            check_shapes(family, block_shape, tm, dtype)
            ok = probe is None or probe(plan)
        except ValueError as err:
            log.info("kernels_pallas: %s; auto uses the XLA path", err)
            ok = False
        if not ok:
            plan = Plan(
                *(("xla" if c.startswith("pallas") else c) for c in choice.values()), **base
            )
    return plan


def zero_rows(m: int, tm: int) -> int:
    """Rows to pad so that m becomes a multiple of the row tile."""
    return (-m) % tm


def result_dtype(x: jax.Array, data: jax.Array) -> jnp.dtype:
    """The product's dtype: the promotion of the activation and weight dtypes."""
    return jnp.result_type(x.dtype, data.dtype)
