"""RigL: Rigging the Lottery.

Evci et al. (2020), "Rigging the Lottery: Making All Tickets Winners". Every ``update_every`` steps while
``t < end_step``: per leaf drop ``k = f(t) * active`` smallest-``|w|`` actives, grow the ``k`` largest
dense gradients ``|g|`` among inactive positions; ``f`` is cosine-decayed from ``alpha`` (0.3). Grown
weights are 0 and their optimizer state is reset (``sparsify`` does both).
"""

from __future__ import annotations

from typing import Any

from sparsejax import schedules
from sparsejax.algorithms.drop_grow import drop_and_grow
from sparsejax.core import SparseAlgorithm
from sparsejax.layout import Layout


def rigl(
    sparsity: float = 0.9,
    *,
    update_every: int = 100,
    start_step: int = 0,
    end_step: int = 75_000,
    drop_fraction: float = 0.3,
    drop_schedule: str = "cosine",
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """RigL at ``sparsity`` (ERK by default); ``layout`` takes the Layout fields, e.g. ``block_size``
    for block-level drop/grow by block norms."""
    lay = Layout(sparsity=sparsity, **layout)
    frac = schedules.drop_fraction(drop_schedule, drop_fraction, start_step, end_step)
    return SparseAlgorithm(
        name="rigl",
        init_masks=lay.init_masks,
        update_masks=lambda masks, params, grads, step, key: drop_and_grow(
            masks, params, grads, key, frac(step), grow="gradient", block=lay.block_size
        ),
        is_update_step=schedules.periodic(start_step, end_step, update_every),
        seed=seed,
    )
