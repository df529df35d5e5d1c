r"""Beyond one device: the mesh hook of the training loop, and multi-host (multi-controller) helpers.

Single process, several devices (``config.mesh``, e.g. ``{"data": -1, "fsdp": 1, "model": 1}``):
:func:`wire` shards the train state (params FSDP-style, masks / ``ever_active`` / optimizer moments like
their param, the rest replicated) and re-jits the steps with explicit in/out shardings; batches are split
along ``data`` x ``fsdp``. A mesh of one device leaves everything as it was.

Several processes (``jax.distributed``): :func:`initialize` reads ``--coordinator``, ``--num_processes``,
``--process_id`` (or ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) and uses gloo
CPU collectives on CPU. ``python -m experiments.train`` with those variables set starts it by itself
(``experiments/__init__.py`` calls :func:`initialize` before ``sparsejax`` is imported), and so does
``python -m experiments.distributed`` with the flags. Each process feeds
only its rows of every global batch (:func:`process_rows` + ``jax.make_array_from_process_local_data``;
``experiments.data`` reads only those rows); orbax saves sharded arrays when every process calls ``save``;
host copies of sharded arrays come from :func:`to_host` (a collective); only process 0 should write files
and log (:func:`is_main`).
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
    if jax.distributed.is_initialized():  # e.g. from the environment, at `import experiments`
        return True
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


def host_batch(batch: Batch, mesh: jax.sharding.Mesh, global_rows: int) -> dict[str, jax.Array]:
    """:func:`global_batch` for a host batch that is either a whole global batch of ``global_rows`` rows
    or this process's rows of one (``experiments.data`` pipelines read only this process's rows)."""
    rows = len(next(iter(batch.values())))
    if rows == global_rows:
        return global_batch(batch, mesh)
    if rows * jax.process_count() == global_rows:
        return global_batch(batch, mesh, local=True)
    raise ValueError(
        f"host batch of {rows} rows is neither the global batch ({global_rows} rows) nor this "
        f"process's share of it ({global_rows} / {jax.process_count()} processes)"
    )


def to_host(tree: Any) -> Any:
    """NumPy copies of every array of ``tree`` on every process.

    Arrays spanning other processes' devices are all-gathered: a collective, so every process must call
    this at the same point (before any ``if is_main():``).
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


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
    compiler_options: dict[str, str] | None = None,
) -> tuple[dict[str, Any], Callable, Callable]:
    """Shard ``state`` over ``config.mesh`` and return steps that take host batches.

    The returned steps place each host batch (global, or this process's rows: :func:`host_batch`) on the
    mesh and run the original step under ``jax.jit`` with the state's shardings in and out, so the layout
    never drifts. ``compiler_options``: as given to ``steps.make_steps`` (the outer jit compiles).
    """
    mesh = mesh_from_config(config)
    if mesh is None:
        return state, train_step, eval_step
    state, sh = _shd().shard_state(state, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train = jax.jit(train_step, out_shardings=(sh, replicated), compiler_options=compiler_options)
    evaluate = jax.jit(eval_step, out_shardings=replicated, compiler_options=compiler_options)
    train_rows = int(config.batch_size)
    eval_rows = int(config.get("eval_batch_size") or train_rows)

    def sharded_train(s: dict[str, Any], batch: Batch):
        return train(s, host_batch(batch, mesh, train_rows))

    def sharded_eval(s: dict[str, Any], batch: Batch):
        return evaluate(s, host_batch(batch, mesh, eval_rows))

    return state, sharded_train, sharded_eval
