"""Gradual magnitude pruning (GMP), per leaf and global.

Zhu & Gupta (2017), "To prune, or not to prune: exploring the efficacy of pruning for model compression".
Dense-to-sparse: every ``update_every`` steps in ``[start_step, end_step)`` prune by magnitude to
``s_t = s_f + (s_i - s_f) * (1 - p) ** 3``; pruned weights never return. The global variant uses one
magnitude threshold across all sparsified leaves (found by bisection, no global sort).

"The Journey Matters" (2025) found pruning from 25% to 75% of training near-optimal for LLM pre-training:
``gmp(0.9, start_step=num_steps // 4, end_step=3 * num_steps // 4)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import masks as mk
from sparsejax import schedules
from sparsejax.algorithms.drop_grow import no_growth, prune_global, prune_to
from sparsejax.core import MaskUpdate, SparseAlgorithm
from sparsejax.layout import Layout
from sparsejax.selection import path_str


def check_initial(initial_sparsity: float, sparsity: float) -> None:
    if not 0.0 <= initial_sparsity <= sparsity:
        raise ValueError(
            f"initial_sparsity={initial_sparsity}: allowed values are in [0, sparsity={sparsity}]"
        )


def start_masks(lay: Layout, initial_sparsity: float):
    def init(params, key):
        if initial_sparsity == 0.0:
            return lay.all_active(params)
        return lay.init_masks(params, key, sparsity=initial_sparsity)

    return init


def remaining_fraction(
    sparsity: float,
    initial_sparsity: float,
    start_step: int,
    end_step: int,
    update_every: int,
    sparsity_schedule: optax.Schedule | None = None,
) -> optax.Schedule:
    """step -> the fraction of the way from ``initial_sparsity`` to ``sparsity`` still to go: Zhu &
    Gupta's ``(1 - p)^3``, or what a given ``sparsity_schedule(step)`` (any optax schedule of the
    target sparsity) implies, each leaf moving by the same fraction of its own way."""
    if sparsity_schedule is None:
        return schedules.cubic_sparsity(1.0, 0.0, start_step, end_step, update_every)
    span = max(sparsity - initial_sparsity, 1e-12)
    return lambda step: jnp.clip((sparsity - sparsity_schedule(step)) / span, 0.0, 1.0)


def scheduled_counts(
    lay: Layout, params: Any, initial_sparsity: float, remaining: jax.Array
) -> dict[int, jax.Array]:
    """Active-unit count per sparsified leaf (by flat index) at cubic progress ``remaining = (1-p)^3``."""
    final = lay.per_leaf(params)
    counts = {}
    for i, (path, w) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
        s_f = final.get(path_str(path))
        if s_f is not None:
            s_t = s_f + (min(initial_sparsity, s_f) - s_f) * remaining
            units = mk.unit_count(np.shape(w), lay.block_size)
            counts[i] = jnp.round((1.0 - s_t) * units).astype(jnp.int32)
    return counts


def gmp(
    sparsity: float = 0.9,
    *,
    initial_sparsity: float = 0.0,
    update_every: int = 100,
    start_step: int = 0,
    end_step: int | None = None,
    num_steps: int | None = None,
    distribution: str = "uniform",
    sparsity_schedule: optax.Schedule | None = None,
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """Per-leaf GMP to each leaf's share of ``sparsity`` (uniform: every leaf pruned alike, as in the
    paper); ``end_step=None`` is 75% of ``num_steps``; ``sparsity_schedule`` replaces the cubic ramp."""
    check_initial(initial_sparsity, sparsity)
    end_step = schedules.relative_step(end_step, num_steps, 0.75, "end_step")
    lay = Layout(sparsity=sparsity, distribution=distribution, **layout)
    remaining = remaining_fraction(
        sparsity, initial_sparsity, start_step, end_step, update_every, sparsity_schedule
    )

    def update(masks, params, grads, step, key):
        counts = scheduled_counts(lay, params, initial_sparsity, remaining(step))
        return MaskUpdate(prune_to(masks, params, counts, key, lay.block_size), no_growth(masks))

    return SparseAlgorithm(
        name="gmp",
        init_masks=start_masks(lay, initial_sparsity),
        update_masks=update,
        is_update_step=schedules.periodic(start_step, end_step, update_every),
        seed=seed,
    )


def global_magnitude(
    sparsity: float = 0.9,
    *,
    initial_sparsity: float = 0.0,
    update_every: int = 100,
    start_step: int = 0,
    end_step: int | None = None,
    num_steps: int | None = None,
    distribution: str = "uniform",
    sparsity_schedule: optax.Schedule | None = None,
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """GMP with one magnitude threshold across all sparsified leaves (element-granular);
    ``distribution`` only shapes the start masks when ``initial_sparsity > 0``; ``sparsity_schedule``
    (step -> target sparsity) replaces the cubic ramp."""
    check_initial(initial_sparsity, sparsity)
    end_step = schedules.relative_step(end_step, num_steps, 0.75, "end_step")
    lay = Layout(sparsity=sparsity, distribution=distribution, **layout)
    if lay.block_size is not None:
        raise ValueError("block_size: global_magnitude supports element masks only (None)")
    sched = sparsity_schedule or schedules.cubic_sparsity(
        initial_sparsity, sparsity, start_step, end_step, update_every
    )

    def update(masks, params, grads, step, key):
        total = sum(int(np.size(m)) for m in mk.sparse_leaves(masks))
        keep = jnp.round((1.0 - sched(step)) * total).astype(jnp.int32)
        return MaskUpdate(prune_global(masks, params, keep, key), no_growth(masks))

    return SparseAlgorithm(
        name="global_magnitude",
        init_masks=start_masks(lay, initial_sparsity),
        update_masks=update,
        is_update_step=schedules.periodic(start_step, end_step, update_every),
        seed=seed,
    )
