"""Straight-through estimation: STE and SR-STE.

STE: the forward uses ``w * m`` with ``m`` recomputed from ``|w|`` every step (per-leaf top-k, or N:M
groups along the input axis); the gradient w.r.t. ``w * m`` is applied to the dense ``w``, so pruned
weights keep learning and can come back.

SR-STE, Zhou et al. (2021), "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch":
STE with an N:M mask plus the sparse-refined term ``g + lambda_w * (1 - m) * w`` (``lambda_w = 2e-4``),
which pulls pruned weights towards zero and stabilises the mask (lower SAD). Also usable on its own as a
chainable optax transform: ``optax.chain(sj.sr_ste_decay(2, 4), optax.sgd(0.1))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparsejax import masks as mk
from sparsejax.core import SparseAlgorithm
from sparsejax.layout import Layout
from sparsejax.selection import path_str

PyTree = Any


def nm_masks(
    params: PyTree, names: set[str], n: int, m: int, axis: int = -2, skip_indivisible: bool = False
) -> PyTree:
    """N:M masks for the leaves in ``names`` (groups along ``axis``: -2 is the input axis of Flax Dense
    ``(in, out)`` and Conv ``(h, w, c_in, c_out)`` kernels); other leaves are DENSE."""

    def one(path, w):
        name = path_str(path)
        if name not in names:
            return mk.DENSE
        if skip_indivisible and w.shape[axis] % m:
            return mk.DENSE
        return mk.nm_mask(w, n, m, axis, name)

    return jax.tree_util.tree_map_with_path(one, params)


def mask_fn(
    sparsity: float | None, n: int | None, m: int | None, axis: int, skip: bool, layout: dict
) -> Callable[[PyTree], PyTree]:
    """``params -> masks`` recomputed from magnitudes: N:M when ``n, m`` are given, else per-leaf top-k."""
    if (n is None) != (m is None):
        raise ValueError("n / m: allowed both set (N:M) or neither (unstructured)")
    if n is not None:
        if not 0 < n < m:
            raise ValueError(f"n={n}, m={m}: allowed 0 < n < m")
        layout = {**layout, "distribution": "uniform"}
        lay = Layout(sparsity=1.0 - n / m, **layout)
        return lambda params: nm_masks(params, set(lay.per_leaf(params)), n, m, axis, skip)
    lay = Layout(**{**layout, "init": "magnitude"}, sparsity=0.9 if sparsity is None else sparsity)
    return lambda params: lay.init_masks(params, jax.random.PRNGKey(0))


def ste(
    sparsity: float = 0.9,
    *,
    n: int | None = None,
    m: int | None = None,
    nm_axis: int = -2,
    skip_indivisible: bool = False,
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """STE with N:M masks (``n, m`` grouped along ``nm_axis``) or unstructured per-leaf top-k at
    ``sparsity``."""
    masks_from = mask_fn(sparsity, n, m, nm_axis, skip_indivisible, layout)
    return SparseAlgorithm(
        name="ste",
        init_masks=lambda params, key: masks_from(params),
        refresh_masks=lambda new_params, masks, step, algo_state: masks_from(new_params),
        hard=False,
        seed=seed,
    )


def _refined(decay: float) -> Callable[[PyTree, PyTree, PyTree], PyTree]:
    def add(grads, params, masks):
        return mk.map_params(
            lambda msk, g, w: g + decay * jnp.where(msk, 0.0, w).astype(g.dtype),
            masks,
            grads,
            params,
        )

    return add


def sr_ste(
    n: int = 2,
    m: int = 4,
    *,
    sr_decay: float = 2e-4,
    nm_axis: int = -2,
    skip_indivisible: bool = False,
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """SR-STE with N:M masks and refined-gradient weight ``sr_decay`` (``lambda_w``); 0 gives STE."""
    if sr_decay < 0:
        raise ValueError(f"sr_decay={sr_decay}: allowed values are >= 0")
    masks_from = mask_fn(None, n, m, nm_axis, skip_indivisible, layout)
    return SparseAlgorithm(
        name="sr_ste",
        init_masks=lambda params, key: masks_from(params),
        refresh_masks=lambda new_params, masks, step, algo_state: masks_from(new_params),
        hard=False,
        grad_transform=_refined(sr_decay),
        seed=seed,
    )


class SrSteDecayState(NamedTuple):
    """``sr_ste_decay`` is stateless."""


def sr_ste_decay(
    n: int, m: int, decay: float = 2e-4, axis: int = -2
) -> optax.GradientTransformation:
    """SR-STE's refined term ``g + decay * (1 - m) * w`` as a plain optax transform.

    ``m`` is the N:M mask of the current ``params`` along ``axis`` for every leaf with ``ndim >= 2`` whose
    grouped axis ``m`` divides; other leaves pass through unchanged.
    """
    if not 0 < n < m:
        raise ValueError(f"sr_ste_decay: n={n}, m={m}: allowed 0 < n < m")

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("sr_ste_decay needs params: tx.update(grads, state, params)")
        names = {
            path_str(p) for p, w in jax.tree_util.tree_flatten_with_path(params)[0] if w.ndim >= 2
        }
        masks = nm_masks(params, names, n, m, axis, skip_indivisible=True)
        return _refined(decay)(updates, params, masks), state

    return optax.GradientTransformation(lambda params: SrSteDecayState(), update)
