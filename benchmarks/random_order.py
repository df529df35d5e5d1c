"""Cost of the random tie order: keyed mixing hash (now) vs the affine order it replaced, side by side.

Random choices (random init, SET's growth, ties among equal scores) rank positions by a keyed uint32
bijection of the flat index inside the tie-breaking bisection. The affine ``index * a + b`` was cheaper
but a lattice (see ``sparsejax/topk.py``); this measures what the hash costs on the mask operations
that use it, for the MLP of ``step_overhead.py`` (784-512-512-10) at 90%, interleaving rounds so
machine noise hits both alike. Medians of wall-clock time; ratio hash / affine.

    python benchmarks/random_order.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import sparsejax as sj
from sparsejax import topk


def affine_order(index: jax.Array, seeds: jax.Array) -> jax.Array:
    """The replaced order: a bijection, but a Weyl lattice."""
    return index * (seeds[0] | jnp.uint32(1)) + seeds[1]


def operations() -> tuple[dict[str, callable], tuple]:
    """name -> a mask operation of (key, masks, params, grads); and those masks, params, grads."""
    shapes = {"l1": (784, 512), "l2": (512, 512), "l3": (512, 10)}
    key = jax.random.PRNGKey(0)
    params = {
        n: jax.random.normal(jax.random.fold_in(key, i), s)
        for i, (n, s) in enumerate(shapes.items())
    }
    grads = jax.tree.map(lambda w: jnp.where(jnp.abs(w) > 2.5, w, 0.0), params)  # mostly tied at 0
    static, set_, rigl = (
        sj.static(0.9, distribution="uniform"),
        sj.set_sparse(0.9, update_every=1, end_step=100),
        sj.rigl(0.9, update_every=1, end_step=100),
    )
    masks = static.init_masks(params, key)
    step = jnp.int32(1)
    return {
        "random init (static uniform)": (lambda k, m, p, g: static.init_masks(p, k)),
        "SET drop + random grow": (lambda k, m, p, g: set_.update_masks(m, p, g, step, k)),
        "RigL drop + grow (tied gradients)": (
            lambda k, m, p, g: rigl.update_masks(m, p, g, step, k)
        ),
    }, (masks, params, grads)


def compiled(fn, order, args) -> callable:
    saved = topk.mix_index
    topk.mix_index = order
    try:
        f = jax.jit(fn).lower(jax.random.PRNGKey(1), *args).compile()
    finally:
        topk.mix_index = saved
    return f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    ops, inputs = operations()
    for name, fn in ops.items():
        variants = {
            v: compiled(fn, o, inputs)
            for v, o in (("affine", affine_order), ("hash", topk.mix_index))
        }
        times = {v: [] for v in variants}
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for v in order:
                key = jax.random.PRNGKey(r)
                jax.block_until_ready(variants[v](key, *inputs))
                t = time.perf_counter()
                for i in range(args.reps):
                    out = variants[v](jax.random.fold_in(key, i), *inputs)
                jax.block_until_ready(out)
                times[v].append((time.perf_counter() - t) / args.reps)
        a, h = statistics.median(times["affine"]), statistics.median(times["hash"])
        rows.append((name, a * 1e3, h * 1e3, h / a))
        print(
            f"{name}: affine {a * 1e3:.2f} ms, hash {h * 1e3:.2f} ms, ratio {h / a:.3f}", flush=True
        )
    machine = f"{jax.devices()[0].platform} ({platform.machine()}, {os.cpu_count()} cores)"
    lines = [
        f"# Random tie order: keyed hash vs affine ({machine})",
        "",
        f"jax {jax.__version__}, load average {load:.1f} at start, {args.rounds} interleaved rounds x "
        f"{args.reps} calls, medians; MLP 784-512-512-10 at 90%. Produced by "
        "`python benchmarks/random_order.py`. These are the mask operations alone (update steps only); "
        "`step_overhead.md` has the whole train step.",
        "",
        "| operation | affine (ms) | hash (ms) | hash / affine |",
        "|---|---|---|---|",
        *[f"| {n} | {a:.2f} | {h:.2f} | {r:.3f} |" for n, a, h, r in rows],
        "",
    ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "random_order.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
