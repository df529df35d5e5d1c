"""Static choice of the implementation for each of the three products (forward, dX, dW).

``impl="auto"`` picks, per product: an autotuned entry if the cache has one for this exact problem
(``use_cache=False`` skips it); else, on CPU, the XLA path or the dense fallback, whichever the cost
model of ``cpu_cost`` (fitted to and checked against interleaved measurements on the CPU) says is
faster; on TPU/GPU, the Pallas kernel up to 50% block density when the block shapes suit it and it
compiles (probed once per problem; a failure logs one line and falls back to XLA), else dense.
An explicit ``impl`` is obeyed and its errors propagate.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from kernels_pallas import autotune_cache, compat, cpu_cost, gpu, gpu_mosaic, tpu, xla_path
from kernels_pallas.xla_path import XlaConfig

log = logging.getLogger("kernels_pallas")

IMPLS = ("auto", "xla", "pallas", "dense")
# Pallas kernel families: Mosaic TPU, Triton GPU, Mosaic GPU (Hopper WGMMA, 16-bit, opt-in).
BACKENDS = ("tpu", "gpu", "mosaic_gpu")

# Pallas on accelerators: not timed on hardware here, so stay conservative until autotuned.
_ACCEL_MAX_DENSITY = 0.5


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static per-call choices (hashable: it is a nondiff argument of the custom VJP)."""

    fwd: str  # one of "xla", "dense", "pallas_tpu", "pallas_gpu", "pallas_mosaic_gpu"
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
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        return backend
    return "gpu" if platform() == "gpu" else "tpu"


def default_tm(family: str, m: int, dtype: Any) -> int:
    """Row tile: 128 (rounded down for small M, to a power of two on GPU, a sublane multiple on TPU;
    one warpgroup's 64 rows for Mosaic GPU)."""
    if family == "mosaic_gpu":
        return gpu_mosaic.TM
    if family == "gpu":
        return max(16, min(128, 1 << max(m - 1, 1).bit_length()))
    sub = tpu.sublane(dtype)
    return min(128 if m >= 128 else -(-m // sub) * sub, 256)


def check_shapes(family: str, block_shape: tuple[int, int], tm: int, dtype: Any) -> None:
    """Raise a clear ValueError if the Pallas kernel of ``family`` cannot take these tiles."""
    if family == "gpu":
        gpu.check_gpu_shapes(block_shape, tm)
    elif family == "mosaic_gpu":
        gpu_mosaic.check_mosaic_gpu_shapes(block_shape, tm, dtype)
    else:
        tpu.check_tpu_shapes(block_shape, tm, dtype)


def _auto_choice(op: str, m: int, k: int, n: int, block_shape, nnz: int, family: str) -> str:
    kb, nb = k // block_shape[0], n // block_shape[1]
    density = nnz / (kb * nb)
    where = platform()
    if where in ("tpu", "gpu"):
        return f"pallas_{family}" if density <= _ACCEL_MAX_DENSITY else "dense"
    return "xla" if cpu_cost.prefers_xla(op, m, (k, n), block_shape, nnz) else "dense"


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
    use_cache: bool = True,
) -> Plan:
    """Resolve ``impl`` into a ``Plan`` for an (m, K) @ (K, N) product with ``nnz`` stored blocks.

    ``probe(plan) -> bool`` compiles the Pallas plan (supplied by ``ops``); auto falls back to XLA when
    it returns False. ``use_cache=False`` makes auto ignore the autotune cache (the model alone).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    family = pallas_family(backend)
    k, n = shape
    on_cpu = platform() == "cpu"
    if interpret is None:
        interpret = on_cpu  # Pallas only runs interpreted on CPU
    if family == "mosaic_gpu" and interpret is True:  # the generic interpreter lacks TMA and WGMMA
        interpret = compat.mosaic_gpu_interpret_params()
    tm = default_tm(family, m, dtype)
    layout = xla_path.default_layout(nnz, (k // block_shape[0], n // block_shape[1]), m)
    base = dict(interpret=interpret, tm=tm, precision=precision, xla=XlaConfig(layout=layout))
    if impl in ("xla", "dense"):
        return Plan(impl, impl, impl, **base)
    if impl == "pallas":
        if interpret is False:
            check_shapes(family, block_shape, tm, dtype)
        p = f"pallas_{family}"
        return Plan(p, p, p, **base)
    tuned = autotune_cache.lookup(m, shape, block_shape, nnz, dtype) if use_cache else None
    if tuned is not None:
        return dataclasses.replace(
            Plan(tuned["fwd"], tuned["dx"], tuned["dw"], **base),
            tm=tuned.get("tm", tm),
            num_warps=tuned.get("num_warps", 4),
            num_stages=tuned.get("num_stages", 2),
            xla=XlaConfig.from_knobs(tuned),
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
