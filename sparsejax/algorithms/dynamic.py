"""Dynamic sparse training: drop by one score, grow by another, on a schedule (SET, RigL, yours).

Every ``update_every`` steps in ``[start_step, end_step)`` each leaf drops the fraction ``f(t)`` of its
actives with the smallest ``|w|`` and grows as many by ``grow_scores(params, grads)`` among the
positions inactive after the drop (None: uniformly at random). SET and RigL differ only in that one
function and in their papers' drop-fraction schedules; a new grow criterion is one more function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from sparsejax import schedules
from sparsejax.algorithms.drop_grow import drop_and_grow
from sparsejax.core import SparseAlgorithm
from sparsejax.layout import Layout

PyTree = Any
GrowScores = Callable[[PyTree, PyTree], PyTree | None]


def dynamic_sparse(
    name: str,
    grow_scores: GrowScores,
    *,
    sparsity: float,
    update_every: int,
    start_step: int,
    end_step: int,
    drop_fraction: float | optax.Schedule,
    drop_schedule: str,
    seed: int,
    layout: dict[str, Any],
) -> SparseAlgorithm:
    """A drop-and-grow algorithm named ``name`` growing by ``grow_scores(params, grads)``.

    Args:
      grow_scores: the pytree whose largest ``|values|`` grow (e.g. the dense gradient), or None for
        uniformly random growth.
      drop_fraction: ``alpha`` of the ``drop_schedule`` (``cosine`` or ``constant``), or any schedule
        of the global step (e.g. ``optax.cosine_decay_schedule``).
      layout: the :class:`~sparsejax.layout.Layout` fields (distribution, overrides, block_size, ...).
    """
    lay = Layout(sparsity=sparsity, **layout)
    frac = schedules.drop_fraction(drop_schedule, drop_fraction, start_step, end_step)

    def update(masks, params, grads, step, key):
        scores = grow_scores(params, grads)
        return drop_and_grow(masks, params, scores, key, frac(step), lay.block_size)

    return SparseAlgorithm(
        name=name,
        init_masks=lay.init_masks,
        update_masks=update,
        is_update_step=schedules.periodic(start_step, end_step, update_every),
        seed=seed,
    )
