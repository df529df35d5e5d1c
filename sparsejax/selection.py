"""Which leaves of a params pytree are sparsified, and how leaves are named.

Leaves are named by their key path joined with ``/`` (``params/Conv_0/kernel``). By default every leaf with
``ndim >= 2`` is sparsified (Dense and Conv kernels, embeddings); biases and norm scales stay dense. Regex
overrides (searched anywhere in the path) set a leaf's sparsity, ``0.0`` keeping it dense, and the first
and/or last sparsifiable layer can be kept dense.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax

PyTree = Any


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


_BOX = jax.tree_util.GetAttrKey("value")  # a boxed leaf: Flax NNX Variable, linen Partitioned


def path_str(path: tuple) -> str:
    """``/``-joined name of a key path from ``jax.tree_util.tree_flatten_with_path``; a boxed leaf
    (a trailing ``.value``: NNX ``Variable``, linen ``Partitioned``) is named by its box."""
    if path and path[-1] == _BOX:
        path = path[:-1]
    return "/".join(_key_name(e) for e in path)


def map_named(fn: Any, tree: PyTree) -> PyTree:
    """``tree`` with every leaf replaced by ``fn(name, leaf)`` (``name``: its ``/``-joined path)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return treedef.unflatten([fn(path_str(p), leaf) for p, leaf in flat])


def leaf_paths(tree: PyTree) -> list[str]:
    """Names of all leaves in flattening order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _call_order(tree: PyTree, prefix: str = "") -> list[str]:
    # Flax params are dicts in module call order; jax flattening sorts keys, which would put
    # "Dense_0" before "Conv_0" and "Conv_10" before "Conv_2". First/last layer needs call order.
    join = (lambda k: f"{prefix}/{k}") if prefix else str
    if isinstance(tree, Mapping):
        return [n for k, v in tree.items() for n in _call_order(v, join(k))]
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return [n for i, v in enumerate(tree) for n in _call_order(v, join(i))]
    return [join(n) if n else prefix for n in leaf_paths(tree)]


def sparsifiable(
    params: PyTree,
    overrides: Mapping[str, float] | None = None,
    dense_first: bool = False,
    dense_last: bool = False,
    min_ndim: int = 2,
) -> tuple[list[str], dict[str, float]]:
    """Splits the leaves into those a distribution decides and those an override fixes.

    Returns:
      ``(free, fixed)``: names of sparsified leaves whose sparsity the distribution sets, and a map from
      name to an explicitly fixed sparsity (> 0). Leaves in neither stay dense.
    """
    overrides = dict(overrides or {})
    for pattern, value in overrides.items():
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"overrides: invalid regex {pattern!r} ({e}); allowed: Python regular expressions"
            ) from None
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"overrides[{pattern!r}]={value}: allowed values are in [0, 1)")
    shapes = {path_str(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    order = [n for n in _call_order(params) if n in shapes] or list(shapes)
    candidates = [n for n in order if len(shapes[n]) >= min_ndim]
    skip = set()
    if dense_first and candidates:
        skip.add(candidates[0])
    if dense_last and candidates:
        skip.add(candidates[-1])
    free, fixed = [], {}
    for name in candidates:
        if name in skip:
            continue
        hits = [float(v) for pat, v in overrides.items() if re.search(pat, name)]
        if hits:
            if hits[-1] > 0.0:
                fixed[name] = hits[-1]
        else:
            free.append(name)
    return free, fixed
