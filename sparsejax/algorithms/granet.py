"""GraNet: gradual pruning with zero-cost neuroregeneration.

Liu et al. (2021), "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration". GMP's cubic
schedule from ``s_i`` (0: dense-to-sparse; e.g. 0.5: sparse-to-sparse) to ``s_f``; at each update, after
pruning, a RigL-style regeneration drops a cosine-decayed fraction ``r(t)`` of the remaining actives by
magnitude and regrows as many by gradient magnitude, so the count after the update is the scheduled one.
Pruning here is per leaf (the paper's global variant: combine ``global_magnitude`` with RigL).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from sparsejax import schedules
from sparsejax.algorithms.drop_grow import drop_and_grow, prune_to
from sparsejax.algorithms.gmp import check_initial, scheduled_counts, start_masks
from sparsejax.core import SparseAlgorithm
from sparsejax.layout import Layout


def granet(
    sparsity: float = 0.9,
    *,
    initial_sparsity: float = 0.0,
    update_every: int = 100,
    start_step: int = 0,
    end_step: int | None = None,
    num_steps: int | None = None,
    drop_fraction: float | optax.Schedule = 0.3,
    drop_schedule: str = "cosine",
    distribution: str = "uniform",
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """GraNet; ``end_step=None`` is 75% of ``num_steps``; ``layout`` takes the other Layout fields."""
    check_initial(initial_sparsity, sparsity)
    end_step = schedules.relative_step(end_step, num_steps, 0.75, "end_step")
    lay = Layout(sparsity=sparsity, distribution=distribution, **layout)
    remaining = schedules.cubic_sparsity(1.0, 0.0, start_step, end_step, update_every)
    regen = schedules.drop_fraction(drop_schedule, drop_fraction, start_step, end_step)

    def update(masks, params, grads, step, key):
        counts = scheduled_counts(lay, params, initial_sparsity, remaining(step))
        pruned = prune_to(masks, params, counts, key, lay.block_size)
        regen_key = jax.random.fold_in(key, 1)
        return drop_and_grow(pruned, params, grads, regen_key, regen(step), lay.block_size)

    return SparseAlgorithm(
        name="granet",
        init_masks=start_masks(lay, initial_sparsity),
        update_masks=update,
        is_update_step=schedules.periodic(start_step, end_step, update_every),
        seed=seed,
    )
