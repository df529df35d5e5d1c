"""Offline autotuning of the block-sparse products on the current device, cached as JSON.

``tune`` times every candidate for the forward, dX and dW products of one problem (shape, block shape,
block count, dtype) and stores the winners under a key that also names the device kind; ``lookup`` is
what ``impl="auto"`` consults at trace time. Candidates: on GPU the Triton kernel's row tile, num_warps
and num_stages, and for 16-bit dtypes the Mosaic GPU kernel's row tile; on TPU the row tile;
everywhere the XLA path's chunk size and batch, and dense.

Run it from the command line, e.g.
``python -m kernels_pallas.autotune --m 2048 --k 2048 --n 2048 --block 128 --density 0.1``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import dispatch, gpu_mosaic, ops, xla_path
from kernels_pallas.autotune_cache import (  # noqa: F401  (re-exported: the cache API)
    ENV_VAR,
    _load,
    _store,
    cache_path,
    clear_memory_cache,
    device_kind,
    lookup,
    make_key,
)
from kernels_pallas.format import from_dense


def _time_ms(fn, args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def random_problem(m: int, shape, block_shape, nnz: int, dtype: Any, seed: int = 0):
    """A random x, dy and BlockSparseMatrix (uniformly random block positions) for timing."""

    rng = np.random.default_rng(seed)
    kb, nb = shape[0] // block_shape[0], shape[1] // block_shape[1]
    mask = np.zeros(kb * nb, bool)
    mask[rng.choice(kb * nb, nnz, replace=False)] = True
    w = from_dense(jnp.asarray(rng.standard_normal(shape), dtype), mask.reshape(kb, nb), nnz)
    x = jnp.asarray(rng.standard_normal((m, shape[0])), dtype)
    dy = jnp.asarray(rng.standard_normal((m, shape[1])), dtype)
    return x, dy, w


def _candidates(platform: str, m: int, dtype: Any = jnp.float32) -> list[tuple[str, dict]]:
    """(impl, knobs) pairs to time on ``platform`` (Mosaic GPU only for its 16-bit dtypes)."""
    cands: list[tuple[str, dict]] = [("dense", {})]
    for chunk, batch in ((8, 2), (8, 1), (2, 2)):
        cands.append(("xla", {"max_chunk": chunk, "batch": batch}))
    cands += [("xla", {"layout": layout}) for layout in xla_path.ORDER_FREE]
    tms = [t for t in (32, 64, 128) if t <= max(m, 32)]
    if platform == "gpu":
        for tm, warps, stages in itertools.product(tms, (4, 8), (2, 3, 4)):
            cands.append(("pallas_gpu", {"tm": tm, "num_warps": warps, "num_stages": stages}))
        if jnp.dtype(dtype).name in gpu_mosaic.DTYPES:
            for tm in (64, 128):
                cands.append(("pallas_mosaic_gpu", {"tm": tm}))
    elif platform == "tpu":
        for tm in [t for t in (128, 256, 512) if t <= max(m, 128)]:
            cands.append(("pallas_tpu", {"tm": tm}))
    return cands


def tune(
    m: int,
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    nnz: int,
    dtype: Any = jnp.float32,
    *,
    path: str | os.PathLike | None = None,
    reps: int = 5,
    seed: int = 0,
) -> dict:
    """Time every candidate for each product of this problem, store and return the winning entry."""

    x, dy, w = random_problem(m, shape, block_shape, nnz, dtype, seed)
    platform = dispatch.platform()
    results: dict[str, dict[str, float]] = {}
    for impl, knobs in _candidates(platform, m, dtype):
        plan = dispatch.Plan(
            impl,
            impl,
            impl,
            interpret=False,
            tm=knobs.get("tm", 128),
            num_warps=knobs.get("num_warps", 4),
            num_stages=knobs.get("num_stages", 2),
            xla=ops.xla_path.XlaConfig.from_knobs(knobs),
        )
        fns = {
            "fwd": jax.jit(lambda x, dy, w, p=plan: ops.grouped_product(p.fwd, p, x, w, False)),
            "dx": jax.jit(lambda x, dy, w, p=plan: ops.grouped_product(p.dx, p, dy, w, True)),
            "dw": jax.jit(lambda x, dy, w, p=plan: ops.weight_grad(p.dw, p, x, dy, w)),
        }
        name = json.dumps([impl, knobs], sort_keys=True)
        try:
            results[name] = {op: _time_ms(fn, (x, dy, w), reps) for op, fn in fns.items()}
        except Exception:  # noqa: BLE001 - a candidate that does not compile simply loses
            continue
    # One set of knobs per implementation (the fastest in total), then the best implementation per op.
    best_knobs: dict[str, tuple[dict, dict[str, float]]] = {}
    for name, times in results.items():
        impl, knobs = json.loads(name)
        if impl not in best_knobs or sum(times.values()) < sum(best_knobs[impl][1].values()):
            best_knobs[impl] = (knobs, times)
    entry: dict[str, Any] = {"times_ms": {}}
    for op in ("fwd", "dx", "dw"):
        impl = min(best_knobs, key=lambda i: best_knobs[i][1][op])
        entry[op] = impl
        entry["times_ms"][op] = {i: round(t[op], 3) for i, (_, t) in best_knobs.items()}
    for impl, (knobs, _) in best_knobs.items():
        if impl in (entry["fwd"], entry["dx"], entry["dw"]):
            entry.update(knobs)
    _store(cache_path(path), make_key(m, shape, block_shape, nnz, dtype), entry)
    return entry


def main(argv: list[str] | None = None) -> None:
    """Command-line sweep over densities and block sizes for one (m, k, n)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=2048)
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--block", type=int, nargs="+", default=[128])
    p.add_argument("--density", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cache", default=None)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    for b, d in itertools.product(args.block, args.density):
        nnz = max(1, round(d * (args.k // b) * (args.n // b)))
        entry = tune(
            args.m,
            (args.k, args.n),
            (b, b),
            nnz,
            jnp.dtype(args.dtype),
            path=args.cache,
            reps=args.reps,
        )
        print(json.dumps({"block": b, "density": d, **entry}))
    print(f"cache: {cache_path(args.cache)}")


if __name__ == "__main__":
    main()
