"""The one wrapping mechanism every algorithm is built on: ``sparsify(inner_optimizer, algo)``.

An algorithm is a :class:`SparseAlgorithm`: a few pure hooks saying how masks start, on which steps they
change and how, what the forward pass uses, and what state of its own it keeps. ``sparsify`` turns it
plus any optax optimizer into one ``GradientTransformationExtraArgs`` whose state carries the masks; the
whole step stays jittable, mask updates run under ``lax.cond`` (no recompilation, no host round trip),
and the optimizer state of regrown weights is reset for *any* optax state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparsejax import masks as mk
from sparsejax import opt_state, tracking
from sparsejax.forward import masked_forward
from sparsejax.schedules import never

PyTree = Any
Array = jax.Array


class MaskUpdate(NamedTuple):
    """What an algorithm's mask update returns: the new masks and the positions grown in this update
    (just-dropped weights that are regrown included), whose values and optimizer state are zeroed;
    ``algo_state``: the algorithm's new state, for ``topology_in_state`` algorithms (None: unchanged)."""

    masks: PyTree
    grown: PyTree
    algo_state: Any = None


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Hook:
    """A function carried in a pytree's structure (no leaves), e.g. the forward hook in the state."""

    fn: Callable[..., Any]


class SparseState(NamedTuple):
    """State of a sparsified optimizer."""

    inner: optax.OptState  # the wrapped optimizer's state
    masks: PyTree  # bool per sparsified leaf, DENSE marker elsewhere
    step: Array  # int32, number of updates done
    key: Array  # PRNG key; folded with the step, never split in place
    algo_state: Any  # the algorithm's own state (PGF's decay, learned mask logits, ...); () if none
    metrics: Any  # tracking.MaskMetrics with sparsify(..., track_metrics=True), else ()
    forward: Hook  # the algorithm's forward hook (static: no leaves), for ``forward_params``

    @property
    def stats(self) -> dict[str, Array]:
        """int32 ``dropped``, ``grown``, ``sad`` of the latest mask change (needs tracked metrics)."""
        return tracking.stats(self.metrics, self.masks)


@dataclasses.dataclass(frozen=True)
class SparseAlgorithm:
    """A sparse-training algorithm as pure hooks (all jittable). See docs/design.md.

    Attributes:
      name: registry name.
      init_masks: ``(params, key) -> masks``.
      update_masks: ``(masks, params, grads, step, key) -> MaskUpdate``, run on update steps only.
      is_update_step: ``step -> bool``; works on Python ints and traced scalars.
      refresh_masks: ``(new_params, masks, step, algo_state) -> masks``, every step (STE-like
        methods): the mask of the weights the next forward uses.
      hard: masked-dense training (weights outside the mask are exactly 0). False for STE-like methods,
        whose dense weights keep learning.
      forward: ``(params, state) -> params`` the model uses; differentiable in ``params`` and in the
        float leaves of ``state.algo_state`` (see :func:`value_and_grad`).
      init_state: ``(params, masks, key) -> algo_state``; None keeps ``()``.
      update_state: ``(algo_state, algo_grads, new_params, masks, step) -> algo_state``, every step
        after the optimizer update (``step`` counts the updates done, this one included).
      grad_transform: ``(grads, params, masks) -> grads`` applied before the optimizer (SR-STE).
      topology_in_state: the topology lives in the algorithm's state (compressed block-sparse
        training keeps block positions there): ``init_masks`` returns ``(masks, algo_state)``
        (``init_state`` is unused) and ``update_masks`` also receives ``algo_state=`` and
        ``algo_grads=`` keywords and returns ``MaskUpdate(masks, grown, algo_state)``.
      seed: default PRNG seed for mask initialisation.
    """

    name: str
    init_masks: Callable[[PyTree, Array], PyTree]
    update_masks: Callable[..., MaskUpdate] | None = None
    is_update_step: Callable[[Any], Any] = never
    refresh_masks: Callable[..., PyTree] | None = None
    hard: bool = True
    forward: Callable[[PyTree, SparseState], PyTree] = masked_forward
    init_state: Callable[..., Any] | None = None
    update_state: Callable[..., Any] | None = None
    grad_transform: Callable[[PyTree, PyTree, PyTree], PyTree] | None = None
    topology_in_state: bool = False
    seed: int = 0

    # The algorithm alone, as an optax transform (identity inner optimizer) plus its forward hook.
    def init(self, params: PyTree) -> SparseState:
        """``sparsify(optax.identity(), self).init``."""
        return sparsify(optax.identity(), self).init(params)

    def update(self, updates: PyTree, state: SparseState, params: PyTree, **extra):
        """``sparsify(optax.identity(), self).update``."""
        return sparsify(optax.identity(), self).update(updates, state, params, **extra)


