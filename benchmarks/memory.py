"""Per-device peak memory of a sharded RigL step against the dense step (compiled memory analysis).

A model with one very large layer (``--size`` x ``--size`` kernel, 8192 by default, plus a small head) is
FSDP-sharded over 8 host devices; nothing is executed, every number comes from
``jax.jit(...).lower(...).compile().memory_analysis()`` of the SPMD-partitioned program (per device):
peak ~ arguments + outputs + temporaries - aliased.

- dense: Adam step on the sharded params;
- rigl (bool masks): ``sj.sparsify(adam, rigl)``, masks and ``ever_active`` as bool leaves in the state;
- rigl (packed masks): the same step with masks and ``ever_active`` kept as packed bits between steps
  (unpacked inside the step, packed again at its end);
- mask update alone: RigL's ``update_masks`` on sharded masks, params and grads; its temporaries are
  compared with one f32 leaf shard per device.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory.py [--size 8192]

Writes ``benchmarks/results/memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import optax

import sparsejax as sj
from sparsejax import sharding as shd

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def model_apply(params, x):
    """One very large ReLU layer and a small head."""
    h = jax.nn.relu(x @ params["big"]["kernel"])
    return h @ params["head"]["kernel"]


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model_apply(params, x), y).mean()


def analyse(fn, *args) -> dict[str, float]:
    """Compile ``fn`` on abstract sharded args; per-device bytes from the memory analysis."""
    t = time.perf_counter()
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    out = {
        "argument_bytes": m.argument_size_in_bytes,
        "output_bytes": m.output_size_in_bytes,
        "temp_bytes": m.temp_size_in_bytes,
        "alias_bytes": m.alias_size_in_bytes,
    }
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
    out["peak_bytes"] -= out["alias_bytes"]
    out["compile_s"] = time.perf_counter() - t
    return out


def abstract(tree, sh):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    n = args.size
    mesh = shd.make_mesh({"data": 1, "fsdp": -1, "model": 1})
    params = {
        "big": {"kernel": jax.ShapeDtypeStruct((n, n), jnp.float32)},
        "head": {"kernel": jax.ShapeDtypeStruct((n, 16), jnp.float32)},
    }
    psh = shd.param_shardings(params, mesh)
    params_a = abstract(params, psh)
    x = jax.ShapeDtypeStruct((args.batch, n), jnp.float32, sharding=shd.batch_sharding(mesh, 2))
    y = jax.ShapeDtypeStruct((args.batch,), jnp.int32, sharding=shd.batch_sharding(mesh, 1))
    algo = sj.rigl(args.sparsity, distribution="uniform", update_every=100, end_step=10_000)

    def build(tx):
        state = jax.eval_shape(tx.init, params)
        return abstract(state, shd.shardings(state, params, psh, mesh))

    dense_tx, sparse_tx = optax.adam(1e-3), sj.sparsify(optax.adam(1e-3), algo, track_metrics=True)

    def dense_step(p, s, x, y):
        g = jax.grad(loss_fn)(p, x, y)
        u, s = dense_tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    def sparse_step(p, s, x, y):
        g = jax.grad(lambda q: loss_fn(sj.forward_params(q, s), x, y))(p)
        u, s = sparse_tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    def with_masks(s, fn, *like):
        ever = fn(s.metrics.ever_active, *like)
        return s._replace(masks=fn(s.masks, *like), metrics=s.metrics._replace(ever_active=ever))

    def packed_step(p, s, x, y):
        p, s = sparse_step(p, with_masks(s, sj.unpack_masks, p), x, y)
        return p, with_masks(s, sj.pack_masks)

    sparse_state = build(sparse_tx)
    packed = jax.eval_shape(lambda s: with_masks(s, sj.pack_masks), sparse_state)
    # Packed masks keep their param's spec: packing runs along the last axis, the split is on axis 0.
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    packed_sh = shd.shardings(packed, params, psh, mesh)
    like_params = lambda t: sj.masks.map_sparse(lambda m, s: s, t, psh)  # noqa: E731
    packed_sh = packed_sh._replace(
        masks=like_params(packed.masks),
        metrics=packed_sh.metrics._replace(ever_active=like_params(packed.metrics.ever_active)),
    )
    packed_state = abstract(packed, jax.tree.map(lambda s: s or rep, packed_sh))

    def update_only(m, p, g):
        return algo.update_masks(m, p, g, jnp.int32(100), jax.random.PRNGKey(0))

    report = {
        "size": n, "batch": args.batch, "sparsity": args.sparsity,
        "devices": jax.device_count(), "mesh": dict(mesh.shape),
        "param_specs": {k: str(v["kernel"].spec) for k, v in psh.items()},
        "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
    }  # fmt: skip
    report["dense"] = analyse(dense_step, params_a, build(dense_tx), x, y)
    report["rigl_bool"] = analyse(sparse_step, params_a, sparse_state, x, y)
    report["rigl_packed"] = analyse(packed_step, params_a, packed_state, x, y)
    report["mask_update"] = analyse(update_only, sparse_state.masks, params_a, params_a)
    leaf_shard = n * n * 4 // jax.device_count()
    dense_peak = report["dense"]["peak_bytes"]
    report["ratios"] = {
        "rigl_bool_vs_dense": report["rigl_bool"]["peak_bytes"] / dense_peak,
        "rigl_packed_vs_dense": report["rigl_packed"]["peak_bytes"] / dense_peak,
        "mask_update_temp_in_leaf_shards": report["mask_update"]["temp_bytes"] / leaf_shard,
    }
    report["leaf_shard_bytes"] = leaf_shard
    report["targets"] = {
        "rigl_bool_vs_dense": 1.3,
        "rigl_packed_vs_dense": 1.1,
        "mask_update_temp_in_leaf_shards": 1.0,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "memory.json"), "w") as f:
        json.dump(report, f, indent=2)
    mib = 2**20
    lines = [
        f"# Peak memory per device: sharded RigL vs dense ({n}x{n} layer, "
        f"{jax.device_count()} host devices, mesh {dict(mesh.shape)})",
        "",
        "From `compile().memory_analysis()` of the SPMD program (per device); nothing executed.",
        "",
        "| program | arguments MiB | outputs MiB | temporaries MiB | peak MiB | vs dense |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("dense", "rigl_bool", "rigl_packed", "mask_update"):
        r = report[key]
        lines.append(
            f"| {key} | {r['argument_bytes'] / mib:.1f} | {r['output_bytes'] / mib:.1f} | "
            f"{r['temp_bytes'] / mib:.1f} | {r['peak_bytes'] / mib:.1f} | "
            f"{r['peak_bytes'] / dense_peak:.3f} |"
        )
    lines += [
        "",
        f"One f32 shard of the big leaf: {leaf_shard / mib:.1f} MiB per device. Mask-update temporaries: "
        f"{report['ratios']['mask_update_temp_in_leaf_shards']:.2f} leaf shards (target <= 1).",
        "",
        "| ratio | measured | target |",
        "| --- | --- | --- |",
    ]
    for k, v in report["ratios"].items():
        lines.append(f"| {k} | {v:.3f} | <= {report['targets'][k]} |")
    with open(os.path.join(RESULTS, "memory.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
