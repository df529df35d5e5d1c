"""FLOP counts for a Flax model: dense and sparse forward, and training FLOPs as RigL counts them.

``forward_flops`` traces ``apply_fn(params, *inputs)`` to a jaxpr and counts every ``dot_general`` and
convolution (2 FLOPs per multiply-add). When one operand comes from a params leaf (also through reshapes,
casts and masking), that op's sparse cost is ``density_l * flops_l``; other ops (attention scores, say)
count dense in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from sparsejax import masks as mk
from sparsejax.selection import path_str

PyTree = Any
# Ops through which a weight is still "the weight" (its sparsity carries over to the op using it).
_PASS = {
    "convert_element_type",
    "reshape",
    "transpose",
    "mul",
    "select_n",
    "broadcast_in_dim",
    "copy",
}


def _op_flops(eqn: Any) -> float:
    out = eqn.outvars[0].aval.shape
    if eqn.primitive.name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        contracted = np.prod([eqn.invars[0].aval.shape[d] for d in lc]) if lc else 1
        return 2.0 * np.prod(out) * contracted
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    spatial = np.prod([rhs[d] for d in dn.rhs_spec[2:]])
    cin = rhs[dn.rhs_spec[1]]
    return 2.0 * np.prod(out) * spatial * cin


def _sub_jaxprs(eqn: Any):
    for v in eqn.params.values():
        for j in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(j, jex_core.ClosedJaxpr):
                yield j.jaxpr
            elif isinstance(j, jex_core.Jaxpr):
                yield j


def _walk(jaxpr: Any, source: dict, density: dict, acc: list) -> None:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        srcs = [source.get(v) for v in eqn.invars if not isinstance(v, jex_core.Literal)]
        if name in ("dot_general", "conv_general_dilated"):
            flops = _op_flops(eqn)
            leaf = next((s for s in srcs if s is not None), None)
            acc.append((flops, flops * density.get(leaf, 1.0)))
        elif name in _PASS and any(s is not None for s in srcs):
            source[eqn.outvars[0]] = next(s for s in srcs if s is not None)
        for sub in _sub_jaxprs(eqn):
            inner = {iv: source.get(ov) for iv, ov in zip(sub.invars, eqn.invars)}
            _walk(sub, {k: v for k, v in inner.items() if v is not None}, density, acc)


def forward_flops(
    apply_fn: Callable[..., Any], params: PyTree, *inputs: Any, masks: PyTree | None = None
) -> dict[str, float]:
    """Dense and sparse forward FLOPs of ``apply_fn(params, *inputs)``.

    Args:
      apply_fn: e.g. ``lambda p, x: model.apply({"params": p}, x)``.
      params: the params pytree (arrays or ``ShapeDtypeStruct``).
      inputs: example inputs (shapes matter, values do not).
      masks: a mask pytree; without it, densities are read from the nonzeros of ``params``.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    density = {}
    src_tree = masks if masks is not None else params
    for path, x in jax.tree_util.tree_flatten_with_path(src_tree, is_leaf=mk.is_dense)[0]:
        if not mk.is_dense(x) and np.size(x):
            density[path_str(path)] = float(np.count_nonzero(np.asarray(x))) / np.size(x)
    closed = jax.make_jaxpr(apply_fn)(params, *inputs)
    names = [path_str(p) for p, _ in flat]
    source = {v: names[i] for i, v in enumerate(closed.jaxpr.invars[: len(names)])}
    acc: list = []
    _walk(closed.jaxpr, source, density, acc)
    dense = float(sum(d for d, _ in acc))
    sparse = float(sum(s for _, s in acc))
    return {"dense": dense, "sparse": sparse, "ratio": sparse / dense if dense else 1.0}


def train_flops_per_step(
    algorithm: str, f_dense: float, f_sparse: float, update_every: int = 100
) -> float:
    """Training FLOPs per step as the RigL paper (Appendix H) counts them: forward + 2x backward.

    dense ``3 f_D``; static/SET/GMP-style masked ``3 f_S``; RigL and GraNet ``(3 f_S dT + 2 f_S + f_D) /
    (dT + 1)`` (a dense gradient every ``dT`` steps); STE, SR-STE and PGF ``f_S + 2 f_D`` (dense
    gradients every step).
    """
    if algorithm == "dense":
        return 3.0 * f_dense
    if algorithm in ("rigl", "granet"):
        dt = update_every
        return (3.0 * f_sparse * dt + 2.0 * f_sparse + f_dense) / (dt + 1)
    if algorithm in ("ste", "sr_ste", "pgf"):
        return f_sparse + 2.0 * f_dense
    return 3.0 * f_sparse
