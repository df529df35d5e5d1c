"""Sparse training that pays in wall-clock: dense vs block RigL on compressed layers, whole train steps.

Two networks, each dense (``nn.Dense``, plain momentum SGD) and block-sparse at 90% and 50% of its
128x128 blocks, trained by block RigL (``sparsify(momentum, rigl)``):

- ``mlp``: 2048 -> 2048 -> 2048 -> 10, batch 256 (the two hidden layers block-sparse);
- ``vit_mlp``: a ViT-S-like stack of MLP blocks (LayerNorm, 384 -> 1536 -> GELU -> 384, residual) on
  8 x 196 tokens, mean-pooled into a dense head (every fc1/fc2 block-sparse).

Block-sparse variants: ``compressed`` (``CompressedBlockDense``: params are the stored blocks, the
topology lives in the sparse state, dense-gradient block norms on update steps only; the ViT's MLP
blocks are ``CompressedBlockMLP``, fused: only the hidden panels fc2 reads are computed), ``masked``
(``BlockSparseDense`` with ``dense_weight_grad=True``: a dense kernel and a dense gradient every step)
and, on CPU, ``compressed_eigen``: the compressed step compiled with its dots on Eigen
(``kernels_pallas.xla_cpu``, ``--config.xla_cpu_dots=eigen`` in ``experiments.train``); dense and
the rest keep XLA's default (YNNPACK), the faster library for dense steps. ``compressed_unfused``
(the ViT's MLP blocks as two layers) is timed only when asked for (``build_case(kinds=...)``,
``profile_step.py --kind``).
Every jitted step runs in this one process, variants interleaved round by round (the order rotating),
medians of wall-clock and of process CPU time (which leaves out other processes on a shared machine):

- speedup: dense step time / variant step time (a normal step, no mask update);
- amortised: dense / ((99 normal + 1 mask-update step) / 100), ``update_every=100``;
- limit: the FLOP ratio, dense / block-sparse matmul FLOPs of a step (forward, dX, dW);
- bound: what the limit leaves of the whole step (Amdahl): dense / (rest + products / ratio), where
  rest is the same step with every fc replaced by ``NoMatmul`` (LayerNorm, activations, residuals,
  optimizer, head: the work sparsity does not shrink), products = dense - rest and ratio the fc
  layers' FLOP ratio, timed interleaved with the others.

``--accuracy-seeds N`` also trains ``configs/block_rigl_mlp.py`` and ``configs/block_rigl_vit.py``
(mnist5k) compressed and masked-dense for N seeds each through ``experiments.train`` and reports the
held-out accuracies.

    python benchmarks/sparse_training_speed.py [--out benchmarks/results] [--rounds 7] [--steps 5]
    python benchmarks/sparse_training_speed.py --smoke --out /tmp/speed   # tiny sizes (CI)

Writes ``sparse_training_speed_<device>.{json,md}`` under ``--out``, naming the machine and its load.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402

import kernels_pallas as kp  # noqa: E402
import sparsejax as sj  # noqa: E402
from experiments.models.block_mlp import BlockMLP, LayerSpec  # noqa: E402
from experiments.models.block_vit import mlp_block  # noqa: E402
from kernels_pallas import xla_cpu  # noqa: E402

UPDATE_EVERY = 100
LR, MOMENTUM = 0.01, 0.9
KINDS = ("compressed", "masked")
EIGEN = "compressed_eigen"  # the compressed step with its dots on Eigen (CPU only)
UNFUSED = "compressed_unfused"  # vit_mlp: the MLP blocks' two layers unfused (not timed by default)
SPARSE_KINDS = (*KINDS, EIGEN, UNFUSED)
SIZES = {  # block; mlp input, hidden, batch; vit dim, mlp dim, depth, batch, tokens
    "full": dict(block=128, mlp=(2048, (2048, 2048), 256), vit=(384, 1536, 4, 8, 196)),
    "smoke": dict(block=16, mlp=(64, (64, 64), 16), vit=(32, 64, 1, 2, 8)),
}


class NoMatmul(nn.Module):
    """A stand-in for ``nn.Dense(features)`` without its product: the input cut or tiled to width, plus
    the bias. Timing a network with it gives the step's work that sparsity does not shrink."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        reps = -(-self.features // x.shape[-1])
        return jnp.tile(x, (1,) * (x.ndim - 1) + (reps,))[..., : self.features] + bias


