"""Checks ``impl="auto"`` against measurements: every product, every implementation, one process.

For each problem of the grid (x (M, K) @ W (K, N), block size, sparsity; uniformly random topology)
and each product of the op (forward ``x @ W``, ``dX = dY @ W^T``, ``dW`` on the stored blocks), times
every implementation ``auto`` can choose (dense: densify + ``jnp.dot``; the XLA path in the layout
``xla_path.default_layout`` picks; on TPU/GPU the
compiled Pallas kernel) and the plain ``jnp.dot`` on an already dense matrix, interleaved round by
round. Each row then gives what the CPU cost model predicted (``cpu_cost.model_seconds``), what
``auto`` picks for it (``dispatch.make_plan``, cache ignored), and how far that pick is from the
fastest measured implementation (regret: 1.00 = auto picked the best) and from ``jnp.dot``.

These are the measurements the cost model's constants were fitted to and are checked against
(``--fit`` refits ``kernels_pallas/cpu_cost.py``'s coefficients to such JSON files):

    python benchmarks/auto_dispatch.py            # the default problems, blocks 32/64/128, f32
    python benchmarks/auto_dispatch.py --problems 2048x2048x2048 --blocks 128 --sparsities 0.5 0.9
    python benchmarks/auto_dispatch.py --fit RUN1.json RUN2.json --fit-out FIT.json  # refit
    python benchmarks/auto_dispatch.py --recheck benchmarks/results/auto_dispatch_cpu.json

Writes ``<out-dir>/auto_dispatch_<device>.{json,md}`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import machine
import numpy as np

from kernels_pallas import autotune, cpu_cost, dispatch, ops

OPS = ("fwd", "dx", "dw")
PROBLEMS = ("2048x2048x2048", "256x2048x2048", "1568x384x1536", "1568x1536x384")


def _plan(impl: str, layout: str = "grouped") -> dispatch.Plan:
    xla = ops.xla_path.XlaConfig(layout=layout)
    return dispatch.Plan(impl, impl, impl, interpret=False, xla=xla)


def product_fn(op: str, impl: str, layout: str = "grouped"):
    """(x, dy, w, wd) -> one product through ``impl`` ("jnp.dot": plain dense baseline on ``wd``)."""
    if impl == "jnp.dot":
        return {
            "fwd": lambda x, dy, w, wd: jnp.dot(x, wd),
            "dx": lambda x, dy, w, wd: jnp.dot(dy, wd.T),
            "dw": lambda x, dy, w, wd: jnp.dot(x.T, dy),
        }[op]
    plan = _plan(impl, layout)
    return {
        "fwd": lambda x, dy, w, wd: ops.grouped_product(impl, plan, x, w, False),
        "dx": lambda x, dy, w, wd: ops.grouped_product(impl, plan, dy, w, True),
        "dw": lambda x, dy, w, wd: ops.weight_grad(impl, plan, x, dy, w),
    }[op]


def _product(op: str, impl: str, layout: str = "grouped"):
    return jax.jit(product_fn(op, impl, layout))


def interleaved(fns: dict, args, rounds: int) -> dict[str, dict[str, float]]:
    """Median and min ms per call of each function, every round calling each once (order flips)."""
    for f in fns.values():
        jax.block_until_ready(f(*args))  # compile and warm up outside the timed rounds
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            jax.block_until_ready(fns[name](*args))
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {n: {"median": float(np.median(v)), "min": float(np.min(v))} for n, v in samples.items()}


def accel_impl() -> str | None:
    """The compiled Pallas family auto may pick on this platform (None on CPU)."""
    where = dispatch.platform()
    return f"pallas_{where}" if where in ("gpu", "tpu") else None


def evaluate(row: dict, dtype) -> dict:
    """Fill in the model's ms, auto's pick and its regret for a measured row (current model)."""
    m, k, n, block, nnz, op = (row[f] for f in ("m", "k", "n", "block", "nnz", "op"))
    sparse_s, dense_s = cpu_cost.model_seconds(op, m, (k, n), (block, block), nnz)
    plan = dispatch.make_plan(m, (k, n), (block, block), nnz, dtype, use_cache=False)
    ms = row["ms"]
    impls = [i for i in ms if i != "jnp.dot"]
    best, pick = min(impls, key=ms.get), getattr(plan, op)
    row.update(
        model_ms={"xla": round(sparse_s * 1e3, 3), "dense": round(dense_s * 1e3, 3)},
        auto=pick,
        best=best,
        regret=round(ms[pick] / ms[best], 3),
        auto_vs_jnp=round(ms["jnp.dot"] / ms[pick], 3),
    )
    return row


def measure_problem(m: int, k: int, n: int, block: int, sparsity: float, dtype, rounds: int):
    """One row per product: measured ms per implementation, the model's ms and auto's pick."""
    kb, nb = k // block, n // block
    nnz = max(1, round((1.0 - sparsity) * kb * nb))
    x, dy, w = autotune.random_problem(m, (k, n), (block, block), nnz, dtype)
    wd = w.to_dense()
    impls = ["dense", "xla"] + ([accel_impl()] if accel_impl() else [])
    layout = ops.xla_path.default_layout(nnz, (kb, nb), m)  # the XLA layout auto runs
    fns = {f"{op}:{i}": _product(op, i, layout) for op in OPS for i in ["jnp.dot", *impls]}
    times = interleaved(fns, (x, dy, w, wd), rounds)
    rows = []
    for op in OPS:
        names = ["jnp.dot", *impls]
        row = {"m": m, "k": k, "n": n, "block": block, "sparsity": sparsity, "nnz": nnz, "op": op}
        row["layout"] = layout
        row["ms"] = {i: round(times[f"{op}:{i}"]["median"], 3) for i in names}
        row["min_ms"] = {i: round(times[f"{op}:{i}"]["min"], 3) for i in names}
        rows.append(evaluate(row, dtype))
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    """The rows as the Markdown report (model vs measured, auto's pick, regret)."""
    bad = [r for r in rows if r["regret"] > 1.05]
    slow = [r for r in rows if r["auto_vs_jnp"] < 0.95]
    lines = [
        f'# `impl="auto"` against measurements on {meta["device"]}',
        "",
        f"{meta['host']}, {meta['cpu_count']} CPUs, jax {meta['jax']}, {meta['dtype']}, "
        f"{meta['scheduler']}; median of "
        f"{meta['rounds']} interleaved rounds; load average before {meta['loadavg_before']}, after "
        f"{meta['loadavg_after']}; {meta['time']}. "
        f"`{meta.get('command') or 'python benchmarks/auto_dispatch.py ' + meta['argv']}`.",
        "",
        "dense = densify + `jnp.dot` (what auto falls back to), xla = the XLA path, jnp.dot = a plain "
        "dense product on an already dense matrix. model = `cpu_cost.model_seconds`. regret = "
        "ms of auto's pick / ms of the fastest implementation; vs jnp.dot = jnp.dot ms / auto ms.",
        "",
        f"auto within 5% of the best: {len(rows) - len(bad)}/{len(rows)} products; "
        f"no more than 5% slower than jnp.dot: {len(rows) - len(slow)}/{len(rows)}.",
        "",
        *meta.get("notes", []),
        *([""] if meta.get("notes") else []),
        "| M | K x N | block | sparsity | product | jnp.dot ms | dense ms | xla ms | model dense | "
        "model xla | auto | regret | vs jnp.dot |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms, mod = r["ms"], r["model_ms"]
        extra = "".join(f" {i}={v:.1f}" for i, v in ms.items() if i.startswith("pallas"))
        lines.append(
            f"| {r['m']} | {r['k']} x {r['n']} | {r['block']} | {r['sparsity']:.0%} | {r['op']} | "
            f"{ms['jnp.dot']:.1f} | "
            f"{ms['dense']:.1f} | {ms['xla']:.1f}{extra} | {mod['dense']:.1f} | {mod['xla']:.1f} | "
            f"{r['auto']} | {r['regret']:.2f} | {r['auto_vs_jnp']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def fit(paths: list[str], use: str = "median", out: str | None = None) -> dict:
    """Refit ``cpu_cost``'s coefficient tables to measured JSON files and print them.

    Non-negative least squares on relative errors, one fit per XLA kernel (grouped: forward and dX;
    sdd: dW) and block class, and one per dense product. ``out`` also writes the merged measurements
    and the fitted tables as one JSON file (what ``cpu_cost`` cites).
    """
    from scipy.optimize import nnls  # benchmark-only (scikit-learn, a dev dependency, pulls it in)

    files = [json.loads(Path(p).read_text()) for p in paths]
    # The model's XLA features describe the grouped layout: batched rows (very few blocks, where
    # auto takes the XLA path anyway) stay out of the fit.
    rows = [r for f in files for r in f["rows"] if r.get("layout", "grouped") == "grouped"]
    key = "ms" if use == "median" else "min_ms"
    groups: dict[tuple, list] = {}
    for r in rows:
        block = (r["block"], r["block"])
        xla, dense = cpu_cost.features(r["op"], r["m"], (r["k"], r["n"]), block, r["nnz"])
        kind = "sdd" if r["op"] == "dw" else "grouped"
        groups.setdefault(("xla", kind, cpu_cost.block_class(block)), []).append((xla, r, "xla"))
        groups.setdefault(("dense", r["op"]), []).append((dense, r, "dense"))
    fixed = {"xla": cpu_cost.XLA_FIXED_S, "dense": cpu_cost.DENSE_FIXED_S}
    tables: dict[str, dict] = {"XLA_COEF": {}, "DENSE_COEF": {}}
    for name, items in sorted(groups.items(), key=str):
        a = np.array([f for f, _, _ in items])
        t = np.array([r[key][impl] / 1e3 for _, r, impl in items])
        scale = a.max(axis=0) / t.max()  # condition the columns, then undo
        scale[scale == 0] = 1.0
        # Relative errors of (fixed + a @ c) against t: rows weighted by 1 / t.
        c, _ = nnls(a / scale / t[:, None], 1.0 - fixed[name[0]] / t)
        c = [float(f"{v:.2g}") for v in c / scale]
        err = np.abs((fixed[name[0]] + a @ np.array(c)) / t - 1.0)
        table = "XLA_COEF" if name[0] == "xla" else "DENSE_COEF"
        tables[table][repr(name[1:] if table == "XLA_COEF" else name[1])] = c
        print(
            f"{name[1:]}: {tuple(c)},  # |rel. error| median {np.median(err):.0%}, "
            f"max {err.max():.0%}, {len(t)} products"
        )
    if out:
        meta = [f["meta"] for f in files]
        Path(out).write_text(json.dumps({"meta": meta, "fit_on": use, **tables, "rows": rows}))
        print(f"wrote {out}")
    return tables


def main(argv: list[str] | None = None) -> None:
    """Measure the grid and write the JSON and Markdown results (or refit the model: --fit)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--problems",
        nargs="+",
        default=list(PROBLEMS),
        help="MxKxN: x (M, K) @ W (K, N); default: the benchmark grid's 2048^3, the block MLP's "
        "layer (batch 256) and the ViT-S MLP block's two layers (8 x 196 tokens)",
    )
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9, 0.95])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tag", default=None, help="results file suffix (default: the device slug)")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--fit", nargs="+", metavar="JSON", help="refit cpu_cost to these results")
    p.add_argument("--fit-on", choices=("median", "min"), default="median")
    p.add_argument("--fit-out", default=None, help="write the merged fit data and tables here")
    p.add_argument(
        "--recheck", metavar="JSON", help="re-evaluate a results file with the current model"
    )
    args = p.parse_args(argv)
    if args.fit:
        fit(args.fit, args.fit_on, args.fit_out)
        return
    if args.recheck:
        path = Path(args.recheck)
        data = json.loads(path.read_text())
        rows = [evaluate(r, jnp.dtype(data["meta"]["dtype"])) for r in data["rows"]]
        path.write_text(json.dumps({"meta": data["meta"], "rows": rows}, indent=1))
        path.with_suffix(".md").write_text(markdown(data["meta"], rows))
        print(f"rewrote {path} and {path.with_suffix('.md')}")
        return
    dtype = jnp.dtype(args.dtype)
    before = machine.describe()
    rows = []
    for problem in args.problems:
        m, k, n = (int(v) for v in problem.split("x"))
        for block in args.blocks:
            if k % block or n % block:
                continue
            for s in args.sparsities:
                for row in measure_problem(m, k, n, block, s, dtype, args.rounds):
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    meta = {
        **before,
        "loadavg_before": before.pop("loadavg"),
        "loadavg_after": machine.load_average(),
        "dtype": dtype.name,
        "rounds": args.rounds,
        "argv": " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    meta.pop("loadavg", None)
    tag = args.tag or machine.device_slug()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"auto_dispatch_{tag}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    (out / f"auto_dispatch_{tag}.md").write_text(markdown(meta, rows))
    print(f"wrote {out}/auto_dispatch_{tag}.{{json,md}}")


if __name__ == "__main__":
    main()
