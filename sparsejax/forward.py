"""What the model sees: the straight-through masked weights, the default forward hook.

``forward_params(params, state)`` (``sparsejax.state``) calls the algorithm's forward hook; this module
holds the default one and the straight-through product other hooks build on (PGF's decayed weights).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as mk

PyTree = Any
Array = jax.Array


@jax.custom_vjp
def straight_through(w: Array, m: Array, decay: Array | float = 0.0) -> Array:
    """``w`` where ``m``, ``w * decay`` elsewhere; the gradient passes to ``w`` unchanged everywhere."""
    return jnp.where(m, w, w * jnp.asarray(decay, w.dtype))


def _st_fwd(w, m, decay):
    return straight_through(w, m, decay), (m, decay)


def _st_bwd(res, g):
    m, decay = res
    # The mask is bool, so its cotangent is float0: nothing the size of the weights is allocated.
    return g, np.zeros(m.shape, jax.dtypes.float0), jnp.zeros_like(jnp.asarray(decay))


straight_through.defvjp(_st_fwd, _st_bwd)


def masked_forward(params: PyTree, state: Any) -> PyTree:
    """The default forward hook: ``w * m`` with ``m = state.masks``, straight-through (the dense
    ``dL/d(w * m)`` reaches ``w`` at every position, masked ones included: RigL grows by it)."""
    return mk.map_params(lambda m, w: straight_through(w, m), state.masks, params)
