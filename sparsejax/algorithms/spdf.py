"""SPDF: sparse pre-training, then dense fine-tuning.

Thangarasa et al. (2023), "SPDF: Sparse Pre-training and Dense Fine-tuning for Large Language Models".
Pre-train with any sparse method, then release every mask: the whole network is fine-tuned dense. The
weights that were pruned come back at exactly 0 with their optimizer state reset (``sparsify`` does
both for the grown positions of a mask update), so fine-tuning starts from the sparse network.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax

from sparsejax import masks as mk
from sparsejax import schedules
from sparsejax.algorithms.drop_grow import no_growth
from sparsejax.algorithms.gmp import gmp
from sparsejax.algorithms.granet import granet
from sparsejax.algorithms.rigl import rigl
from sparsejax.algorithms.set_sparse import set_sparse
from sparsejax.algorithms.static import static
from sparsejax.core import MaskUpdate, SparseAlgorithm
from sparsejax.layout import LAYOUT_KEYS

PHASES = {"static": static, "set": set_sparse, "rigl": rigl, "gmp": gmp, "granet": granet}


def _phase(name: str, sparsity: float, seed: int, options: dict[str, Any]) -> SparseAlgorithm:
    if name not in PHASES:
        raise ValueError(f"sparse_phase={name!r}: allowed values are {', '.join(PHASES)}")
    params = inspect.signature(PHASES[name]).parameters
    layout = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in options.items() if k in params or (layout and k in LAYOUT_KEYS)}
    return PHASES[name](sparsity, seed=seed, **kw)


def spdf(
    sparsity: float = 0.9,
    *,
    sparse_phase: str | SparseAlgorithm = "static",
    release_step: int | None = None,
    num_steps: int | None = None,
    seed: int = 0,
    **options: Any,
) -> SparseAlgorithm:
    """``sparse_phase`` (a masked-dense algorithm, or its name built with ``options``) until
    ``release_step`` (None: 75% of ``num_steps``), dense from then on."""
    release = schedules.relative_step(release_step, num_steps, 0.75, "release_step")
    base = sparse_phase
    if not isinstance(base, SparseAlgorithm):
        base = _phase(base, sparsity, seed, {**options, "num_steps": num_steps})
    if not base.hard:
        raise ValueError(f"sparse_phase={base.name!r}: allowed masked-dense methods")

    def is_update_step(step):
        return (base.is_update_step(step) & (step < release)) | (step == release)

    def update(masks, params, grads, step, key):
        def released():
            dense = mk.map_sparse(lambda m: m | True, masks)
            return MaskUpdate(dense, mk.difference(dense, masks))

        def sparse():
            if base.update_masks is None:
                return MaskUpdate(masks, no_growth(masks))
            return base.update_masks(masks, params, grads, step, key)

        return jax.lax.cond(step == release, released, sparse)

    return SparseAlgorithm(
        name="spdf",
        init_masks=base.init_masks,
        update_masks=update,
        is_update_step=is_update_step,
        seed=seed,
    )


spdf.forwards_to = tuple(PHASES.values())  # its **options: the keys of these (see registry)