def _with_param_sharding(mask: Array, param: Any) -> Array:
    sharding = getattr(param, "sharding", None)
    if isinstance(mask, jax.core.Tracer) or sharding is None or isinstance(param, jax.core.Tracer):
        return mask
    if not getattr(param, "committed", True):  # jit keys its cache on commitment: keep the param's
        return mask
    return jax.device_put(mask, sharding)


def sparsify(
    inner: optax.GradientTransformation,
    algo: SparseAlgorithm,
    key: Array | None = None,
    *,
    track_metrics: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so that training follows ``algo``'s masks.

    ``init(params)`` creates the masks; ``update(grads, state, params, algo_grads=None)`` may update
    them (under ``lax.cond`` on update steps), resets the optimizer state of regrown weights, and
    returns updates such that ``optax.apply_updates(params, updates)`` is exactly 0 outside the (new)
    masks for masked methods. ``grads`` are the dense gradients of the loss through
    :func:`forward_params`; ``algo_grads`` those of its algorithm state, for algorithms that learn it.

    Args:
      inner: any optax gradient transformation (extra args are forwarded).
      algo: the sparse-training algorithm.
      key: PRNG key for mask creation and updates; defaults to ``PRNGKey(algo.seed)``.
      track_metrics: keep the ever-active union and flip counts (``state.stats``, ``metrics.itop``).

    Returns:
      The wrapped optimizer; its state is a :class:`SparseState`.
    """
    inner = optax.with_extra_args_support(inner)
    refreshes = algo.refresh_masks is not None

    def init_fn(params: PyTree) -> SparseState:
        # Made here, not when sparsify is called: a transform built inside a jit trace (e.g. an
        # nnx.Optimizer set up under nnx.jit) then holds no tracer for a later init.
        base_key = jax.random.PRNGKey(algo.seed) if key is None else key
        masks = algo.init_masks(params, jax.random.fold_in(base_key, 0))
        masks, algo_state = masks if algo.topology_in_state else (masks, None)
        masks = mk.map_sparse(_with_param_sharding, masks, params)
        if not algo.topology_in_state:
            init_state = algo.init_state or (lambda *_: ())
            algo_state = init_state(params, masks, jax.random.fold_in(base_key, 1))
        return SparseState(
            inner=inner.init(params),
            masks=masks,
            step=jnp.zeros((), jnp.int32),
            key=jnp.array(base_key, copy=True),
            algo_state=algo_state,
            metrics=tracking.init(masks, refreshes) if track_metrics else (),
            forward=Hook(algo.forward),
        )

    def update_fn(grads, state, params=None, algo_grads=None, **extra):
        if params is None:
            raise ValueError("sparsify: update needs params (tx.update(grads, state, params))")
        step, masks, metrics, inner_state = state.step, state.masks, state.metrics, state.inner
        live, algo_state = masks, state.algo_state
        if algo.update_masks is not None:
            key = jax.random.fold_in(state.key, step + 1)
            # Only algorithms keeping their topology in their state route that state through the cond.
            own = algo.topology_in_state

            def changed():
                state_args = dict(algo_state=algo_state, algo_grads=algo_grads) if own else {}
                upd = algo.update_masks(masks, params, grads, step, key, **state_args)
                new, grown = upd.masks, upd.grown
                tracked = tracking.after_update(metrics, masks, new, grown) if track_metrics else ()
                # Grown weights get no gradient this step either, so they are exactly 0 after it.
                moved = (algo_state if upd.algo_state is None else upd.algo_state,) if own else ()
                return new, mk.difference(new, grown), tracked, moved

            cond = jnp.asarray(algo.is_update_step(step))
            unchanged = (masks, masks, metrics, (algo_state,) if own else ())
            masks, live, metrics, moved = jax.lax.cond(cond, changed, lambda: unchanged)
            if own:
                (algo_state,) = moved
            if algo.hard:
                # Optimizer state lives on live weights only: zero elsewhere resets the grown ones
                # and changes no weight (outside ``live`` the updates are masked anyway).
                inner_state = opt_state.keep_where(inner_state, live, params)
            else:  # dense weights keep learning: reset the grown positions only
                inner_state = opt_state.reset_where(inner_state, mk.difference(masks, live), params)
        if algo.grad_transform is not None:
            grads = algo.grad_transform(grads, params, masks)
        if algo.hard:
            grads = mk.apply_masks(grads, live)
        updates, inner_state = inner.update(grads, inner_state, params, **extra)
        if algo.hard:
            updates = mk.map_params(lambda m, u, p: jnp.where(m, u, -p), live, updates, params)
        new_step = step + 1
        if algo.update_state is not None or refreshes:
            new_params = optax.apply_updates(params, updates)
            if algo.update_state is not None:
                algo_state = algo.update_state(algo_state, algo_grads, new_params, masks, new_step)
            if refreshes:
                new = algo.refresh_masks(new_params, masks, new_step, algo_state)
                metrics = tracking.after_refresh(metrics, masks, new) if track_metrics else ()
                masks = new
        new_state = SparseState(
            inner_state, masks, new_step, state.key, algo_state, metrics, state.forward
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
