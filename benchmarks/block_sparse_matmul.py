"""Dense ``jnp.dot`` vs block-sparse matmul, timed interleaved in one process.

For every block size and sparsity: forward (y = x @ W) and forward+backward (y plus dX and dW through
``jax.vjp``), for each requested ``impl``, reporting the speedup over dense and the limit 1 / (1 - s).
Writes ``<out-dir>/block_sparse_matmul_<tag>.json`` and ``.md`` naming the device and the machine load.

CPU (the default): ``python benchmarks/block_sparse_matmul.py``
H100/H200: ``python benchmarks/block_sparse_matmul.py --m 4096 --k 4096 --n 4096 --dtype bfloat16
--impls xla pallas auto --tag h100``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels_pallas import BlockSparseMatrix, block_sparse_matmul, from_dense  # noqa: E402


def _problem(m, k, n, block, sparsity, dtype, seed=0):
    rng = np.random.default_rng(seed)
    kb, nb = k // block, n // block
    nnz = max(1, round((1.0 - sparsity) * kb * nb))
    mask = np.zeros(kb * nb, bool)
    mask[rng.choice(kb * nb, nnz, replace=False)] = (
        True  # uniformly random, so columns are unbalanced
    )
    w = from_dense(jnp.asarray(rng.standard_normal((k, n)), dtype), mask.reshape(kb, nb), nnz)
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)
    dy = jnp.asarray(rng.standard_normal((m, n)), dtype)
    return x, dy, w, w.to_dense()


def _forward(impl: str, x, w: BlockSparseMatrix, weight):
    """y = x @ W, differentiable in ``weight`` (the dense matrix for the baseline, else block data)."""
    if impl == "jnp.dot":
        return jnp.dot(x, weight)
    return block_sparse_matmul(
        x, BlockSparseMatrix(weight, w.indices, w.indptr, w.shape, w.block_shape), impl=impl
    )


def _fns(impl: str, mode: str):
    """Jitted (x, dy, w, wd) -> outputs for the baseline (impl "jnp.dot") or a block-sparse impl."""

    def weight_of(w, wd):
        return wd if impl == "jnp.dot" else w.data

    if mode == "fwd":
        return jax.jit(lambda x, dy, w, wd: _forward(impl, x, w, weight_of(w, wd)))

    def both(x, dy, w, wd):
        y, vjp = jax.vjp(lambda x, v: _forward(impl, x, w, v), x, weight_of(w, wd))
        return y, vjp(dy)

    return jax.jit(both)


def _interleaved(fns: dict, args, rounds: int, inner: int) -> dict[str, float]:
    """Median ms per call of each function, alternating between them every round."""
    for f in fns.values():
        jax.block_until_ready(f(*args))  # compile and warm up
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                out = f(*args)
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / inner * 1e3)
    return {name: float(np.median(v)) for name, v in samples.items()}


def main(argv=None) -> None:
    """Run the sweep and write the JSON and Markdown results."""
    p = argparse.ArgumentParser(description="dense vs block-sparse matmul")
    p.add_argument("--m", type=int, default=2048)
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9, 0.95])
    p.add_argument("--impls", nargs="+", default=["xla", "auto"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--inner", type=int, default=1)
    p.add_argument("--tag", default=None, help="results file suffix (default: the platform)")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)

    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0]
    tag = args.tag or jax.default_backend()
    load_before = os.getloadavg()
    rows = []
    for block in args.blocks:
        for s in args.sparsities:
            x, dy, w, wd = _problem(args.m, args.k, args.n, block, s, dtype)
            for mode in args.modes:
                fns = {i: _fns(i, mode) for i in ["jnp.dot", *args.impls]}
                ms = _interleaved(fns, (x, dy, w, wd), args.rounds, args.inner)
                row = {
                    "block": block,
                    "sparsity": s,
                    "mode": mode,
                    "nnz": w.nnz,
                    "limit": round(1.0 / (1.0 - s), 2),
                    "jnp_dot_ms": round(ms["jnp.dot"], 3),
                }
                for impl in args.impls:
                    row[f"{impl}_ms"] = round(ms[impl], 3)
                    row[f"{impl}_speedup"] = round(ms["jnp.dot"] / ms[impl], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    load_after = os.getloadavg()
    meta = {
        "device": f"{device.platform}: {device.device_kind}",
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "shape": [args.m, args.k, args.n],
        "dtype": dtype.name,
        "impls": args.impls,
        "rounds": args.rounds,
        "inner": args.inner,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "jax": jax.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"block_sparse_matmul_{tag}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    (out / f"block_sparse_matmul_{tag}.md").write_text(_markdown(meta, rows, args.impls))
    print(f"wrote {out}/block_sparse_matmul_{tag}.{{json,md}}")


def _markdown(meta: dict, rows: list[dict], impls: list[str]) -> str:
    lines = [
        f"# Block-sparse matmul vs dense on {meta['device']}",
        "",
        f"x ({meta['shape'][0]}, {meta['shape'][1]}) @ W ({meta['shape'][1]}, {meta['shape'][2]}), "
        f"{meta['dtype']}, uniformly random block topology; median of {meta['rounds']} interleaved "
        f"rounds x {meta['inner']} calls; jax {meta['jax']}; {meta['cpu_count']} CPUs; load average "
        f"before {meta['loadavg_before']}, after {meta['loadavg_after']}; {meta['time']}.",
        "Speedup = jnp.dot ms / impl ms (> 1 is faster); limit = 1 / (1 - sparsity). fwd+bwd = y, dX "
        "and dW (dense dW for jnp.dot, stored blocks only for block-sparse).",
        "",
        "| block | sparsity | mode | limit | jnp.dot ms | "
        + " | ".join(f"{i} ms | {i} speedup" for i in impls)
        + " |",
        "|" + "---|" * (5 + 2 * len(impls)),
    ]
    for r in rows:
        cells = [
            str(r["block"]),
            f"{r['sparsity']:.0%}",
            r["mode"],
            f"{r['limit']:.1f}x",
            f"{r['jnp_dot_ms']:.1f}",
        ]
        for i in impls:
            cells += [f"{r[f'{i}_ms']:.1f}", f"**{r[f'{i}_speedup']:.2f}x**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
