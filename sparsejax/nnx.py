"""Flax NNX models under a sparse optimizer state: set-up, forward weights, gradients, clean names.

Imported explicitly (``import sparsejax.nnx as sjnnx``); ``import sparsejax`` never imports Flax NNX.
An ``nnx.Optimizer`` over ``sj.sparsify(...)`` keeps the masks in ``opt.opt_state`` and the model keeps
its dense weights, but what the model must *use* in its forward pass is ``sj.forward_params`` of them
(``w * m``, N:M-projected for STE / SR-STE, decayed for PGF, the algorithm's own hook otherwise).
:func:`forward_weights` puts those into the model for the duration of a ``with`` block, and
:func:`value_and_grad` runs a plain NNX loss under it::

    opt = sjnnx.sparse_optimizer(model, optax.adam(1e-3), sj.rigl(0.9, end_step=7_500), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt, x, y):
        loss_fn = lambda model: xent(model(x), y)
        loss, (grads, algo_grads) = sjnnx.value_and_grad(loss_fn)(model, opt)
        opt.update(model, grads, algo_grads=algo_grads)
        return loss

:func:`sparse_state`, :func:`masks_of` and :func:`params_of` give the plain (Variable-free) trees that
``sj.summarize``, ``sj.metrics.*`` and ``sj.save_masks`` take, keyed ``l1/kernel`` as in linen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import optax
from flax import nnx

from sparsejax import masks as mk
from sparsejax import metrics
from sparsejax import state as st
from sparsejax.core import SparseAlgorithm, SparseState, sparsify
from sparsejax.selection import path_str

PyTree = Any
Filter = Any  # an nnx filter: a Variable type, nnx.PathContains(...), nnx.All(...), ...
MIN_FLAX = (0, 12)  # nnx.Optimizer(..., wrt=), nnx.as_pure, eager sharding

if tuple(int(v) for v in flax.__version__.split(".")[:2]) < MIN_FLAX:
    raise ImportError(
        f"flax={flax.__version__}: sparsejax.nnx needs flax>={'.'.join(map(str, MIN_FLAX))} "
        "(pip install -U flax)"
    )


def sparse_state(opt: nnx.Optimizer | Any) -> SparseState:
    """The :class:`~sparsejax.SparseState` of an ``nnx.Optimizer`` (or of its ``opt_state``) with every
    NNX ``Variable`` replaced by its value: masks keyed like the model's params (``l1/kernel``)."""
    tree = opt.opt_state if isinstance(opt, nnx.Optimizer) else opt
    return st.sparse_state(nnx.as_pure(tree))


def masks_of(opt: nnx.Optimizer | Any) -> PyTree:
    """The mask pytree of an ``nnx.Optimizer`` built on ``sj.sparsify``, as plain arrays: bool for the
    sparsified params, ``sj.DENSE`` elsewhere (for ``sj.summarize``, ``sj.save_masks``, ``sj.metrics``)."""
    return sparse_state(opt).masks


def _wrt(opt: Any, wrt: Filter | None) -> Filter:
    if wrt is not None:
        return wrt
    if isinstance(opt, nnx.Optimizer):
        return opt.wrt
    raise ValueError(
        "wrt=None: allowed an nnx filter (the optimizer's wrt, e.g. nnx.Param) when opt is an "
        "optimizer state rather than an nnx.Optimizer"
    )


def params_of(model: nnx.Module, wrt: Filter = nnx.Param) -> PyTree:
    """The model's ``wrt`` variables as plain arrays (an ``nnx.State`` without ``Variable`` boxes), the
    tree the sparse optimizer sees in ``opt.update``."""
    return nnx.as_pure(nnx.state(model, wrt))


def _leaf_names(tree: PyTree) -> set[str]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=mk.is_dense)[0]
    return {path_str(path) for path, _ in flat}


def _check_same_leaves(params: PyTree, masks: PyTree, wrt: Filter) -> None:
    differ = sorted(_leaf_names(params) ^ _leaf_names(masks))
    if differ:
        raise ValueError(
            f"wrt={wrt!r}: the model's variables and the optimizer's masks differ at {differ[:3]}; "
            "allowed: the filter the nnx.Optimizer was built with (opt.wrt)"
        )


def forward_params(
    model: nnx.Module, opt: nnx.Optimizer | Any, *, wrt: Filter | None = None
) -> PyTree:
    """``sj.forward_params`` of the model's ``wrt`` variables: the weights its forward pass must use,
    as plain arrays (straight-through gradient, as in the core)."""
    wrt = _wrt(opt, wrt)
    params, sparse = params_of(model, wrt), sparse_state(opt)
    _check_same_leaves(params, sparse.masks, wrt)
    return st.forward_params(params, sparse)


