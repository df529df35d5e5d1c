"""RigL: Rigging the Lottery.

Evci et al. (2020), "Rigging the Lottery: Making All Tickets Winners". Every ``update_every`` steps while
``t < end_step`` (75% of training by default, as in the paper): per leaf drop ``k = f(t) * active``
smallest-``|w|`` actives, grow the ``k`` largest dense gradients ``|g|`` among inactive positions; ``f``
is cosine-decayed from ``alpha`` (0.3). Grown weights are 0 and their optimizer state is reset
(``sparsify`` does both).
"""

from __future__ import annotations

from typing import Any

import optax

from sparsejax import schedules
from sparsejax.algorithms.dynamic import dynamic_sparse
from sparsejax.core import SparseAlgorithm


def rigl(
    sparsity: float = 0.9,
    *,
    update_every: int = 100,
    start_step: int = 0,
    end_step: int | None = None,
    num_steps: int | None = None,
    drop_fraction: float | optax.Schedule = 0.3,
    drop_schedule: str = "cosine",
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """RigL at ``sparsity`` (ERK by default); ``end_step=None`` is 75% of ``num_steps``; ``layout``
    takes the Layout fields, e.g. ``block_size`` for block-level drop/grow by block norms."""
    end = schedules.relative_step(end_step, num_steps, 0.75, "end_step")
    return dynamic_sparse(
        "rigl",
        lambda params, grads: grads,
        sparsity=sparsity,
        update_every=update_every,
        start_step=start_step,
        end_step=end,
        drop_fraction=drop_fraction,
        drop_schedule=drop_schedule,
        seed=seed,
        layout=layout,
    )
