"""Opt-in mask metrics kept in the optimizer state: the ever-active union (ITOP) and flip counts.

``sparsify(inner, algo, track_metrics=True)`` keeps a :class:`MaskMetrics` in ``SparseState.metrics``
(the experiments trainer does); without it the state holds ``()`` and a step does no metric work.
Algorithms that refresh their masks every step (the STE family) keep the masks before the latest
refresh bit-packed instead of counting flips in the step: :func:`stats` counts them when read.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sparsejax import masks as mk

PyTree = Any
Array = jax.Array


class MaskMetrics(NamedTuple):
    """Metric state of a sparsified optimizer."""

    ever_active: PyTree  # union of all masks so far (ITOP rate)
    counts: dict[str, Array]  # int32 dropped, grown, sad of the latest ``update_masks``
    previous: (
        PyTree  # bit-packed masks before the latest refresh (refreshing algorithms); DENSE else
    )


def _zero() -> Array:
    return jnp.zeros((), jnp.int32)  # a fresh buffer each: the state may be donated


def init(masks: PyTree, refreshes: bool) -> MaskMetrics:
    """Metrics of freshly created ``masks``; ``refreshes``: the masks change every step."""
    previous = mk.pack_masks(masks) if refreshes else mk.map_sparse(lambda m: mk.DENSE, masks)
    counts = {"dropped": _zero(), "grown": _zero(), "sad": _zero()}
    return MaskMetrics(mk.map_sparse(jnp.copy, masks), counts, previous)


def after_update(metrics: MaskMetrics, before: PyTree, after: PyTree, grown: PyTree) -> MaskMetrics:
    """Counts of one ``update_masks`` (``grown`` includes regrown just-dropped units)."""
    n_grown = mk.count_active(grown)
    dropped = mk.count_active(before) - mk.count_active(after) + n_grown
    counts = {"dropped": dropped, "grown": n_grown, "sad": mk.hamming(before, after)}
    return MaskMetrics(mk.union(metrics.ever_active, after), counts, metrics.previous)


def after_refresh(metrics: MaskMetrics, before: PyTree, after: PyTree) -> MaskMetrics:
    """Keep the masks ``before`` a refresh, packed; the flips are counted by :func:`stats`."""
    ever = mk.union(metrics.ever_active, after)
    return MaskMetrics(ever, metrics.counts, mk.pack_masks(before))


def stats(metrics: Any, masks: PyTree) -> dict[str, Array]:
    """int32 ``dropped``, ``grown``, ``sad`` of the latest mask change."""
    if not isinstance(metrics, MaskMetrics):
        raise ValueError("mask stats are not tracked: use sparsify(..., track_metrics=True)")
    if not mk.sparse_leaves(metrics.previous):
        return metrics.counts
    previous = mk.unpack_masks(metrics.previous, masks)
    dropped = mk.count_active(mk.difference(previous, masks))
    grown = mk.count_active(mk.difference(masks, previous))
    return {"dropped": dropped, "grown": grown, "sad": dropped + grown}
