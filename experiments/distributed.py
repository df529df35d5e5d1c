r"""Beyond one device: the mesh hook of the training loop, and multi-host (multi-controller) helpers.

Single process, several devices (``config.mesh``, e.g. ``{"data": -1, "fsdp": 1, "model": 1}``):
:func:`wire` shards the train state (params FSDP-style, masks / ``ever_active`` / optimizer moments like
their param, the rest replicated) and re-jits the steps with explicit in/out shardings; batches are split
along ``data`` x ``fsdp``. A mesh of one device leaves everything as it was.

Several processes (``jax.distributed``): :func:`initialize` reads ``--coordinator``, ``--num_processes``,
``--process_id`` (or ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) and uses gloo
CPU collectives on CPU. Each process feeds only its rows of every global batch
(:func:`process_rows` + ``jax.make_array_from_process_local_data``); orbax saves sharded arrays when every
process calls ``save``; only process 0 should log (:func:`is_main`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start ``jax.distributed`` when more than one process is asked for; returns True if it did.

    Must run before anything touches a device. On CPU the cross-process collectives use gloo.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = int(num_processes or os.environ.get("JAX_NUM_PROCESSES", 1))
    process_id = int(process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID", 0))
    if num_processes <= 1:
        return False
    if not coordinator:
        raise ValueError(
            "--coordinator (or JAX_COORDINATOR_ADDRESS): required with several processes"
        )
    if os.environ.get("JAX_PLATFORMS", "cpu").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def is_main() -> bool:
    """True on the process that logs and writes summaries (process 0)."""
    return jax.process_index() == 0


def _shd():
    # Imported lazily: importing sparsejax creates arrays, which must wait for ``initialize``.
    from sparsejax import sharding

    return sharding


def process_rows(global_rows: int) -> slice:
    """The rows of a global batch that this process feeds (contiguous, in process order)."""
    n, i = jax.process_count(), jax.process_index()
    if global_rows % n:
        raise ValueError(f"batch of {global_rows} rows does not split over {n} processes")
    per = global_rows // n
    return slice(i * per, (i + 1) * per)


def global_batch(
    batch: Batch, mesh: jax.sharding.Mesh, local: bool = False
) -> dict[str, jax.Array]:
    """A global, ``data``-sharded batch from host data.

    ``local=False``: ``batch`` is the whole global batch (the same on every process) and each process
    keeps its rows; ``local=True``: ``batch`` already holds only this process's rows.
    """

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        rows = x if local else x[process_rows(x.shape[0])]
        return jax.make_array_from_process_local_data(_shd().batch_sharding(mesh, x.ndim), rows)

    return {k: put(v) for k, v in batch.items()}


def mesh_from_config(config: ml_collections.ConfigDict) -> jax.sharding.Mesh | None:
    """The mesh of ``config.mesh``, or None when it spans a single device (no sharding at all)."""
    axes = dict(config.get("mesh") or {})
    if not axes:
        return None
    try:
        mesh = _shd().make_mesh(axes)
    except ValueError as e:
        from experiments.errors import ConfigError

        raise ConfigError(str(e)) from None
    return None if mesh.size == 1 else mesh


def wire(
    config: ml_collections.ConfigDict,
    state: dict[str, Any],
    train_step: Callable,
    eval_step: Callable,
) -> tuple[dict[str, Any], Callable, Callable]:
    """Shard ``state`` over ``config.mesh`` and return steps that take host batches.

    The returned steps place each host batch on the mesh (this process's rows only) and run the
    original step under ``jax.jit`` with the state's shardings in and out, so the layout never drifts.
    """
    mesh = mesh_from_config(config)
    if mesh is None:
        return state, train_step, eval_step
    state, sh = _shd().shard_state(state, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train = jax.jit(train_step, out_shardings=(sh, replicated))
    evaluate = jax.jit(eval_step, out_shardings=replicated)

    def sharded_train(s: dict[str, Any], batch: Batch):
        return train(s, global_batch(batch, mesh))

    def sharded_eval(s: dict[str, Any], batch: Batch):
        return evaluate(s, global_batch(batch, mesh))

    return state, sharded_train, sharded_eval


def main() -> None:
    """``python -m experiments.distributed --coordinator=H:P --num_processes=N --process_id=I
    --config=...``: start ``jax.distributed``, then run ``experiments.train`` in this process."""
    import sys

    from absl import app

    args = {"coordinator": None, "num_processes": None, "process_id": None}
    rest = [sys.argv[0]]
    for arg in sys.argv[1:]:
        key, _, value = arg.lstrip("-").partition("=")
        if key in args:
            args[key] = value
        else:
            rest.append(arg)
    initialize(args["coordinator"], args["num_processes"], args["process_id"])
    from experiments import cli, train  # after initialize: importing them creates arrays

    train.define_flags()
    sys.argv = rest
    app.run(train.main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