@contextlib.contextmanager
def forward_weights(
    model: nnx.Module, opt: nnx.Optimizer | Any, *, wrt: Filter | None = None
) -> Iterator[nnx.Module]:
    """Inside the block, ``model``'s ``wrt`` variables hold the forward weights of the sparse state
    (:func:`forward_params`); on exit they hold the dense weights again, whatever happened inside.

    Traced under ``nnx.jit`` / ``nnx.value_and_grad`` the swap is functional: the gradient reaches the
    dense weights straight-through, and other state the forward changes (batch statistics, RNG counts)
    is kept. Updates to the ``wrt`` variables made inside the block are undone on exit.
    """
    dense = params_of(model, _wrt(opt, wrt))
    nnx.update(model, forward_params(model, opt, wrt=wrt))
    try:
        yield model
    finally:
        nnx.update(model, dense)


def value_and_grad(
    loss_fn: Callable[..., Any], has_aux: bool = False
) -> Callable[..., tuple[Any, tuple[PyTree, PyTree]]]:
    """``nnx.value_and_grad`` of a plain NNX loss ``loss_fn(model, *args)`` run on the forward weights.

    Returns a function of ``(model, opt, *args)`` (``opt``: the ``nnx.Optimizer``) giving
    ``(value, (grads, algo_grads))``: ``grads`` an ``nnx.State`` of the ``opt.wrt`` variables (dense
    straight-through gradients), ``algo_grads`` those of the float leaves of the algorithm state (MaskLLM's
    logits; unused elsewhere). Pass both on: ``opt.update(model, grads, algo_grads=algo_grads)``.
    """

    def wrapped(model: nnx.Module, opt: nnx.Optimizer, *args: Any):
        if not isinstance(opt, nnx.Optimizer):
            raise ValueError(f"opt={type(opt).__name__}: allowed an nnx.Optimizer over sj.sparsify")
        floats, with_floats = st.split_algo_state(sparse_state(opt))

        def loss(model, fl, *args):
            with forward_weights(model, with_floats(fl), wrt=opt.wrt):
                return loss_fn(model, *args)

        argnums = (nnx.DiffState(0, opt.wrt), 1)
        grad_fn = nnx.value_and_grad(loss, argnums=argnums, has_aux=has_aux)
        return grad_fn(model, floats, *args)

    return wrapped


def mask_model(model: nnx.Module, opt: nnx.Optimizer | Any, *, wrt: Filter | None = None) -> None:
    """Sets the model's ``wrt`` variables to ``w * m`` (exact zeros outside the masks): the start of
    masked-dense training (``algo.hard``), so the very first forward is sparse. Not for STE-like methods,
    whose dense weights keep learning."""
    wrt = _wrt(opt, wrt)
    params, masks = params_of(model, wrt), masks_of(opt)
    _check_same_leaves(params, masks, wrt)
    nnx.update(model, mk.apply_masks(params, masks))


def sparse_optimizer(
    model: nnx.Module,
    inner: optax.GradientTransformation,
    algo: SparseAlgorithm,
    *,
    wrt: Filter,
    **sparsify_kwargs: Any,
) -> nnx.Optimizer:
    """``nnx.Optimizer(model, sj.sparsify(inner, algo, **sparsify_kwargs), wrt=wrt)``, with the model's
    initial weights masked (:func:`mask_model`) for masked-dense methods (``algo.hard``)."""
    if not isinstance(algo, SparseAlgorithm):
        raise ValueError(
            f"algo={type(algo).__name__}: allowed a sj.SparseAlgorithm (sj.rigl(...), sj.ste(...), ...)"
        )
    opt = nnx.Optimizer(model, sparsify(inner, algo, **sparsify_kwargs), wrt=wrt)
    if algo.hard:
        mask_model(model, opt)
    return opt


def forward_flops(
    model: nnx.Module, opt: nnx.Optimizer | Any, *inputs: Any, wrt: Filter | None = None
) -> dict[str, float]:
    """``sj.metrics.forward_flops`` of ``model(*inputs)`` with the optimizer's masks: dense and sparse
    forward FLOPs and their ratio."""
    wrt = _wrt(opt, wrt)
    graphdef, params, rest = nnx.split(model, wrt, ...)
    apply = lambda p, *xs: nnx.merge(graphdef, p, rest)(*xs)  # noqa: E731
    return metrics.forward_flops(apply, nnx.as_pure(params), *inputs, masks=masks_of(opt))
