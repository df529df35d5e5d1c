"""SET: Sparse Evolutionary Training.

Mocanu et al. (2018), "Scalable training of artificial neural networks with adaptive sparse connectivity
inspired by network science". Every ``update_every`` steps each leaf drops the fraction ``zeta`` of its
actives with the smallest ``|w|`` and grows as many uniformly at random among inactive positions; grown
weights start at 0.
"""

from __future__ import annotations

from typing import Any

from sparsejax import schedules
from sparsejax.algorithms.drop_grow import drop_and_grow
from sparsejax.core import SparseAlgorithm
from sparsejax.layout import Layout


def set_sparse(
    sparsity: float = 0.9,
    *,
    update_every: int = 100,
    start_step: int = 0,
    end_step: int = 2**31 - 1,
    drop_fraction: float = 0.3,
    drop_schedule: str = "constant",
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """SET with drop fraction ``zeta = drop_fraction`` (constant by default, cosine optional)."""
    lay = Layout(sparsity=sparsity, **layout)
    frac = schedules.drop_fraction(drop_schedule, drop_fraction, start_step, end_step)
    return SparseAlgorithm(
        name="set",
        init_masks=lay.init_masks,
        update_masks=lambda masks, params, grads, step, key: drop_and_grow(
            masks, params, grads, key, frac(step), grow="random", block=lay.block_size
        ),
        is_update_step=schedules.periodic(start_step, end_step, update_every),
        seed=seed,
    )
