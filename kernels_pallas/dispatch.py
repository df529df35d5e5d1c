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

from kernels_pallas import gpu, tpu
from kernels_pallas.xla_path import XlaConfig

log = logging.getLogger("kernels_pallas")

IMPLS = ("auto", "xla", "pallas", "dense")

# CPU cost model, in units of "one dense FLOP". Measured with benchmarks/block_sparse_matmul.py on a
# 2-core Xeon (see docs/kernels.md): a b x b block GEMM with M rows runs at EFFICIENCY[b] of the dense
# GEMM's FLOP rate, and each loop step costs a fixed overhead worth STEP_FLOPS dense FLOPs plus moving
# its (M, b) panels. Sparse wins when its modeled time is below MARGIN x dense.
_CPU_EFFICIENCY = {16: 0.08, 32: 0.25, 64: 0.5, 128: 0.7, 256: 0.8}
_CPU_STEP_FLOPS = 2.0e6
_CPU_PANEL_FLOPS_PER_ELEM = 24.0
_SDD_PENALTY = 1.35  # the dW loop (M-long contractions into b x b) is slower than the grouped one
MARGIN = 0.85
# Pallas on accelerators: untested on hardware here, so stay conservative until autotuned.
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


def _cpu_prefers_sparse(m: int, k: int, n: int, block_shape: tuple[int, int], nnz: int, sdd: bool):
    bk, bn = block_shape
    eff = _CPU_EFFICIENCY.get(min(bk, bn), 0.8 if min(bk, bn) > 256 else 0.05)
    block_flops = 2.0 * m * bk * bn
    step = block_flops / eff + _CPU_STEP_FLOPS + _CPU_PANEL_FLOPS_PER_ELEM * m * (bk + bn)
    sparse = nnz * step * (_SDD_PENALTY if sdd else 1.0)
    return sparse < MARGIN * 2.0 * m * k * n


def _auto_choice(op: str, m: int, k: int, n: int, block_shape, nnz: int, family: str) -> str:
    kb, nb = k // block_shape[0], n // block_shape[1]
    density = nnz / (kb * nb)
    where = platform()
    if where in ("tpu", "gpu"):
        return f"pallas_{family}" if density <= _ACCEL_MAX_DENSITY else "dense"
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
    from kernels_pallas import autotune  # lazy: autotune imports ops, which imports this module

    tuned = autotune.lookup(m, shape, block_shape, nnz, dtype)
    if tuned is not None:
        return dataclasses.replace(
            Plan(tuned["fwd"], tuned["dx"], tuned["dw"], **base),
            tm=tuned.get("tm", tm),
            num_warps=tuned.get("num_warps", 4),
            num_stages=tuned.get("num_stages", 2),
            xla=XlaConfig(unroll=tuned.get("unroll", 1)),
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
