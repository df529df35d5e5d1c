"""Step overhead of ``sj.sparsify`` against the plain optimizer, measured side by side in one process.

For a small Flax CNN and an MLP, times a jitted train step (forward, backward, optimizer) of the dense
optimizer and of ``sparsify(...)`` for each algorithm at 90% (2:4 / 1:8 for N:M), interleaving rounds so
machine noise hits all alike, and reports medians:

- non-update step / dense step (target <= 1.05 for masked methods, <= 1.15 for STE-family);
- RigL/SET update step / dense step (target <= 3), and the amortised overhead at ``update_every=100``;
- mask memory: bool (1 byte per sparsified weight) and packed (1 bit).

Every ratio is given for wall-clock time and for CPU time (``time.process_time``: all threads of this
process, the thread pool's spinning included). CPU time leaves out time a shared VM's hypervisor steals,
so it is the steadier of the two there; on small steps it also counts the pool's idle spinning as work,
so the two can differ by several percent.

    python benchmarks/step_overhead.py [--rounds 7] [--mlp-rounds 40] [--steps 20]
    python benchmarks/step_overhead.py --smoke --out /tmp/step_overhead_cpu.json   # seconds, for CI
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparsejax as sj


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(512)(x))
        x = nn.relu(nn.Dense(512)(x))
        return nn.Dense(10)(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


# name -> (algorithm with rare updates, algorithm updating every step or None)
ALGOS = {
    "static": (lambda: sj.static(0.9), None),
    "set": (
        lambda: sj.set_sparse(0.9, update_every=100, end_step=10**6),
        lambda: sj.set_sparse(0.9, update_every=1, end_step=10**6),
    ),
    "rigl": (
        lambda: sj.rigl(0.9, update_every=100, end_step=10**6),
        lambda: sj.rigl(0.9, update_every=1, end_step=10**6),
    ),
    "ste": (lambda: sj.ste(n=2, m=4, skip_indivisible=True), None),
    "sr_ste": (lambda: sj.sr_ste(2, 4, skip_indivisible=True), None),
    "pgf": (lambda: sj.pgf(1, 8, end_step=10**6, skip_indivisible=True), None),
}


def sparsify(algo):
    """``sj.sparsify`` as the trainer builds it (metrics tracked); older checkouts always tracked."""
    tracked = "track_metrics" in inspect.signature(sj.sparsify).parameters
    kw = {"track_metrics": True} if tracked else {}
    return sj.sparsify(optax.adam(1e-3), algo, **kw)


def make_step(model, tx, assume_masked=False, donate=True):
    def loss_fn(p, state, x, y):
        fwd = sj.forward_params(p, state, assume_masked=assume_masked)
        logits = model.apply({"params": fwd}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def dense_loss(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    if tx is None:
        inner = optax.adam(1e-3)

        @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
        def dense_step(p, s, x, y):
            g = jax.grad(dense_loss)(p, x, y)
            u, s = inner.update(g, s, p)
            return optax.apply_updates(p, u), s

        return dense_step, inner

    @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
    def step(p, s, x, y):
        g = jax.grad(loss_fn)(p, s, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return step, tx


def time_steps(step, p, s, x, y, n):
    """Mean (wall, CPU) seconds per step over ``n`` steps, and the advanced (p, s) (inputs may be
    donated)."""
    p, s = step(p, s, x, y)  # the first call may hit a mask update; keep timing steady-state
    jax.block_until_ready(p)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        p, s = step(p, s, x, y)
    jax.block_until_ready(p)
    return ((time.perf_counter() - t) / n, (time.process_time() - c) / n), (p, s)


def ratio_rows(med: dict[str, float], algorithms=tuple(ALGOS)) -> dict[str, dict]:
    """Per algorithm: step / dense step, the update step's ratio and the amortised overhead @100."""
    dense = med["dense"]
    amortised = lambda step, upd: (99 * step + upd) / 100 / dense - 1  # noqa: E731
    rows = {}
    for algo in algorithms:
        row = {"step_ms": 1e3 * med[algo], "ratio_vs_dense": med[algo] / dense}
        masked, upd = med.get(f"{algo}@masked"), med.get(f"{algo}@update")
        if masked is not None:
            row["masked_ratio_vs_dense"] = masked / dense
        if upd is not None:
            row["update_step_ratio"] = upd / dense
            row["amortised_overhead_at_100"] = amortised(med[algo], upd)
            if masked is not None:
                row["masked_amortised_overhead_at_100"] = amortised(masked, upd)
        rows[algo] = row
    return rows


