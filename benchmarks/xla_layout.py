"""The XLA path's layouts (grouped, batched, blockwise) against dense, per product and for all three.

For each problem (M, K x N, block, stored blocks) of the training benchmarks (the MLP's 2048-wide
layers at batch 256, 2048^3, a ViT-S MLP block's fc1 and fc2 on 8 x 196 tokens), the forward, dX and
dW products alone and the three jitted together, for every ``XlaConfig(layout=...)`` of
``xla_path.LAYOUTS`` and ``jnp.dot`` on the dense matrix, timed interleaved in one
process (medians of ``--rounds``). The ``rule`` column is ``xla_path.default_layout``'s pick; the
``best`` column the faster layout of the three products together.

    python benchmarks/xla_layout.py [--rounds 9] [--out benchmarks/results]

Writes ``xla_layout_<device>.{json,md}`` naming the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402
from auto_dispatch import interleaved, product_fn  # noqa: E402

from kernels_pallas import xla_path  # noqa: E402
from kernels_pallas.autotune import random_problem  # noqa: E402

# (name, M, K, N, block, stored blocks)
PROBLEMS = [
    ("mlp 90%", 256, 2048, 2048, 128, 26),
    ("mlp 50%", 256, 2048, 2048, 128, 128),
    ("2048^3 90%", 2048, 2048, 2048, 128, 26),
    ("vit fc1 90%", 1568, 384, 1536, 128, 4),
    ("vit fc2 90%", 1568, 1536, 384, 128, 4),
    ("vit fc1 50%", 1568, 384, 1536, 128, 18),
    ("vit fc1 90% b64", 1568, 384, 1536, 64, 14),
    ("vit fc2 90% b64", 1568, 1536, 384, 64, 14),
]
PRODUCTS = ("fwd", "dx", "dw")
OPS = (*PRODUCTS, "all")
VARIANTS = {"dense": ("jnp.dot", "grouped"), **{v: ("xla", v) for v in xla_path.LAYOUTS}}


def products(impl: str, layout: str) -> dict:
    """{op: jitted fn(x, dy, w, wd)}: each product alone and the three together ("all")."""
    one = [product_fn(op, impl, layout) for op in PRODUCTS]
    fns = dict(zip(PRODUCTS, one), all=lambda *a: tuple(f(*a) for f in one))
    return {op: jax.jit(f) for op, f in fns.items()}


def bench(problem: tuple, rounds: int) -> dict:
    """Median ms of every (variant, op), interleaved round by round."""
    name, m, k, n, b, nnz = problem
    x, dy, w = random_problem(m, (k, n), (b, b), nnz, jnp.float32, 0)
    fns = {f"{v}/{op}": f for v, spec in VARIANTS.items() for op, f in products(*spec).items()}
    times = interleaved(fns, (x, dy, w, w.to_dense()), rounds)
    ms = {key: round(t["median"], 3) for key, t in times.items()}
    rule = xla_path.default_layout(nnz, (k // b, n // b), m)
    best = min(xla_path.LAYOUTS, key=lambda v: ms[f"{v}/all"])
    return dict(name=name, m=m, k=k, n=n, block=b, nnz=nnz, rule=rule, best=best, ms=ms)


def markdown(meta: dict, rows: list[dict]) -> str:
    """Speedups over jnp.dot (higher is faster) per product, and the layouts' pick."""
    lines = [
        "# XLA path layouts: " + " vs ".join(xla_path.LAYOUTS) + " (`benchmarks/xla_layout.py`)",
        "",
        f"{meta['device']} ({meta['host']}, {meta['cpu_count']} cores), jax {meta['jax']}; load "
        f"average before {meta['loadavg_before']}, after {meta['loadavg_after']}; {meta['time']}; "
        f"median of {meta['rounds']} interleaved rounds. Cells: jnp.dot ms / layout ms ("
        + " | ".join(xla_path.LAYOUTS)
        + "); `all` = forward, dX and dW jitted together.",
        "",
        "| problem | M | K x N | block | nnz | " + " | ".join(OPS) + " | rule | best |",
        "|---|---|---|---|---|" + "---|" * len(OPS) + "---|---|",
    ]
    for r in rows:
        ms = r["ms"]
        cells = [
            " \\| ".join(f"{ms[f'dense/{op}'] / ms[f'{v}/{op}']:.2f}" for v in xla_path.LAYOUTS)
            for op in OPS
        ]
        lines.append(
            f"| {r['name']} | {r['m']} | {r['k']} x {r['n']} | {r['block']} | {r['nnz']} | "
            + " | ".join(cells)
            + f" | {r['rule']} | {r['best']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    """Time every problem and write the results files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--problems", type=int, help="only the first N problems (smoke runs)")
    args = p.parse_args(argv)
    before = machine.describe()
    rows = []
    for problem in PROBLEMS[: args.problems]:
        rows.append(bench(problem, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    meta = {k: before[k] for k in ("device", "host", "cpu_count", "jax")}
    meta.update(loadavg_before=before["loadavg"], loadavg_after=machine.load_average())
    meta.update(rounds=args.rounds, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"xla_layout_{machine.device_slug()}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(markdown(meta, rows))
    print(f"wrote {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
