"""The one wrapping mechanism every algorithm is built on: ``sparsify(inner_optimizer, algo)``.

An algorithm is a :class:`SparseAlgorithm`: a few pure hooks saying how masks start, on which steps they
change and how. ``sparsify`` turns it plus any optax optimizer into one ``GradientTransformationExtraArgs``
whose state carries the masks; the whole step stays jittable, mask updates run under ``lax.cond`` (no
recompilation, no host round trip), and the optimizer state of regrown weights is reset for *any* optax
state by matching params-shaped subtrees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import masks as mk
from sparsejax import opt_state, ordering
from sparsejax.schedules import never

PyTree = Any
Array = jax.Array


class MaskUpdate(NamedTuple):
    """What an algorithm's mask update returns: the new masks and the positions grown in this update
    (just-dropped weights that are regrown included), whose values and optimizer state are zeroed."""

    masks: PyTree
    grown: PyTree


class SparseState(NamedTuple):
    """State of a sparsified optimizer."""

    inner: optax.OptState  # the wrapped optimizer's state
    masks: PyTree  # bool per sparsified leaf, DENSE marker elsewhere
    step: Array  # int32, number of updates done
    key: Array  # PRNG key; folded with the step, never split in place
    decay: Array  # f32, forward contribution of pruned weights (PGF MDGF), 0 otherwise
    ever_active: PyTree  # union of all masks so far (ITOP rate)
    counts: dict[str, Array]  # int32 dropped, grown, sad of the latest ``update_masks``
    previous: PyTree  # bit-packed masks before the latest refresh (STE family); DENSE otherwise

    @property
    def stats(self) -> dict[str, Array]:
        """int32 ``dropped``, ``grown``, ``sad`` of the latest mask change.

        The STE family changes its masks every step, so its counts are taken here, when asked for
        (e.g. on logging steps), from ``previous`` and ``masks``: a count in every step cost 4-5% of
        the MLP's STE step (docs/design.md).
        """
        if not mk.sparse_leaves(self.previous):
            return self.counts
        previous = mk.unpack_masks(self.previous, self.masks)
        dropped = mk.count_active(mk.difference(previous, self.masks))
        grown = mk.count_active(mk.difference(self.masks, previous))
        return {"dropped": dropped, "grown": grown, "sad": dropped + grown}


@dataclasses.dataclass(frozen=True)
class SparseAlgorithm:
    """A sparse-training algorithm as pure hooks. See docs/design.md.

    Attributes:
      name: registry name.
      init_masks: ``(params, key) -> masks``.
      update_masks: ``(masks, params, grads, step, key) -> MaskUpdate``, run on update steps only.
      is_update_step: ``step -> bool``; works on Python ints and traced scalars.
      refresh_masks: ``(new_params, masks, step) -> masks`` for STE-like methods: the mask the next
        forward uses, recomputed from the updated dense weights every step.
      hard: masked-dense training (weights outside the mask are exactly 0). False for STE-like methods,
        whose dense weights keep learning.
      decay: ``step -> f32`` forward weight of pruned positions (PGF); None means 0.
      grad_transform: ``(grads, params, masks) -> grads`` applied before the optimizer (SR-STE).
      seed: default PRNG seed for mask initialisation.
    """

    name: str
    init_masks: Callable[[PyTree, Array], PyTree]
    update_masks: Callable[..., MaskUpdate] | None = None
    is_update_step: Callable[[Any], Any] = never
    refresh_masks: Callable[[PyTree, PyTree, Array], PyTree] | None = None
    hard: bool = True
    decay: Callable[[Array], Array] | None = None
    grad_transform: Callable[[PyTree, PyTree, PyTree], PyTree] | None = None
    seed: int = 0

    # The algorithm alone, as an optax transform (identity inner optimizer) plus its forward hook.
    def init(self, params: PyTree) -> SparseState:
        """``sparsify(optax.identity(), self).init``."""
        return sparsify(optax.identity(), self).init(params)

    def update(self, updates: PyTree, state: SparseState, params: PyTree, **extra):
        """``sparsify(optax.identity(), self).update``."""
        return sparsify(optax.identity(), self).update(updates, state, params, **extra)

    def forward(self, params: PyTree, state: Any) -> PyTree:
        """Forward-pass weights (same as :func:`forward_params`)."""
        return forward_params(params, state)


def _with_param_sharding(mask: Array, param: Any) -> Array:
    sharding = getattr(param, "sharding", None)
    if isinstance(mask, jax.core.Tracer) or sharding is None or isinstance(param, jax.core.Tracer):
        return mask
    return jax.device_put(mask, sharding)


def _mask_stats(before: PyTree, after: PyTree, grown: PyTree) -> dict[str, Array]:
    n_grown = mk.count_active(grown)
    dropped = mk.count_active(before) - mk.count_active(after) + n_grown
    return {"dropped": dropped, "grown": n_grown, "sad": mk.hamming(before, after)}


def _no_masks(masks: PyTree) -> PyTree:
    return jax.tree.map(lambda m: mk.DENSE, masks, is_leaf=mk.is_dense)


def sparsify(
    inner: optax.GradientTransformation, algo: SparseAlgorithm, key: Array | None = None
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so that training follows ``algo``'s masks.

    ``init(params)`` creates the masks; ``update(grads, state, params)`` may update them (under
    ``lax.cond`` on update steps), resets the optimizer state of regrown weights, and returns updates
    such that ``optax.apply_updates(params, updates)`` is exactly 0 outside the (new) masks for masked
    methods. ``grads`` are the dense gradients of the loss through :func:`forward_params`.

    Args:
      inner: any optax gradient transformation (extra args are forwarded).
      algo: the sparse-training algorithm.
      key: PRNG key for mask creation and updates; defaults to ``PRNGKey(algo.seed)``.
    """
    inner = optax.with_extra_args_support(inner)
    base_key = jax.random.PRNGKey(algo.seed) if key is None else key

    def init_fn(params: PyTree) -> SparseState:
        masks = algo.init_masks(params, jax.random.fold_in(base_key, 0))
        masks = mk.map_sparse(_with_param_sharding, masks, params)
        # Every field gets its own buffer, so a training step may donate the whole state.
        zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
        decay = 0.0 if algo.decay is None else algo.decay(0)
        return SparseState(
            inner=inner.init(params),
            masks=masks,
            step=zero(),
            key=jnp.array(base_key, copy=True),
            decay=jnp.asarray(decay, jnp.float32),
            ever_active=mk.map_sparse(jnp.copy, masks),
            counts={"dropped": zero(), "grown": zero(), "sad": zero()},
            previous=mk.pack_masks(masks) if algo.refresh_masks else _no_masks(masks),
        )

    def update_fn(grads: PyTree, state: SparseState, params: PyTree | None = None, **extra):
        if params is None:
            raise ValueError("sparsify: update needs params (tx.update(grads, state, params))")
        step, masks, ever, stats, inner_state = (
            state.step,
            state.masks,
            state.ever_active,
            state.counts,
            state.inner,
        )
        live = masks
        if algo.update_masks is not None:
            key = jax.random.fold_in(state.key, step + 1)

            def changed():
                new, grown = algo.update_masks(masks, params, grads, step, key)
                new_stats = _mask_stats(masks, new, grown)
                new = ordering.masks_after(new, ordering.false_after_stats(new_stats))
                # Grown weights get no gradient this step either, so they are exactly 0 after it.
                live = mk.difference(new, grown)
                return new, live, mk.union(ever, new), new_stats

            def same():
                return masks, masks, ever, stats

            # Only bool pytrees pass through the cond (a non-update step copies the masks once, cheaper
            # than recomputing ``new & ~grown`` and the union every step); the optimizer state stays
            # out of it so its reset below fuses into the optimizer's own update.
            do_update = jnp.asarray(algo.is_update_step(step)) | ordering.false_after_grads(
                grads, masks
            )
            masks, live, ever, stats = jax.lax.cond(do_update, changed, same)
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
        new_step = step + 1
        if algo.hard:
            updates = mk.map_params(lambda m, u, p: jnp.where(m, u, -p), live, updates, params)
        previous = state.previous
        if algo.refresh_masks is not None:
            # Packed, the old masks are a reduction XLA does not re-fuse into later reads; the new masks
            # wait for it and go into the donated buffers in place. A bool copy instead sat on the
            # step's critical path (MLP step / dense, STE 2:4: 1.14 -> 1.03, PGF 1:8: 1.17 -> 1.08).
            previous = mk.pack_masks(masks)
            new = algo.refresh_masks(optax.apply_updates(params, updates), masks, new_step)
            masks = ordering.masks_after(new, ordering.false_after(previous))
            ever = mk.union(ever, masks)
        decay = state.decay
        if algo.decay is not None:  # written after the step's last reads, in place
            never = ordering.false_after_grads(grads, masks)
            decay = jnp.where(never, decay, jnp.float32(algo.decay(new_step)))
        new_state = SparseState(
            inner_state, masks, new_step, state.key, decay, ever, stats, previous
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sparse_state(state: Any) -> SparseState:
    """The :class:`SparseState` inside an optimizer state (also when chained or nested)."""
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, SparseState))
        if isinstance(s, SparseState)
    ]
    if not found:
        raise ValueError(
            "no sparsejax SparseState in this optimizer state; was it built by sparsify?"
        )
    return found[0]


