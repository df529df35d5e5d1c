"""Reading a sparsified optimizer state: its masks, the forward weights, and gradients through them.

``forward_params(params, state)`` is what the model uses in its forward pass (the algorithm's forward
hook); ``value_and_grad`` differentiates a loss through it with respect to the params *and* the float
leaves of the algorithm's state, for algorithms that learn part of their state (MaskLLM's logits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sparsejax.core import SparseState

PyTree = Any


def _is_state(x: Any) -> bool:
    return isinstance(x, SparseState)


def sparse_state(state: Any) -> SparseState:
    """The :class:`SparseState` inside an optimizer state (also when chained or nested)."""
    found = [s for s in jax.tree.leaves(state, is_leaf=_is_state) if _is_state(s)]
    if not found:
        raise ValueError(
            "no sparsejax SparseState in this optimizer state; was it built by sparsify?"
        )
    return found[0]


def masks_of(state: Any) -> PyTree:
    """The mask pytree (same key paths as params) of an optimizer state built by ``sparsify``."""
    return sparse_state(state).masks


def forward_params(
    params: PyTree, state: Any, *, assume_masked: bool = False, algo_state: Any = None
) -> PyTree:
    """The weights the model uses in its forward pass: the algorithm's forward hook.

    Masked-dense methods and STE get ``w * m``, PGF's mask decay ``w * (m + (1 - m) * decay)``,
    learned-mask methods their own product. The gradient w.r.t. ``params`` is straight-through: the
    dense ``dL/d(w * m)`` at every position, masked ones included (RigL grows by it; ``sparsify`` masks
    the updates itself).

    Args:
      params: the dense parameters.
      state: an optimizer state built by ``sparsify`` (or one containing it).
      assume_masked: return ``params`` unchanged, saving one pass over every weight per step. Exact
        for masked-dense methods (``algo.hard``) once the initial params are masked too (``params =
        sj.apply_masks(params, sj.masks_of(state))`` right after ``tx.init``); never for STE-like ones.
      algo_state: use this algorithm state instead of the state's own (to differentiate by it).
    """
    if assume_masked:
        return params
    s = sparse_state(state)
    if algo_state is not None:
        s = s._replace(algo_state=algo_state)
    return s.forward.fn(params, s)


def _floating(x: Any) -> bool:
    return isinstance(x, jax.Array | jnp.ndarray) and jnp.issubdtype(x.dtype, jnp.floating)


def value_and_grad(
    loss_fn: Callable[..., Any], has_aux: bool = False
) -> Callable[..., tuple[Any, tuple[PyTree, PyTree]]]:
    """``jax.value_and_grad`` of ``loss_fn(params, opt_state, *args)`` through ``forward_params``.

    Returns a function of ``(params, opt_state, *args)`` giving ``(value, (grads, algo_grads))``:
    ``grads`` w.r.t. the params, ``algo_grads`` w.r.t. the float leaves of the algorithm state (None
    elsewhere). Pass both on: ``tx.update(grads, opt_state, params, algo_grads=algo_grads)``.
    """

    def wrapped(params: PyTree, opt_state: Any, *args: Any):
        floats, with_floats = split_algo_state(opt_state)

        def loss(p, fl):
            return loss_fn(p, with_floats(fl), *args)

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=has_aux)(params, floats)

    return wrapped


def split_algo_state(opt_state: Any) -> tuple[PyTree, Callable[[PyTree], Any]]:
    """The float leaves of the algorithm state (None elsewhere), what :func:`value_and_grad`
    differentiates by, and ``floats -> opt_state`` with them put back in place."""
    own = sparse_state(opt_state).algo_state
    floats = jax.tree.map(lambda x: x if _floating(x) else None, own)
    rest = jax.tree.map(lambda x: None if _floating(x) else x, own)

    def with_floats(fl: PyTree) -> Any:
        merged = jax.tree.map(lambda a, b: b if a is None else a, fl, rest, is_leaf=_none)
        swap = lambda s: s._replace(algo_state=merged) if _is_state(s) else s  # noqa: E731
        return jax.tree.map(swap, opt_state, is_leaf=_is_state)

    return floats, with_floats


def _none(x: Any) -> bool:
    return x is None
