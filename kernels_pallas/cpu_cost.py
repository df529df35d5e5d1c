"""CPU cost model of the block-sparse products: the XLA path against the dense fallback.

Each product (forward ``x @ W``, ``dX = dY @ W^T``, ``dW`` on the stored blocks) is modeled as a linear
combination of work counts whose coefficients (seconds per unit) were fitted by non-negative least
squares to interleaved measurements on this project's 2-core CPU (AMD EPYC VM, 1 MiB L2 per core,
32 MiB shared L3), idle (load ~1-2, the default scheduler: what a user's run sees; an earlier fit to
runs under ``chrt -f`` on a loaded machine picked dense on 18 of 144 products where the XLA path was
faster on an idle one): ``benchmarks/results/auto_dispatch_fit_cpu.json``. ``python
benchmarks/auto_dispatch.py --fit FILE...`` refits them and prints the tables below; a separate run
(``benchmarks/results/auto_dispatch_cpu.md``) checks the choices against fresh measurements.

XLA path (``xla_path``), per block size class (32, 64, 128; other sizes scale from the nearest):
``chunks`` is the expected number of loop steps (every group's block count cut into chunks of at most
``max_chunk`` blocks, for uniformly random block positions); each step has a fixed cost and copies one
``(M, b)`` panel; each block costs a GEMM plus an ``(M, b)`` output update; the per-row costs grow
once the dense operand and the result outgrow the cache (factor ``ws / (ws + CACHE_BYTES)``); the f32
result is zero-initialised. Dense fallback: densify the weight (forward, dX) or take the stored blocks
of a full ``x^T @ dY`` (dW), plus one GEMM.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from kernels_pallas.xla_path import XlaConfig

OPS = ("fwd", "dx", "dw")
BLOCK_CLASSES = (32, 64, 128)
XLA_FEATURES = ("chunks", "chunk_rows", "chunk_rows_cached", "block_rows", "block_rows_cached",
                "result")  # fmt: skip
DENSE_FEATURES = ("weight", "flops", "flops_cached")
# Fixed cost of one product (dispatch, index tables), measured on tiny problems (12 x 64 @ 64 x 96):
# kept out of the fit, whose large problems cannot pin it down.
XLA_FIXED_S = 6e-5
DENSE_FIXED_S = 4e-5
CACHE_BYTES = 16e6  # where per-row costs reach half their out-of-cache excess

# Seconds per feature unit, fitted (see the module docstring): (kernel, block class) -> coefficients
# in XLA_FEATURES order; the forward and dX run the same grouped kernel, dW the SDD kernel.
XLA_COEF = {
    ("grouped", 32): (1.4e-05, 2.8e-10, 0.0, 6.5e-08, 0.0, 1.3e-09),
    ("grouped", 64): (5.4e-05, 6.2e-08, 0.0, 7.6e-08, 0.0, 4.9e-10),
    ("grouped", 128): (0.00014, 0.0, 7.2e-08, 3.2e-07, 0.0, 3.7e-10),
    ("sdd", 32): (2.9e-05, 3.8e-08, 0.0, 2.3e-08, 0.0, 6.2e-10),
    ("sdd", 64): (6.5e-05, 1.2e-07, 0.0, 2.8e-08, 2.9e-08, 7.5e-10),
    ("sdd", 128): (8.5e-05, 0.0, 2.2e-08, 3.5e-07, 0.0, 1.7e-10),
}
DENSE_COEF = {  # op -> coefficients in DENSE_FEATURES order
    "dw": (1.8e-09, 5.4e-12, 3.9e-12),
    "dx": (4.6e-10, 6.9e-12, 0.0),
    "fwd": (5.1e-10, 7.1e-12, 0.0),
}
# Sparse must be modeled at least this much faster than dense: on the fitted measurements the
# choices then stay within ~5% of the faster implementation (see the results files).
MARGIN = 0.95


def chunk_count(n: int, max_chunk: int) -> int:
    """Loop steps for ``n`` blocks of one group: full chunks of ``max_chunk``, then one per bit."""
    return n // max_chunk + bin(n % max_chunk).count("1")


@functools.lru_cache(maxsize=4096)
def expected_chunks(groups: int, slots: int, nnz: int, max_chunk: int) -> float:
    """Expected total chunks when ``nnz`` blocks sit uniformly at random on ``groups x slots``.

    A group's block count is hypergeometric (``slots`` draws from ``groups * slots`` positions of
    which ``nnz`` are stored); the expectation sums its pmf against ``chunk_count``.
    """
    total = groups * slots
    nnz = min(max(nnz, 0), total)
    log_norm = _log_comb(total, nnz)
    expected = 0.0
    for n in range(max(0, nnz - (total - slots)), min(slots, nnz) + 1):
        log_p = _log_comb(slots, n) + _log_comb(total - slots, nnz - n) - log_norm
        expected += math.exp(log_p) * chunk_count(n, max_chunk)
    return groups * expected


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def block_class(block_shape: tuple[int, int]) -> int:
    """The fitted block size nearest (in log2) to the block's geometric-mean edge."""
    b = math.sqrt(block_shape[0] * block_shape[1])
    return min(BLOCK_CLASSES, key=lambda c: abs(math.log2(b / c)))


def features(
    op: str,
    m: int,
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    nnz: int,
    config: XlaConfig = XlaConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """(XLA-path work counts, dense work counts) of product ``op`` for x (m, K) @ W (K, N).

    Per-row counts of a block size other than its class are scaled to the class: panel copies by
    ``b / class``, block work by ``(b / class) ** 2`` above it (GEMM-bound) and ``b / class`` below.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    (k, n), (bk, bn) = shape, block_shape
    kb, nb = k // bk, n // bn
    if op == "fwd":  # groups: block rows of W, reading (m, bk) panels of x; result y (m, N)
        groups, slots, result = kb, nb, m * n
    else:  # dX and dW: groups: block columns of W, reading (m, bn) panels of dY
        groups, slots, result = nb, kb, m * k
    chunks = expected_chunks(groups, slots, nnz, config.max_chunk)
    ratio = math.sqrt(bk * bn) / block_class(block_shape)
    block_scale = ratio**2 if ratio > 1 else ratio
    ws = 4.0 * m * (k + n)  # f32 bytes of the dense operand and the result
    cached = ws / (ws + CACHE_BYTES)
    chunk_rows = chunks * m * ratio
    block_rows = nnz * m * block_scale
    xla = np.array(
        [chunks, chunk_rows, chunk_rows * cached, block_rows, block_rows * cached, result]
    )
    dense = np.array([float(k * n), 2.0 * m * k * n, 2.0 * m * k * n * cached])
    return xla, dense


def model_seconds(
    op: str,
    m: int,
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    nnz: int,
    config: XlaConfig = XlaConfig(),
) -> tuple[float, float]:
    """(modeled XLA-path seconds, modeled dense-fallback seconds) of one product on the CPU."""
    xla, dense = features(op, m, tuple(shape), tuple(block_shape), nnz, config)
    coef = XLA_COEF[("sdd" if op == "dw" else "grouped", block_class(block_shape))]
    return (
        XLA_FIXED_S + float(xla @ np.asarray(coef)),
        DENSE_FIXED_S + float(dense @ np.asarray(DENSE_COEF[op])),
    )


def prefers_xla(op: str, m: int, shape, block_shape, nnz: int, config=XlaConfig()) -> bool:
    """Whether the XLA path is modeled faster than the dense fallback by at least ``MARGIN``."""
    sparse, dense = model_seconds(op, m, tuple(shape), tuple(block_shape), nnz, config)
    return sparse < MARGIN * dense
