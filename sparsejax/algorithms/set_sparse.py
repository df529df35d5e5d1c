"""SET: Sparse Evolutionary Training.

Mocanu et al. (2018), "Scalable training of artificial neural networks with adaptive sparse connectivity
inspired by network science". Every ``update_every`` steps (through the whole of training, as in the
paper) each leaf drops the fraction ``zeta`` of its actives with the smallest ``|w|`` and grows as many
uniformly at random among inactive positions; grown weights start at 0. RigL with random growth.
"""

from __future__ import annotations

from typing import Any

import optax

from sparsejax.algorithms.dynamic import dynamic_sparse
from sparsejax.core import SparseAlgorithm


def set_sparse(
    sparsity: float = 0.9,
    *,
    update_every: int = 100,
    start_step: int = 0,
    end_step: int | None = None,
    drop_fraction: float | optax.Schedule = 0.3,
    drop_schedule: str = "constant",
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """SET with drop fraction ``zeta = drop_fraction`` (constant, as in the paper; cosine optional);
    ``end_step=None``: masks evolve until the end of training."""
    return dynamic_sparse(
        "set",
        lambda params, grads: None,
        sparsity=sparsity,
        update_every=update_every,
        start_step=start_step,
        end_step=2**31 - 1 if end_step is None else end_step,
        drop_fraction=drop_fraction,
        drop_schedule=drop_schedule,
        seed=seed,
        layout=layout,
    )
