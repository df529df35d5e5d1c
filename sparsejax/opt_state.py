"""Optimizer-state reset for any optax optimizer: zero per-parameter accumulators at chosen positions.

Momentum, Adam moments, Lion's trace, any per-parameter accumulator of any optax optimizer (chains
included) is a subtree with the params' structure and shapes; we find those instead of special-casing
a list of optimizer states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sparsejax import masks as mk

PyTree = Any


def _map_params_like(opt_state: PyTree, flags: PyTree, params: PyTree, fn: Callable) -> PyTree:
    """Applies ``fn(x, flag)`` to each leaf of every params-shaped subtree of ``opt_state``; DENSE
    leaves of the mask-shaped ``flags`` are left alone."""
    treedef = jax.tree.structure(params)
    shapes = [jnp.shape(p) for p in jax.tree.leaves(params)]
    # The mask-shaped ``flags`` flattens (markers as leaves) to one entry per params leaf, in order.
    flat = [None if mk.is_dense(f) else f for f in jax.tree.leaves(flags, is_leaf=mk.is_dense)]

    def params_like(node: Any) -> bool:
        if jax.tree.structure(node) != treedef:
            return False
        return [jnp.shape(x) for x in jax.tree.leaves(node)] == shapes

    def apply(node: Any) -> Any:
        if not params_like(node):
            return node
        leaves = jax.tree.leaves(node)
        new = [x if f is None else fn(x, f) for x, f in zip(leaves, flat)]
        return jax.tree.unflatten(treedef, new)

    return jax.tree.map(apply, opt_state, is_leaf=params_like)


def reset_where(opt_state: PyTree, where: PyTree, params: PyTree) -> PyTree:
    """Zeroes every params-shaped subtree of ``opt_state`` (any optax optimizer's per-parameter
    accumulators) at the positions ``where`` marks."""
    return _map_params_like(
        opt_state, where, params, lambda x, f: jnp.where(f, jnp.zeros_like(x), x)
    )


def keep_where(opt_state: PyTree, keep: PyTree, params: PyTree) -> PyTree:
    """Zeroes every params-shaped subtree of ``opt_state`` outside the positions ``keep`` marks."""
    return _map_params_like(
        opt_state, keep, params, lambda x, f: jnp.where(f, x, jnp.zeros_like(x))
    )
