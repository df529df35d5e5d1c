"""Meshes and shardings for sparse training: params, masks and optimizer state sharded alike.

Everything is JAX's own machinery (``jax.sharding.Mesh`` + ``NamedSharding``); this module only decides
*which* ``PartitionSpec`` each leaf gets:

- params: FSDP style, the largest axis divisible by the ``fsdp`` mesh axis is sharded over it;
- every params-shaped subtree of an optimizer state (masks, ``ever_active``, momentum, Adam moments, any
  optax accumulator) gets exactly its param's sharding, so mask updates and optimizer updates are local;
  bit-packed masks (the STE family's ``previous``) keep it too where the packed last axis allows;
- everything else (step counters, PRNG keys, scalars, BatchNorm statistics) is replicated;
- batches are split along their leading axis over the ``data`` and ``fsdp`` axes together.

Use :func:`shardings` once to get a sharding pytree for a whole train state, then ``jax.jit`` the init
with ``out_shardings`` (nothing is ever materialised on one device) or :func:`shard` existing arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sparsejax import masks as mk

PyTree = Any
AXES = ("data", "fsdp", "model")


def make_mesh(axes: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all) with the named axis sizes; one ``-1`` takes the rest.

    ``{"data": -1, "fsdp": 1, "model": 1}`` is pure data parallelism; ``{"data": 2, "fsdp": -1}`` shards
    params over the remaining devices. Raises ``ValueError`` with the allowed sizes when they do not fit.
    """
    devices = list(jax.devices() if devices is None else devices)
    axes = dict(axes or {"data": -1})
    free = [name for name, size in axes.items() if int(size) == -1]
    fixed = int(np.prod([int(s) for s in axes.values() if int(s) != -1]))
    if len(free) > 1 or fixed < 1 or len(devices) % fixed:
        raise ValueError(
            f"config.mesh={axes}: axis sizes must be positive (one may be -1) and their product "
            f"must divide the {len(devices)} devices"
        )
    sizes = {k: (len(devices) // fixed if k in free else int(v)) for k, v in axes.items()}
    if int(np.prod(list(sizes.values()))) != len(devices):
        raise ValueError(
            f"config.mesh={axes}: product {int(np.prod(list(sizes.values())))} != {len(devices)} devices"
        )
    grid = np.asarray(devices, dtype=object).reshape(tuple(sizes.values()))
    return Mesh(grid, tuple(sizes))


def mesh_size(mesh: Mesh, axis: str | tuple[str, ...]) -> int:
    """Number of devices along ``axis`` (a name or several names; absent names count 1)."""
    names = (axis,) if isinstance(axis, str) else axis
    return int(np.prod([mesh.shape.get(a, 1) for a in names]))


def fsdp_spec(shape: Sequence[int], mesh: Mesh, axis: str = "fsdp", min_size: int = 1) -> P:
    """Shard the largest dimension divisible by the ``axis`` size; replicate if none (or small leaves)."""
    n = mesh_size(mesh, axis)
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % n == 0 and d >= n]
    if not candidates:
        return P()
    _, dim = max(candidates, key=lambda c: (c[0], -c[1]))
    return P(*([None] * dim), axis)


def param_shardings(params: PyTree, mesh: Mesh, axis: str = "fsdp", min_size: int = 1) -> PyTree:
    """FSDP ``NamedSharding`` per param leaf (see :func:`fsdp_spec`)."""
    return jax.tree.map(
        lambda p: NamedSharding(mesh, fsdp_spec(np.shape(p), mesh, axis, min_size)), params
    )


def _params_like(node: Any, treedef: Any, shapes: list[tuple[int, ...]]) -> bool:
    """True for a params-shaped subtree: a params copy, or a mask tree (``DENSE`` markers allowed)."""
    if mk.is_dense(node) or jax.tree.structure(node, is_leaf=mk.is_dense) != treedef:
        return False
    leaves = jax.tree.leaves(node, is_leaf=mk.is_dense)
    return all(mk.is_dense(x) or np.shape(x) == s for x, s in zip(leaves, shapes))


def _packed_like(node: Any, treedef: Any, shapes: list[tuple[int, ...]]) -> bool:
    """True for a tree of :func:`sparsejax.masks.pack_masks` outputs of a mask tree."""
    if mk.is_dense(node) or jax.tree.structure(node, is_leaf=mk.is_dense) != treedef:
        return False
    leaves = jax.tree.leaves(node, is_leaf=mk.is_dense)
    return any(not mk.is_dense(x) for x in leaves) and all(
        mk.is_dense(x)
        or (x.dtype == np.uint8 and len(s) and np.shape(x) == (*s[:-1], -(-s[-1] // 8)))
        for x, s in zip(leaves, shapes)
    )


def _packed_sharding(x: Any, param_sh: NamedSharding, mesh: Mesh) -> NamedSharding:
    """The param's sharding when it fits the packed shape (packing runs along the last axis)."""
    spec = tuple(param_sh.spec) + (None,) * (np.ndim(x) - len(param_sh.spec))
    last = spec[-1] if spec else None
    if last is None or np.shape(x)[-1] % mesh_size(mesh, last) == 0:
        return param_sh
    return NamedSharding(mesh, fsdp_spec(np.shape(x), mesh))


def shardings(tree: PyTree, params: PyTree, param_sh: PyTree, mesh: Mesh) -> PyTree:
    """A ``NamedSharding`` per leaf of ``tree`` (a train state, an optimizer state, ...).

    Every subtree shaped like ``params`` (the params themselves, masks, ``ever_active``, optimizer
    moments) gets ``param_sh`` leaf by leaf; every other leaf is replicated. Works on arrays and on
    ``jax.ShapeDtypeStruct`` trees (``jax.eval_shape`` outputs).
    """
    treedef = jax.tree.structure(params)
    shapes = [np.shape(p) for p in jax.tree.leaves(params)]
    sh_leaves = jax.tree.leaves(param_sh)
    replicated = NamedSharding(mesh, P())

    def like(node: Any) -> bool:
        return _params_like(node, treedef, shapes) or _packed_like(node, treedef, shapes)

    def assign(node: Any) -> Any:
        if not like(node):
            return jax.tree.map(lambda _: replicated, node)
        packed = not _params_like(node, treedef, shapes)
        leaves = jax.tree.leaves(node, is_leaf=mk.is_dense)
        out = [
            x if mk.is_dense(x) else _packed_sharding(x, s, mesh) if packed else s
            for x, s in zip(leaves, sh_leaves)
        ]
        return jax.tree.unflatten(treedef, out)

    return jax.tree.map(assign, tree, is_leaf=like)


def batch_sharding(
    mesh: Mesh, ndim: int = 1, axes: tuple[str, ...] = ("data", "fsdp")
) -> NamedSharding:
    """Leading (batch) axis split over ``axes`` (those present in ``mesh``), the rest replicated."""
    names = tuple(a for a in axes if a in mesh.shape)
    return NamedSharding(mesh, P(names if names else None, *([None] * (ndim - 1))))


def shard(tree: PyTree, sh: PyTree) -> PyTree:
    """Place ``tree`` (host or single-device arrays, the same value on every process) on ``sh``.

    Uses ``make_array_from_callback``, so it also works when ``sh`` spans devices of other processes.
    """

    def put(x: Any, s: NamedSharding) -> jax.Array:
        if s.is_fully_addressable:
            return jax.device_put(x, s)
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree.map(put, tree, sh)


def shard_state(state: PyTree, mesh: Mesh, params_key: str = "params", min_size: int = 1):
    """Shard a train state dict ``{params, opt_state, ...}``; returns ``(state, state_shardings)``."""
    params = state[params_key]
    sh = shardings(state, params, param_shardings(params, mesh, min_size=min_size), mesh)
    return shard(state, sh), sh


def spec_of(x: jax.Array) -> P | None:
    """The ``PartitionSpec`` of a ``NamedSharding``-placed array (None for other shardings)."""
    s = getattr(x, "sharding", None)
    return s.spec if isinstance(s, NamedSharding) else None


def is_replicated(x: jax.Array) -> bool:
    """True when every device holds the whole of ``x``."""
    return bool(x.sharding.is_fully_replicated)
