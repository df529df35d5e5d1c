r"""The papers' orderings at small scale: mnist5k, an MLP and a small CNN, several seeds, one step budget.

    python benchmarks/reproduce.py [--quick] [--steps 600] [--seeds 3] [--out benchmarks/results]

Unstructured at 80/90/95%: dense, static (ERK, uniform), GMP, SET, RigL, GraNet, SNIP, SPDF (static ERK,
dense from 75%), lottery tickets (IMP, 3 rounds, rewound to init). N:M at 2:4, 1:4, 1:8: STE, SR-STE,
PGF (MDGF, linear decay to 0 at 75% of training), MaskLLM. Every run trains in-process with one
jitted ``lax.scan`` over all steps (``sj.forward_params`` in the loss, ``sj.sparsify`` optimizer); seeds
reuse the compiled program. Writes ``reproduce.md`` (mean +- std of held-out accuracy, and for each
published ordering whether it reproduced), ``reproduce.json`` and ``reproduce.png``; the report itself
(tables, verdicts, plot) is ``reproduce_report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparsejax as sj
from sparsejax.algorithms.drop_grow import prune_global

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # reproduce_report; experiments/ lives in the checkout
from reproduce_report import NM, PATTERNS, SPARSITIES, UNSTRUCTURED, write  # noqa: E402

from experiments import sources  # noqa: E402


class MLP(nn.Module):
    """784-hidden-10, ReLU (widths divisible by 8, so every N:M pattern applies)."""

    hidden: tuple[int, ...] = (256, 128)

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(10)(x)


class CNN(nn.Module):
    """Two strided 3x3 convolutions (16, 32 channels), a 128-unit Dense layer and the head."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


MODELS = {"mlp": MLP, "cnn": CNN}
# Per dataset: the MLP's hidden widths (fashion_mnist: the SET paper's 784-1000-1000-1000-10).
DATASETS = {"mnist5k": {"mlp": (256, 128)}, "fashion_mnist": {"mlp": (1000, 1000, 1000)}}