class DenseMlpBlock(nn.Module):
    """``fc1`` -> GELU -> ``fc2`` with ``nn.Dense`` layers (``NoMatmul`` ones if not ``matmul``)."""

    mlp_dim: int
    matmul: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fc = nn.Dense if self.matmul else NoMatmul
        return fc(x.shape[-1], name="fc2")(nn.gelu(fc(self.mlp_dim, name="fc1")(x)))


class MlpStack(nn.Module):
    """``depth`` pre-LN MLP blocks on (batch, tokens, dim) inputs, mean pool, dense head; ``kind``:
    dense, compressed (``CompressedBlockMLP``, fused), compressed_unfused (its two layers one after
    the other), masked or none (``NoMatmul`` for every fc)."""

    depth: int
    mlp_dim: int
    kind: str
    block_size: int = 128
    density: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        compressed = self.kind in ("compressed", UNFUSED)
        spec = LayerSpec(self.block_size, self.density, "auto", True, compressed)
        for i in range(self.depth):
            h, name = nn.LayerNorm(name=f"ln_{i}")(x), f"block{i}_mlp"  # before "head"
            if self.kind in ("dense", "none"):
                block = DenseMlpBlock(self.mlp_dim, self.kind == "dense", name=name)
            else:
                block = mlp_block(spec, self.mlp_dim, name, fuse=self.kind != UNFUSED)
            x = x + block(h)
        return nn.Dense(10, name="head")(x.mean(axis=1))


class DenseMLP(nn.Module):
    """``BlockMLP`` with ordinary dense layers (the same parameter names); ``matmul=False``:
    ``NoMatmul`` hidden layers."""

    hidden: tuple[int, ...]
    matmul: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.relu((nn.Dense if self.matmul else NoMatmul)(width, name=f"block_{i}")(x))
        return nn.Dense(10, name="head")(x)


