"""Where sparsity goes: which leaves, at what sparsity each, at what granularity, initialised how.

Every mask-based algorithm takes one :class:`Layout`; the algorithms then differ only in how masks move.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from sparsejax import masks as mk
from sparsejax.distributions import DISTRIBUTIONS, leaf_sparsities

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Layout:
    """Sparsity layout shared by the mask-based algorithms.

    Attributes:
      sparsity: global target in ``[0, 1)`` over the sparsified leaves.
      distribution: ``uniform``, ``er``, ``erk`` or ``custom`` (see ``distributions``).
      overrides: regex on leaf path -> sparsity (``0.0`` keeps a leaf dense).
      dense_first, dense_last: keep the first / last sparsifiable layer dense.
      init: ``random`` or ``magnitude`` mask initialisation.
      block_size: ``(b0, b1)`` for block-granular masks on the last two axes, or None.
    """

    sparsity: float = 0.9
    distribution: str = "erk"
    overrides: tuple[tuple[str, float], ...] = ()
    dense_first: bool = False
    dense_last: bool = False
    init: str = "random"
    block_size: tuple[int, int] | None = None

    def __post_init__(self):
        if isinstance(self.overrides, Mapping):
            object.__setattr__(self, "overrides", tuple(self.overrides.items()))
        if self.block_size is not None:
            block = tuple(int(b) for b in self.block_size)
            if len(block) != 2 or min(block) < 1:
                raise ValueError(
                    f"block_size={self.block_size}: allowed None or two positive integers"
                )
            object.__setattr__(self, "block_size", block)
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float):
            raise ValueError(f"sparsity={self.sparsity!r}: allowed values are in [0, 1)")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity={self.sparsity!r}: allowed values are in [0, 1)")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution={self.distribution!r}: allowed values are {', '.join(DISTRIBUTIONS)}"
            )
        if self.init not in ("random", "magnitude"):
            raise ValueError(f"init={self.init!r}: allowed values are random, magnitude")

    def per_leaf(self, params: PyTree, sparsity: float | None = None) -> dict[str, float]:
        """Leaf path -> sparsity for every sparsified leaf (at ``sparsity`` if given, else the target)."""
        return leaf_sparsities(
            params,
            self.sparsity if sparsity is None else sparsity,
            self.distribution,
            dict(self.overrides),
            self.dense_first,
            self.dense_last,
        )

    def init_masks(self, params: PyTree, key: jax.Array, sparsity: float | None = None) -> PyTree:
        """Initial masks at the layout's (or the given) sparsity."""
        return mk.create_masks(
            params, self.per_leaf(params, sparsity), key, self.init, self.block_size
        )

    def all_active(self, params: PyTree) -> PyTree:
        """Masks that select the sparsified leaves with every weight active (dense-to-sparse start)."""
        names = self.per_leaf(params)
        return mk.create_masks(params, dict.fromkeys(names, 0.0), jax.random.PRNGKey(0), "random")


LAYOUT_KEYS = tuple(f.name for f in dataclasses.fields(Layout))