def make_algo(name: str, level: float | tuple[int, int] | None, steps: int) -> sj.SparseAlgorithm:
    """The algorithm ``name`` at sparsity or N:M ``level`` for a run of ``steps`` steps."""
    every, end = max(steps // 30, 5), (3 * steps) // 4
    drop = dict(update_every=every, end_step=end, drop_fraction=0.3)
    if name == "dense":
        return sj.dense()
    if name in NM:
        n, m = level
        if name == "pgf":
            return sj.pgf(
                n, m, pgf_decay="linear", pgf_coef=1.0 / end, end_step=end, skip_indivisible=True
            )
        if name == "maskllm":
            return sj.maskllm(n, m, num_steps=steps, skip_indivisible=True)
        if name == "sr_ste":
            return sj.sr_ste(n, m, skip_indivisible=True)
        return sj.ste(n=n, m=m, skip_indivisible=True)
    s = float(level)
    return {
        "static_erk": lambda: sj.static(s, distribution="erk"),
        "static_uniform": lambda: sj.static(s, distribution="uniform"),
        "gmp": lambda: sj.gmp(s, update_every=every, start_step=steps // 10, end_step=end),
        "set": lambda: sj.set_sparse(s, distribution="erk", **drop),
        "rigl": lambda: sj.rigl(s, distribution="erk", **drop),
        "granet": lambda: sj.granet(s, distribution="erk", start_step=steps // 10, **drop),
        "snip": lambda: sj.snip(s),
        # sparse (static ERK) for 75% of training, then dense fine-tuning
        "spdf": lambda: sj.spdf(s, sparse_phase="static", release_step=end, distribution="erk"),
    }[name]()


def load_data(name: str = "mnist5k") -> dict[str, jax.Array]:
    """mnist5k's fixed 4,000/1,000 split (the one ``experiments`` uses) or Fashion-MNIST's official
    60,000/10,000 one (its idx files), standardised, NHWC float32."""
    if name == "fashion_mnist":
        directory = sources.IDX_DIRS[name]
        if not sources.idx_files_present(directory):
            sys.exit(
                f"error: {directory}: no Fashion-MNIST idx files; apt-get install dataset-fashion-mnist"
            )
        train, test, _ = sources.idx(name, directory, "train", "test")
    else:
        train, test, _ = sources.embedded(name)
    x_tr, x_te = train.images.astype(np.float32) / 255.0, test.images.astype(np.float32) / 255.0
    mean, std = x_tr.mean(), x_tr.std()
    return {
        "x_train": jnp.asarray((x_tr - mean) / std), "y_train": jnp.asarray(train.labels),
        "x_test": jnp.asarray((x_te - mean) / std), "y_test": jnp.asarray(test.labels),
    }  # fmt: skip


def compile_training(model: nn.Module, algo: sj.SparseAlgorithm, steps: int, lr: float):
    """``init(key) -> (params, state)`` and ``train(params, state, data, idx) -> (accuracy, sparsity,
    final loss, params)``, each jitted once per algorithm (seeds and IMP rounds reuse them)."""
    inner = optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9)
    tx = sj.sparsify(inner, algo)

    @jax.jit
    def init(key):
        params = model.init(key, jnp.zeros((1, 28, 28, 1)))["params"]
        return params, sj.sparsify(inner, algo, key=jax.random.fold_in(key, 1)).init(params)

    def loss_fn(p, s, x, y):
        logits = model.apply({"params": sj.forward_params(p, s)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad_fn = sj.value_and_grad(loss_fn)  # also the gradients of learned algorithm state (MaskLLM)

    @jax.jit
    def train(params, state, data, idx):
        def body(carry, ix):
            p, s = carry
            loss, (g, ga) = grad_fn(p, s, data["x_train"][ix], data["y_train"][ix])
            u, s = tx.update(g, s, p, algo_grads=ga)
            return (optax.apply_updates(p, u), s), loss

        (p, s), losses = jax.lax.scan(body, (params, state), idx)
        fwd = sj.forward_params(p, s)
        logits = model.apply({"params": fwd}, data["x_test"])
        acc = jnp.mean(jnp.argmax(logits, -1) == data["y_test"])
        kernels = [w for w in jax.tree.leaves(fwd) if w.ndim >= 2]
        zeros = sum(jnp.sum(w == 0) for w in kernels) / sum(w.size for w in kernels)
        return acc, zeros, losses[-20:].mean(), p

    return init, train


def make_runner(model: nn.Module, algo: sj.SparseAlgorithm, steps: int, lr: float):
    """``run(seed, data, batch_idx) -> (accuracy, sparsity, final loss)``; compiles once per algorithm."""
    init, train = compile_training(model, algo, steps, lr)

    def run(seed: int, data: dict[str, jax.Array], idx: np.ndarray) -> tuple[float, float, float]:
        params, state = init(jax.random.PRNGKey(seed))
        return tuple(float(v) for v in train(params, state, data, jnp.asarray(idx))[:3])

    return run


def make_imp_runner(model: nn.Module, sparsity: float, steps: int, lr: float, rounds: int = 3):
    """Lottery tickets (Frankle & Carbin 2019): train dense, then ``rounds`` times prune globally by
    ``|w|`` to ``1 - (1 - sparsity)^(r / rounds)`` and rewind the survivors to the initialisation; the
    last round's result. Each round trains ``steps`` steps (so IMP costs ``rounds + 1`` runs)."""
    init, train = compile_training(model, sj.static(0.0), steps, lr)  # masks set per round
    prune = jax.jit(lambda m, p, keep: prune_global(m, p, keep, jax.random.PRNGKey(0)))

    def run(seed: int, data: dict[str, jax.Array], idx: np.ndarray) -> tuple[float, float, float]:
        params, state = init(jax.random.PRNGKey(seed))
        masks, idx = sj.masks_of(state), jnp.asarray(idx)
        total = sum(int(m.size) for m in sj.masks.sparse_leaves(masks))
        for r in range(rounds + 1):
            out = train(sj.apply_masks(params, masks), state._replace(masks=masks), data, idx)
            keep = round(total * (1.0 - sparsity) ** ((r + 1) / rounds))
            masks = prune(masks, out[3], jnp.int32(keep)) if r < rounds else masks
        return tuple(float(v) for v in out[:3])

    return run


def batch_indices(seed: int, steps: int, batch: int, n: int) -> np.ndarray:
    """``(steps, batch)`` example indices: reshuffled epochs, a pure function of the seed."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch // n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch].reshape(
        steps, batch
    )


def plan(quick: bool, models: list[str], core: bool) -> list[tuple[str, str, Any]]:
    """(model, algorithm, level) of every configuration; ``core``: 90% and 1:8 only, no GMP/GraNet."""
    if quick:
        return [("mlp", "dense", None)] + [
            ("mlp", a, 0.9) for a in ("static_erk", "set", "rigl", "snip", "spdf", "imp")
        ] + [("mlp", a, (1, 8)) for a in NM]  # fmt: skip
    unstructured = UNSTRUCTURED[:2] + UNSTRUCTURED[3:5] if core else UNSTRUCTURED
    out = []
    for model in models:
        out.append((model, "dense", None))
        out += [(model, a, s) for s in ((0.9,) if core else SPARSITIES) for a in unstructured]
        out += [(model, a, p) for p in (((1, 8),) if core else PATTERNS) for a in NM]
    return out


def _level_name(level: float | tuple[int, int] | None) -> str:
    return (
        "dense"
        if level is None
        else f"{level[0]}:{level[1]}"
        if isinstance(level, tuple)
        else str(level)
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="1 seed, 90%% / 1:8, MLP, a few algorithms"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="steps per run (default 600, quick 120)"
    )
    ap.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3)")
    ap.add_argument("--data", default="mnist5k", choices=sorted(DATASETS))
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    ap.add_argument(
        "--algorithms",
        default="",
        help="comma-separated subset of the grid's algorithms, dense included (default all)",
    )
    ap.add_argument(
        "--levels", default="", help="comma-separated subset: 0.8, 0.9, 0.95, 2:4, 1:4, 1:8"
    )
    ap.add_argument("--core", action="store_true", help="only 90%% and 1:8, no GMP/GraNet")
    ap.add_argument("--tag", default="", help="suffix of the output files (reproduce<tag>.md)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    steps = args.steps or (120 if args.quick else 600)
    seeds = args.seeds or (1 if args.quick else 3)
    data = load_data(args.data)
    n_train = int(data["y_train"].shape[0])
    idx = {s: batch_indices(s, steps, args.batch, n_train) for s in range(seeds)}
    records, t0 = [], time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    data_tag = "" if args.data == "mnist5k" else f"_{args.data}"
    stem = "reproduce" + data_tag + ("_quick" if args.quick else "") + args.tag
    grid = plan(args.quick, args.models.split(","), args.core)
    if args.algorithms:
        chosen = set(args.algorithms.split(","))
        if chosen - {"dense", *UNSTRUCTURED, *NM}:
            sys.exit(f"error: --algorithms: unknown {', '.join(sorted(chosen - {*UNSTRUCTURED, *NM}))}; "
                     f"allowed: {', '.join((*UNSTRUCTURED, *NM))}")  # fmt: skip
        grid = [g for g in grid if g[1] in chosen]
    if args.levels:  # e.g. "0.8,0.95,2:4": resume a grid a level at a time
        grid = [g for g in grid if _level_name(g[2]) in args.levels.split(",")]
    hidden = DATASETS[args.data]["mlp"]
    for model_name, algo_name, level in grid:
        t = time.perf_counter()
        model = MLP(hidden) if model_name == "mlp" else MODELS[model_name]()
        if algo_name == "imp":
            run = make_imp_runner(model, float(level), steps, args.lr)
        else:
            run = make_runner(model, make_algo(algo_name, level, steps), steps, args.lr)
        results = [run(s, data, idx[s]) for s in range(seeds)]
        acc, zeros, loss = (np.asarray(v) for v in zip(*results))
        records.append({
            "model": model_name, "algorithm": algo_name,
            "level": list(level) if isinstance(level, tuple) else level,
            "accuracy": acc.tolist(), "sparsity": float(zeros.mean()), "train_loss": float(loss.mean()),
            "seconds": time.perf_counter() - t,
        })  # fmt: skip
        print(f"{model_name:4s} {algo_name:15s} {str(level):7s} acc {acc.mean():.4f} +- {acc.std():.4f} "
              f"sparsity {zeros.mean():.3f} ({time.perf_counter() - t:.1f}s)", flush=True)  # fmt: skip
        with open(
            os.path.join(args.out, stem + ".partial.json"), "w"
        ) as f:  # what an interrupted run keeps
            json.dump({"records": records}, f)
    meta = {
        "data": args.data, "n_train": n_train, "mlp": f"MLP 784-{'-'.join(map(str, hidden))}-10",
        "algorithms": args.algorithms, "levels": args.levels, "quick": args.quick, "core": args.core, "models": args.models, "steps": steps, "seeds": seeds, "batch": args.batch, "lr": args.lr,
        "seconds": time.perf_counter() - t0, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "jax": jax.__version__, "backend": jax.default_backend(), "tag": args.tag,
    }  # fmt: skip
    print(write(os.path.join(args.out, stem), {"meta": meta, "records": records}))
    os.remove(os.path.join(args.out, stem + ".partial.json"))
    return {"meta": meta, "records": records}


if __name__ == "__main__":
    main()