def bench_model(name, model, x, y, rounds, steps, donate, algorithms=tuple(ALGOS)):
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    runs = {"dense": make_step(model, None, donate=donate)}
    for algo, (rare, every) in ((a, ALGOS[a]) for a in algorithms):
        runs[algo] = make_step(model, sparsify(rare()), donate=donate)
        if every is not None:
            runs[f"{algo}@update"] = make_step(model, sparsify(every()), donate=donate)
        if rare().hard:  # params kept masked, no multiply in the forward pass
            runs[f"{algo}@masked"] = make_step(model, sparsify(rare()), True, donate)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (donated buffers must not be shared)
    states = {}
    for k, (_, tx) in runs.items():
        state = tx.init(copy(params))
        p = sj.apply_masks(copy(params), sj.masks_of(state)) if k.endswith("@masked") else params
        states[k] = (copy(p), state)
    for k, (step, _) in runs.items():  # compile outside the timed rounds
        states[k] = step(*states[k], x, y)
    times = {k: [] for k in runs}
    order = list(runs)
    for r in range(rounds):  # odd rounds run backwards: no variant always follows the same one
        for k in order if r % 2 == 0 else order[::-1]:
            dt, states[k] = time_steps(runs[k][0], *states[k], x, y, steps)
            times[k].append(dt)
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    masks = sj.masks_of(states[algorithms[0]][1])
    n_sparse = sum(int(np.size(m)) for m in sj.masks.sparse_leaves(masks))
    n_params = sum(int(np.size(p)) for p in jax.tree.leaves(params))
    packed = sum(int(np.size(m)) for m in sj.masks.sparse_leaves(sj.pack_masks(masks)))
    return {
        "model": name,
        "params": n_params,
        "dense_step_ms": 1e3 * wall["dense"],
        "dense_step_cpu_ms": 1e3 * cpu["dense"],
        "algorithms": ratio_rows(wall, algorithms),
        "algorithms_cpu_time": ratio_rows(cpu, algorithms),
        "mask_bytes_bool": n_sparse,
        "mask_bytes_packed": packed,
        "param_bytes_f32": 4 * n_params,
    }


def _cell(wall: dict, cpu: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    """``wall / cpu`` for one ratio, ``-`` where the algorithm has none."""
    if key not in wall:
        return "-"
    return f"{fmt.format(scale * wall[key])} / {fmt.format(scale * cpu[key])}"


def markdown(meta: dict, results: list[dict]) -> str:
    """The results as the markdown report committed under benchmarks/results/."""
    lines = [
        f"# Step overhead of `sj.sparsify` vs the plain optimizer ({meta['device']})",
        "",
        f"jax {meta['jax']}, load average {meta['load_avg_1m']:.1f}, {meta['mlp_rounds']} (MLP) / "
        f"{meta['rounds']} (CNN) interleaved rounds x {meta['steps_per_round']} steps, "
        f"batch {meta['batch']}, Adam, {'donated' if meta.get('donated', True) else 'no donated'} "
        "buffers (as `experiments.train` on this backend), mask metrics tracked (as the trainer); "
        "medians. Produced by `python benchmarks/step_overhead.py`. *params kept masked*: "
        "`sj.forward_params(..., assume_masked=True)` after masking the initial params (exact for "
        "masked-dense methods), so the forward pass has no mask multiply. Each cell: wall-clock / "
        "CPU-time ratio (CPU time sums all threads and excludes time stolen from a shared VM).",
    ]
    for r in results:
        lines += [
            "",
            f"## {r['model']}: {r['params']:,} params, dense step {r['dense_step_ms']:.2f} ms "
            f"({r['dense_step_cpu_ms']:.2f} ms CPU time)",
            "",
            f"Masks: {r['mask_bytes_bool']:,} B as bool (1 byte per sparsified weight), "
            f"{r['mask_bytes_packed']:,} B packed (1 bit); params {r['param_bytes_f32']:,} B (f32).",
            "",
            "| algorithm (90%; N:M 2:4, PGF 1:8) | non-update step / dense | same, params kept masked "
            "| update step / dense | amortised overhead @100 | same, params kept masked |",
            "|---|---|---|---|---|---|",
        ]
        for algo, row in r["algorithms"].items():
            cpu = r["algorithms_cpu_time"][algo]
            cells = [
                _cell(row, cpu, "ratio_vs_dense", "{:.3f}x"),
                _cell(row, cpu, "masked_ratio_vs_dense", "{:.3f}x"),
                _cell(row, cpu, "update_step_ratio", "{:.2f}x"),
                _cell(row, cpu, "amortised_overhead_at_100", "{:+.1f}%", 100),
                _cell(row, cpu, "masked_amortised_overhead_at_100", "{:+.1f}%", 100),
            ]
            lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds for the CNN")
    # MLP rounds take ~1 s, so many more fit; its 3-4 ms steps are also the most jitter-sensitive.
    ap.add_argument("--mlp-rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--donate",
        choices=("trainer", "yes", "no"),
        default="trainer",
        help="donate the step's buffers; trainer: as experiments.train (everywhere but on CPU)",
    )
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "step_overhead.json")
    )
    ap.add_argument("--models", nargs="+", choices=("mlp", "cnn"), default=["mlp", "cnn"])
    ap.add_argument("--algorithms", nargs="+", choices=tuple(ALGOS), default=list(ALGOS))
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: the MLP only, static only, batch 8, one round of one step",
    )
    args = ap.parse_args()
    if args.smoke:
        args.models, args.algorithms = ["mlp"], ["static"]
        args.rounds = args.mlp_rounds = args.steps = 1
        args.batch = 8
    donate = args.donate == "yes" or (args.donate == "trainer" and jax.default_backend() != "cpu")
    key = jax.random.PRNGKey(1)
    y = jax.random.randint(key, (args.batch,), 0, 10)
    inputs = {
        "mlp": (MLP(), (args.batch, 784), args.mlp_rounds),
        "cnn": (CNN(), (args.batch, 28, 28, 1), args.rounds),
    }
    results = []
    for name in args.models:
        model, shape, rounds = inputs[name]
        x = jax.random.normal(key, shape)
        algorithms = tuple(args.algorithms)
        results.append(bench_model(name, model, x, y, rounds, args.steps, donate, algorithms))
    meta = {
        "device": f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "jax": jax.__version__,
        "load_avg_1m": os.getloadavg()[0],
        "rounds": args.rounds,
        "mlp_rounds": args.mlp_rounds,
        "steps_per_round": args.steps,
        "batch": args.batch,
        "donated": donate,
    }
    text = markdown(meta, results)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