def masks_of(state: Any) -> PyTree:
    """The mask pytree (same key paths as params) of an optimizer state built by :func:`sparsify`."""
    return sparse_state(state).masks


@jax.custom_vjp
def _straight_through(w: Array, m: Array, decay: Array) -> Array:
    return jnp.where(m, w, w * decay.astype(w.dtype))


def _st_fwd(w, m, decay):
    return _straight_through(w, m, decay), (m, decay)


def _st_bwd(res, g):
    m, decay = res
    # The mask is bool, so its cotangent is float0: nothing the size of the weights is allocated.
    return g, np.zeros(m.shape, jax.dtypes.float0), jnp.zeros_like(decay)


_straight_through.defvjp(_st_fwd, _st_bwd)


def forward_params(params: PyTree, state: Any, *, assume_masked: bool = False) -> PyTree:
    """The weights the model uses in its forward pass: ``w * (m + (1 - m) * decay)``.

    Masked-dense methods and STE get ``w * m`` (``decay = 0``), PGF's mask decay gets the decayed weights.
    The gradient is straight-through: ``jax.grad`` through this gives the dense ``dL/d(w * m)`` at every
    position, masked ones included (RigL grows by it; ``sparsify`` masks the updates itself).

    ``assume_masked=True`` returns ``params`` unchanged, saving one pass over every weight per step.
    It is exact for masked-dense methods (``algo.hard``: every update leaves the weights outside the
    masks at exactly 0) once the initial params are masked too: ``params = sj.apply_masks(params,
    sj.masks_of(state))`` right after ``tx.init``. Never use it for STE-like methods or PGF.
    """
    if assume_masked:
        return params
    s = sparse_state(state)
    return mk.map_params(lambda m, w: _straight_through(w, m, s.decay), s.masks, params)
