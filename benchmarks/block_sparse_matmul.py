"""Dense ``jnp.dot`` vs block-sparse matmul, timed interleaved in one process.

For every block size and sparsity: forward (y = x @ W) and forward+backward (y plus dX and dW through
``jax.vjp``), for each requested ``impl``, reporting the speedup over dense, the limit 1 / (1 - s) and
the implementation ``auto`` chose for each product. Writes ``<out-dir>/block_sparse_matmul_<tag>.json``
and ``.md`` naming the device and the machine load; the tag defaults to the device slug (``cpu``,
``h100``, ``h200``, see ``benchmarks/machine.py``).

Presets (explicit flags override them):
  cpu (default): 2048^3 f32, blocks 32/64/128, 50/75/90/95%, xla and auto
  device: 4096^3 bf16, blocks 64/128, 50/75/90/95%, xla, pallas (Triton), pallas:mosaic_gpu and
    auto, 10 calls per round
  smoke: 256^3 f32, 64-blocks at 75%, two rounds (seconds on CPU; Pallas runs interpreted there)

    python benchmarks/block_sparse_matmul.py
    python benchmarks/block_sparse_matmul.py --preset device --max-seconds 200    # on an H100/H200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402

from kernels_pallas import BlockSparseMatrix, block_sparse_matmul, from_dense  # noqa: E402
from kernels_pallas.ops import plan_for  # noqa: E402

PRESETS = {
    "cpu": dict(
        m=2048,
        k=2048,
        n=2048,
        dtype="float32",
        blocks=[32, 64, 128],
        sparsities=[0.5, 0.75, 0.9, 0.95],
        impls=["xla", "auto"],
        modes=["fwd", "fwd+bwd"],
        rounds=11,
        inner=1,
    ),
    "device": dict(
        m=4096,
        k=4096,
        n=4096,
        dtype="bfloat16",
        blocks=[64, 128],
        sparsities=[0.5, 0.75, 0.9, 0.95],
        impls=["xla", "pallas", "pallas:mosaic_gpu", "auto"],
        modes=["fwd", "fwd+bwd"],
        rounds=7,
        inner=10,
    ),
    "smoke": dict(
        m=256,
        k=256,
        n=256,
        dtype="float32",
        blocks=[64],
        sparsities=[0.75],
        impls=["xla", "auto"],
        modes=["fwd", "fwd+bwd"],
        rounds=2,
        inner=1,
    ),
}


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
    """y = x @ W, differentiable in ``weight`` (the dense matrix for the baseline, else block data).

    ``impl`` is an ``impl`` of ``block_sparse_matmul`` or ``impl:backend`` (``pallas:mosaic_gpu``).
    """
    if impl == "jnp.dot":
        return jnp.dot(x, weight)
    impl, _, backend = impl.partition(":")
    return block_sparse_matmul(
        x,
        BlockSparseMatrix(weight, w.indices, w.indptr, w.shape, w.block_shape),
        impl=impl,
        backend=backend or None,
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


def auto_plan(x, w: BlockSparseMatrix) -> str:
    """What ``impl="auto"`` runs for each product, as "fwd/dx/dw" (e.g. "xla/xla/dense")."""
    plan = plan_for(x, w, x.dtype, dict(impl="auto"))
    return "/".join(p.removeprefix("pallas_") for p in (plan.fwd, plan.dx, plan.dw))


def parse_args(argv=None) -> argparse.Namespace:
    """Flags over a preset: every flag left unset takes the preset's value."""
    p = argparse.ArgumentParser(description="dense vs block-sparse matmul")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--m", type=int)
    p.add_argument("--k", type=int)
    p.add_argument("--n", type=int)
    p.add_argument("--dtype", help="float32 or bfloat16")
    p.add_argument("--blocks", type=int, nargs="+")
    p.add_argument("--sparsities", type=float, nargs="+")
    p.add_argument("--impls", nargs="+")
    p.add_argument("--modes", nargs="+")
    p.add_argument("--rounds", type=int)
    p.add_argument("--inner", type=int)
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="start no new problem after this many seconds; the results written say so",
    )
    p.add_argument("--tag", default=None, help="results file suffix (default: the device slug)")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> None:
    """Run the sweep and write the JSON and Markdown results."""
    args = parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    tag = args.tag or machine.device_slug()
    start, before = time.perf_counter(), machine.describe()
    rows, skipped = [], []
    for block in args.blocks:
        for s in args.sparsities:
            if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
                skipped.append(f"{block}@{s:.0%}")
                continue
            x, dy, w, wd = _problem(args.m, args.k, args.n, block, s, dtype)
            plan = auto_plan(x, w)
            for mode in args.modes:
                fns = {i: _fns(i, mode) for i in ["jnp.dot", *args.impls]}
                ms = _interleaved(fns, (x, dy, w, wd), args.rounds, args.inner)
                row = {
                    "block": block,
                    "sparsity": s,
                    "mode": mode,
                    "nnz": w.nnz,
                    "limit": round(1.0 / (1.0 - s), 2),
                    "auto_plan": plan,
                    "jnp_dot_ms": round(ms["jnp.dot"], 4),
                }
                for impl in args.impls:
                    row[f"{impl}_ms"] = round(ms[impl], 4)
                    row[f"{impl}_speedup"] = round(ms["jnp.dot"] / ms[impl], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {
        "device": before["device"],
        "host": before["host"],
        "cpu_count": before["cpu_count"],
        "shape": [args.m, args.k, args.n],
        "dtype": dtype.name,
        "impls": args.impls,
        "rounds": args.rounds,
        "inner": args.inner,
        "preset": args.preset,
        "scheduler": before["scheduler"],
        "skipped": skipped,
        "loadavg_before": before["loadavg"],
        "loadavg_after": machine.load_average(),
        "jax": jax.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.perf_counter() - start, 1),
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
        f"rounds x {meta['inner']} calls; jax {meta['jax']}; {meta['cpu_count']} CPUs; "
        f"{meta.get('scheduler', 'SCHED_OTHER')}; load average "
        f"before {meta['loadavg_before']}, after {meta['loadavg_after']}; {meta['time']}.",
        "Speedup = jnp.dot ms / impl ms (> 1 is faster); limit = 1 / (1 - sparsity). fwd+bwd = y, dX "
        "and dW (dense dW for jnp.dot, stored blocks only for block-sparse). auto plan = what "
        '`impl="auto"` runs for the forward / dX / dW products.',
    ]
    if meta.get("skipped"):
        lines.append(f"Not run (time budget): {', '.join(meta['skipped'])}.")
    lines += [
        "",
        "| block | sparsity | mode | limit | auto plan | jnp.dot ms | "
        + " | ".join(f"{i} ms | {i} speedup" for i in impls)
        + " |",
        "|" + "---|" * (6 + 2 * len(impls)),
    ]
    for r in rows:
        cells = [
            str(r["block"]),
            f"{r['sparsity']:.0%}",
            r["mode"],
            f"{r['limit']:.1f}x",
            r.get("auto_plan", "-"),
            _ms(r["jnp_dot_ms"]),
        ]
        for i in impls:
            cells += [_ms(r[f"{i}_ms"]), f"**{r[f'{i}_speedup']:.2f}x**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ms(v: float) -> str:
    """Milliseconds with three significant digits (GPU rows are sub-millisecond)."""
    return f"{v:.1f}" if v >= 10 else f"{v:.3g}"


if __name__ == "__main__":
    main()
