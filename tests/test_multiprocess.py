"""Two JAX processes on localhost (gloo CPU collectives, 2 host devices each) train RigL on a small MLP
with FSDP-sharded params and masks; the result equals one process with the same 4 devices.

Each process feeds only its rows of every batch, saves and restores an orbax checkpoint of the sharded
state together with the other process, and process 0 alone writes the result. Run as a script, this file
is the worker: ``python tests/test_multiprocess.py OUT [COORDINATOR NUM_PROCESSES PROCESS_ID]``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from _subprocess import ROOT, free_port, spawn, wait_all


def worker(out: str, coordinator: str | None, num_processes: int, process_id: int) -> None:
    """Train 4 RigL steps on a ``data=2 x fsdp=2`` mesh of 4 global devices; write params and masks."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    from experiments import multihost

    multihost.initialize(coordinator, num_processes, process_id)
    import jax
    import jax.numpy as jnp
    import optax
    import orbax.checkpoint as ocp
    from conftest import MLP, make_step
    from jax.experimental import multihost_utils

    import sparsejax as sj
    from sparsejax import sharding as shd

    assert jax.device_count() == 4 and jax.process_count() == num_processes
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "model": 1})
    model = MLP(hidden=(64, 32))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (32, 48)))  # the same on every process
    y = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (32,), 0, 10))
    params = model.init(jax.random.PRNGKey(2), jnp.asarray(x))["params"]
    psh = shd.param_shardings(params, mesh)
    tx = sj.sparsify(optax.adam(1e-2), sj.rigl(0.8, update_every=2, end_step=8))
    params = shd.shard(params, psh)
    sh = shd.shardings(jax.eval_shape(tx.init, params), params, psh, mesh)
    state = jax.jit(tx.init, out_shardings=sh)(params)
    step = make_step(model, tx)
    for t in range(4):
        rows = slice(8 * t, 8 * t + 16)  # a sliding window: batches differ between steps
        batch = multihost.global_batch({"x": x[rows], "y": y[rows]}, mesh)
        params, state, _ = step(params, state, batch["x"], batch["y"])
    # Multi-host orbax: every process calls save/restore on the same directory.
    ckpt_dir = os.path.join(out, "ckpt")
    with ocp.CheckpointManager(ckpt_dir) as manager:
        manager.save(4, args=ocp.args.StandardSave({"params": params, "opt": state}))
        manager.wait_until_finished()
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
            {"params": params, "opt": state},
        )
        restored = manager.restore(4, args=ocp.args.StandardRestore(target))
    host = multihost_utils.process_allgather(
        {"params": params, "masks": sj.masks_of(state), "restored": restored["params"]},
        tiled=True,
    )
    spec = sj.masks_of(state)["Dense_0"]["kernel"].sharding.spec
    assert spec == psh["Dense_0"]["kernel"].spec, spec
    if multihost.is_main():
        flat = {
            f"{k}/{jax.tree_util.keystr(path)}": np.asarray(v)
            for k, tree in host.items()
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
        }
        np.savez(os.path.join(out, "result.npz"), **flat)


def test_two_processes_match_one_process(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    multi.mkdir()
    single.mkdir()
    coordinator = f"127.0.0.1:{free_port()}"
    worker_cmd = [sys.executable, __file__]
    procs = {
        f"process {i}": spawn([*worker_cmd, str(multi), coordinator, "2", str(i)], 2)
        for i in range(2)
    }
    procs["single"] = spawn([*worker_cmd, str(single)], 4)
    wait_all(procs, timeout=240)
    a, b = np.load(multi / "result.npz"), np.load(single / "result.npz")
    assert sorted(a.files) == sorted(b.files) and any(k.startswith("masks/") for k in a.files)
    for k in a.files:
        if k.startswith("masks/"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for k in a.files:  # the multi-host checkpoint restored exactly
        if k.startswith("params/"):
            np.testing.assert_array_equal(a[k], a["restored/" + k[len("params/") :]])


if __name__ == "__main__":
    out_dir, *rest = sys.argv[1:]
    if rest:
        worker(out_dir, rest[0], int(rest[1]), int(rest[2]))
    else:
        worker(out_dir, None, 1, 0)