def _xent(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def dense_variant(model: nn.Module, x, y, key) -> dict:
    """Plain momentum SGD on the dense model: ``{"step", "args"}``."""
    params = jax.jit(model.init)(key, x)["params"]
    tx = optax.sgd(LR, momentum=MOMENTUM)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(lambda p: _xent(model.apply({"params": p}, x), y))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return {"step": step, "args": (params, jax.jit(tx.init)(params), x, y)}


def sparse_variant(
    model, dense_model, compressed: bool, sparsity: float, block: int, x, y, key, options=None
):
    """Block RigL on ``model``: the step (compiled with XLA ``options``) and its normal-step and
    update-step arguments."""
    kw = dict(sparsity=sparsity, block_size=(block, block), distribution="uniform")
    kw.update(dense_last=True, update_every=UPDATE_EVERY, end_step=10**6)
    params = jax.jit(model.init)(key, x)["params"]
    if compressed:
        dense_like = jax.eval_shape(dense_model.init, key, x)["params"]
        algo = kp.compressed_algorithm(sj.rigl, dense_like, **kw)
    else:
        algo = sj.rigl(**kw)
    tx = sj.sparsify(optax.sgd(LR, momentum=MOMENTUM), algo, track_metrics=True)
    state = jax.jit(tx.init)(params)
    if not compressed:
        params = jax.jit(sj.apply_masks)(params, sj.masks_of(state))

    @functools.partial(jax.jit, compiler_options=options)
    def step(p, s, x, y):
        def loss(p, s):
            fwd = sj.forward_params(p, s, assume_masked=not compressed)
            return _xent(model.apply({"params": fwd}, x), y)

        _, (g, ag) = sj.value_and_grad(loss)(p, s)
        u, s = tx.update(g, s, p, algo_grads=ag)
        return optax.apply_updates(p, u), s

    # Step 1 is a normal step; step UPDATE_EVERY runs the mask update (the same compiled program).
    at = lambda t: (params, state._replace(step=jnp.full((), t, jnp.int32)), x, y)  # noqa: E731
    return {"step": step, "args": at(1), "update_args": at(UPDATE_EVERY)}


def time_calls(fn: Callable, args: tuple, n: int) -> tuple[float, float]:
    """Mean (wall, CPU) seconds of ``n`` calls of ``fn(*args)`` on the same inputs."""
    jax.block_until_ready(fn(*args))
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def interleaved(timed: dict[str, tuple[Callable, tuple]], rounds: int, steps: int) -> dict:
    """Median (wall, CPU) seconds per call of each entry, rounds interleaved, the order rotating."""
    names, samples = list(timed), {k: [] for k in timed}
    for fn, args in timed.values():  # compile and warm up outside the timed rounds
        jax.block_until_ready(fn(*args))
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(time_calls(*timed[name], steps))
    return {
        k: tuple(statistics.median(s[i] for s in v) for i in (0, 1)) for k, v in samples.items()
    }


def flop_limit(layers: list[tuple[int, int]], sparse: list[bool], density: float) -> float:
    """Dense / sparse matmul FLOPs of a step (every product of a (K, N) layer scales with K * N)."""
    dense = sum(k * n for k, n in layers)
    return dense / sum(k * n * (density if s else 1.0) for (k, n), s in zip(layers, sparse))


def default_kinds() -> tuple[str, ...]:
    """The variants a case times here: ``EIGEN`` only where it differs from ``compressed`` (CPU)."""
    return ("dense", "none", *KINDS) + ((EIGEN,) if xla_cpu.compiler_options("eigen") else ())


def build_case(
    case: str, sizes: dict, sparsity: float, kinds: tuple[str, ...] | None = None
) -> dict:
    """The jitted steps of one network at one sparsity: ``{"variants": {kind: dense_variant or
    sparse_variant dict}, "x", "layers", "flags"}`` for ``kinds`` among dense, none (``NoMatmul``),
    compressed, masked and compressed_eigen (``None``: ``default_kinds()``); ``layers``/``flags``:
    each product's (K, N) and whether it is sparse."""
    key, (kx, ky) = jax.random.PRNGKey(0), jax.random.split(jax.random.PRNGKey(1))
    block, density = sizes["block"], 1.0 - sparsity
    if case == "mlp":
        width, hidden, m = sizes["mlp"]
        x = jax.random.normal(kx, (m, width))
        dense, none = DenseMLP(hidden), DenseMLP(hidden, matmul=False)
        spec = dict(hidden=hidden, block_size=block, density=density, impl="auto")
        sparse = {k: BlockMLP(**spec, compressed=k == "compressed") for k in KINDS}
        sparse[UNFUSED] = sparse["compressed"]  # no MLP blocks to fuse
        widths = [width, *hidden]
        layers, flags = [*zip(widths[:-1], widths[1:]), (hidden[-1], 10)], [True] * len(hidden)
    else:
        dim, mlp_dim, depth, batch, tokens = sizes["vit"]
        x = jax.random.normal(kx, (batch, tokens, dim))
        dense, none = MlpStack(depth, mlp_dim, "dense"), MlpStack(depth, mlp_dim, "none")
        sparse = {k: MlpStack(depth, mlp_dim, k, block, density) for k in (*KINDS, UNFUSED)}
        layers, flags = [(dim, mlp_dim), (mlp_dim, dim)] * depth + [(dim, 10)], [True] * 2 * depth
    y = jax.random.randint(ky, (x.shape[0],), 0, 10)
    models, variants = {"dense": dense, "none": none, **sparse, EIGEN: sparse["compressed"]}, {}
    for kind in kinds or default_kinds():
        if kind in SPARSE_KINDS:
            args = (dense, kind != "masked", sparsity, block, x, y, key)
            options = xla_cpu.compiler_options("eigen") if kind == EIGEN else None
            variants[kind] = sparse_variant(models[kind], *args, options=options)
        else:
            variants[kind] = dense_variant(models[kind], x, y, key)
    return dict(variants=variants, x=x, layers=layers, flags=flags)


def bench_case(case: str, sizes: dict, sparsity: float, rounds: int, steps: int) -> dict:
    """One network at one sparsity: dense, compressed and masked block RigL, interleaved."""
    built = build_case(case, sizes, sparsity)
    variants, x, layers, flags = (built[k] for k in ("variants", "x", "layers", "flags"))
    block, density = sizes["block"], 1.0 - sparsity
    timed = {name: (v["step"], v["args"]) for name, v in variants.items()}
    sparse_kinds = [k for k in variants if k in SPARSE_KINDS]
    timed.update(
        {f"{k}@update": (variants[k]["step"], variants[k]["update_args"]) for k in sparse_kinds}
    )
    both = interleaved(timed, rounds, steps)
    row = dict(case=case, sparsity=sparsity, block=block, rows=int(np.prod(x.shape[:-1])))
    row["limit"] = round(flop_limit(layers, flags + [False], density), 2)
    shrink = flop_limit(layers[:-1], flags, density)  # the fc layers' own ratio (no head)
    for clock, i in (("", 0), ("cpu_", 1)):  # wall-clock, then CPU time
        med = {k: v[i] for k, v in both.items()}
        row[f"{clock}dense_ms"] = round(1e3 * med["dense"], 3)
        # Amdahl: the step's work outside the products stays, the products shrink to the FLOP ratio.
        rest, products = med["none"], max(med["dense"] - med["none"], 0.0)
        row[f"{clock}none_ms"] = round(1e3 * rest, 3)
        row[f"{clock}bound"] = round(med["dense"] / (rest + products / shrink), 2)
        for kind in sparse_kinds:
            normal, update = med[kind], med[f"{kind}@update"]
            amortised = ((UPDATE_EVERY - 1) * normal + update) / UPDATE_EVERY
            row[f"{clock}{kind}_ms"] = round(1e3 * normal, 3)
            row[f"{clock}{kind}_update_ms"] = round(1e3 * update, 3)
            row[f"{clock}{kind}_speedup"] = round(med["dense"] / normal, 3)
            row[f"{clock}{kind}_amortised_speedup"] = round(med["dense"] / amortised, 3)
    return row


ACCURACY_CONFIGS = ("block_rigl_mlp", "block_rigl_vit")  # mnist5k; the ViT's compressed MLP fused


def accuracy(seeds: int) -> dict[str, dict[str, list[float]]]:
    """Held-out accuracy of each of ``ACCURACY_CONFIGS``, compressed and masked-dense, per seed."""
    from experiments import train

    out = {name: {kind: [] for kind in KINDS} for name in ACCURACY_CONFIGS}
    for name in ACCURACY_CONFIGS:
        for seed in range(seeds):
            for kind in KINDS:
                config = importlib.import_module(f"configs.{name}").get_config()
                config.seed, config.model.compressed = seed, kind == "compressed"
                config.eval_every = config.checkpoint_every = 0
                with tempfile.TemporaryDirectory() as workdir:
                    result = train.train_and_evaluate(config, workdir)
                out[name][kind].append(round(result["eval_accuracy"], 4))
                print(f"accuracy {name} {kind} seed {seed}: {out[name][kind][-1]}", flush=True)
    return out


def markdown(meta: dict, rows: list[dict], acc: dict | None) -> str:
    """The results table: speedups as wall-clock / CPU-time ratios (higher is faster)."""
    cmd = "python benchmarks/sparse_training_speed.py" + (" --smoke" if meta["smoke"] else "")
    lines = [
        "# Sparse training speed: dense vs block RigL (compressed and masked-dense)",
        "",
        f"{meta['device']} ({meta['host']}, {meta['cpu_count']} cores), jax {meta['jax']}, "
        f"{meta['memory']}; load "
        f"average before {meta['loadavg_before']}, after {meta['loadavg_after']}; {meta['time']}; "
        f"{meta['rounds']} interleaved rounds x {meta['steps']} steps, medians; `{cmd}`.",
        "",
        f"Whole jitted train steps (momentum SGD), block RigL on {meta['sizes']['block']}x"
        f"{meta['sizes']['block']} blocks; compressed: `CompressedBlockDense` layers, the ViT's MLP "
        "blocks fused (`CompressedBlockMLP`: only the hidden units fc2 reads). Speedup: dense step "
        "/ block-RigL step, as **wall-clock / CPU-time** ratios; amortised: 99 normal steps + 1 "
        f"mask-update step (update_every={UPDATE_EVERY}); limit: the FLOP ratio of the matmuls; "
        "bound: dense / (no-matmul step + (dense - no-matmul) / limit), what the limit leaves of the "
        "whole step; Eigen-dots: the compressed step compiled with its dots on Eigen "
        "(`--config.xla_cpu_dots=eigen`; every other step keeps XLA's default, YNNPACK).",
        "",
        "| case | sparsity | dense ms | no-matmul ms | compressed ms | update ms | compressed "
        "speedup | amortised | masked speedup | masked amortised | limit | bound | Eigen-dots "
        "compressed ms | Eigen-dots speedup | Eigen-dots amortised |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pair = lambda r, key: f"{r[key]:.2f}x / {r['cpu_' + key]:.2f}x"  # noqa: E731
    for r in rows:
        eigen = "| - | - | - |"  # not timed: off CPU compressed_eigen is the compressed step
        if f"{EIGEN}_ms" in r:
            eigen = (
                f"| {r[EIGEN + '_ms']:.1f} | {pair(r, EIGEN + '_speedup')} "
                f"| {pair(r, EIGEN + '_amortised_speedup')} |"
            )
        lines.append(
            f"| {r['case']} | {r['sparsity']:.0%} | {r['dense_ms']:.1f} | {r['none_ms']:.1f} "
            f"| {r['compressed_ms']:.1f} "
            f"| {r['compressed_update_ms']:.1f} | {pair(r, 'compressed_speedup')} "
            f"| {pair(r, 'compressed_amortised_speedup')} | {pair(r, 'masked_speedup')} "
            f"| {pair(r, 'masked_amortised_speedup')} | {r['limit']:.2f}x "
            f"| {r['bound']:.2f}x / {r['cpu_bound']:.2f}x {eigen}"
        )
    for name, kinds in (acc or {}).items():
        lines += ["", f"Held-out accuracy, `configs/{name}.py` on mnist5k, per seed:", ""]
        for kind, v in kinds.items():
            lines.append(f"- {kind}: {v} (mean {np.mean(v):.4f}, sd {np.std(v):.4f})")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; unset ones take the full (or ``--smoke``) defaults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 90%% only, no accuracy (CI)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--rounds", type=int, help="interleaved rounds (7; smoke 2)")
    p.add_argument("--steps", type=int, help="calls per variant per round (5; smoke 2)")
    p.add_argument("--sparsities", type=float, nargs="+", help="(0.9 0.5; smoke 0.9)")
    p.add_argument("--cases", nargs="+", default=["mlp", "vit_mlp"], choices=["mlp", "vit_mlp"])
    p.add_argument("--accuracy-seeds", type=int, help="0 skips (3; smoke 0)")
    p.add_argument("--tag", help="results file suffix (default: the device slug)")
    args = p.parse_args(argv)
    full = dict(rounds=7, steps=5, sparsities=[0.9, 0.5], accuracy_seeds=3)
    smoke = dict(rounds=2, steps=2, sparsities=[0.9], accuracy_seeds=0)
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> None:
    """Run the cases and write the JSON and Markdown results."""
    args = parse_args(argv)
    jax.config.update("jax_threefry_partitionable", False)
    sizes = SIZES["smoke" if args.smoke else "full"]
    tag = args.tag or machine.device_slug()
    start, before = time.perf_counter(), machine.describe()
    rows = []
    for case in args.cases:
        for s in args.sparsities:
            rows.append(bench_case(case, sizes, s, args.rounds, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    acc = accuracy(args.accuracy_seeds) if args.accuracy_seeds else None
    meta = {k: before[k] for k in ("device", "host", "cpu_count", "jax", "memory")}
    meta.update(loadavg_before=before["loadavg"], loadavg_after=machine.load_average())
    meta.update(rounds=args.rounds, steps=args.steps, smoke=args.smoke, sizes=sizes)
    meta.update(time=time.strftime("%Y-%m-%d %H:%M:%S"), seconds=round(time.perf_counter() - start))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sparse_training_speed_{tag}"
    payload = {"meta": meta, "rows": rows, "accuracy": acc}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{stem}.md").write_text(markdown(meta, rows, acc))
    print(f"wrote {out}/{stem}.{{json,md}} in {meta['seconds']} s")


if __name__ == "__main__":
    main()
