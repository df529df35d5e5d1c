"""MaskLLM: learned N:M masks, a Gumbel-softmax over the candidate masks of every group.

Fang et al. (NeurIPS 2024), "MaskLLM: Learnable Semi-Structured Sparsity for Large Language Models".
Each group of ``m`` consecutive weights along ``nm_axis`` has one logit per candidate, the C(m, n)
binary masks with ``n`` ones (6 for 2:4). At step ``t`` (``p = min(t / end_step, 1)``):

- prior: ``logits = prior_scale * (candidates @ |w| / mean|w|)`` (kept magnitude, ``|w|`` over the
  leaf's mean): the initial argmax is the magnitude N:M mask;
- forward for ``t < end_step``: ``w * (y @ candidates)``, ``y = softmax((kappa * logits + g) / tau)``,
  ``g ~ Gumbel`` fresh each step (init key folded with ``t`` and the leaf index); ``tau`` and ``kappa``
  linear in ``p`` (as the official code); plain autodiff (``dL/dw = dL/d(w s) * s``). From
  ``end_step`` on: ``w * mask``, exactly N:M, and the logits are frozen (weights fine-tune);
- logits: ``optax.adam(logit_lr)`` on ``algo_grads`` plus the gradient of the sparse weight
  regulariser ``-weight_reg * (1 - p) * sum ||w * soft_mask||^2`` (``w`` constant, the step's soft
  mask re-drawn from the same noise), linearly removed as in the official code;
- ``state.masks``: the argmax candidate of the updated logits per group (always valid N:M).

Where this differs from the paper (the weights keep learning; a magnitude prior instead of a one-shot
SparseGPT mask; plain Adam on the logits): docs/algorithms.md, MaskLLM.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import masks as mk
from sparsejax import schedules
from sparsejax.algorithms.ste import nm_masks
from sparsejax.core import SparseAlgorithm
from sparsejax.layout import Layout

PyTree = Any
MAX_CANDIDATES = 1024  # logits take C(m, n) / m floats per weight


class MaskLLMState(NamedTuple):
    logits: PyTree  # float32 (*other axes, groups, C(m, n)) per sparsified leaf, DENSE elsewhere
    opt_state: optax.OptState  # the logits' Adam state
    key: jax.Array  # Gumbel noise key (raw uint32: not differentiated), folded with the step


def candidates(n: int, m: int) -> np.ndarray:
    """The C(m, n) binary masks of ``m`` entries with exactly ``n`` ones, ``(C(m, n), m)`` float32."""
    out = np.zeros((math.comb(m, n), m), np.float32)
    for i, keep in enumerate(itertools.combinations(range(m), n)):
        out[i, list(keep)] = 1.0
    return out


def anneal(step, start: float, end: float, end_step: int) -> jax.Array:
    """Linear from ``start`` at step 0 to ``end`` at ``end_step``, constant after."""
    return start + (end - start) * jnp.clip(jnp.asarray(step, jnp.float32) / end_step, 0.0, 1.0)


def maskllm(
    n: int = 2,
    m: int = 4,
    *,
    nm_axis: int = -2,
    skip_indivisible: bool = False,
    end_step: int | None = None,
    num_steps: int | None = None,
    tau_start: float = 4.0,
    tau_end: float = 0.05,
    kappa_start: float = 100.0,
    kappa_end: float = 500.0,
    prior_scale: float = 0.03,
    logit_lr: float = 5e-4,
    weight_reg: float = 1e-5,
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """MaskLLM at ``n:m`` (groups along ``nm_axis``), annealed until ``end_step`` (None: all of
    ``num_steps``); train with ``sj.value_and_grad`` and ``tx.update(..., algo_grads=algo_grads)``."""
    if not 0 < n < m:
        raise ValueError(f"n={n}, m={m}: allowed 0 < n < m")
    if math.comb(m, n) > MAX_CANDIDATES:
        raise ValueError(f"n={n}, m={m}: allowed C(m, n) <= {MAX_CANDIDATES} candidate masks")
    floors = {"tau_start": tau_start, "tau_end": tau_end, "kappa_start": kappa_start}
    floors |= {"kappa_end": kappa_end, "logit_lr": logit_lr}  # > 0; the other two >= 0
    for key, value in {**floors, "prior_scale": prior_scale, "weight_reg": weight_reg}.items():
        if not (value > 0 if key in floors else value >= 0):
            raise ValueError(f"{key}={value}: allowed values {'>' if key in floors else '>='} 0")
    end_step = schedules.relative_step(end_step, num_steps, 1.0, "end_step")
    if end_step < 1:
        raise ValueError(f"end_step={end_step}: allowed integers >= 1")
    lay = Layout(sparsity=1.0 - n / m, **{**layout, "distribution": "uniform"})
    cand = candidates(n, m)  # numpy: an algorithm built inside a jit trace holds no tracer
    tx = optax.adam(logit_lr)

    def groups(w):  # (..., L, ...) -> (*others, L / m, m)
        g = jnp.moveaxis(w, nm_axis, -1)
        return g.reshape(*g.shape[:-1], g.shape[-1] // m, m)

    def ungroup(g, shape):
        moved = list(shape)
        moved.append(moved.pop(nm_axis % len(shape)))
        return jnp.moveaxis(g.reshape(moved), -1, nm_axis)

    def prior(w):
        a = jnp.abs(w.astype(jnp.float32))
        return prior_scale * (groups(a / (jnp.mean(a) + 1e-12)) @ cand.T)

    def hard(logits):
        return jnp.asarray(cand)[jnp.argmax(logits, axis=-1)] > 0.5

    def soft_masks(logits, key, t):  # per sparsified leaf (*others, groups, m), DENSE elsewhere
        tau = anneal(t, tau_start, tau_end, end_step)
        kappa = anneal(t, kappa_start, kappa_end, end_step)
        leaves, treedef = jax.tree.flatten(logits, is_leaf=mk.is_dense)
        out = []
        for i, lg in enumerate(leaves):
            if not mk.is_dense(lg):
                noise = jax.random.gumbel(jax.random.fold_in(key, i), lg.shape, jnp.float32)
                lg = jax.nn.softmax((kappa * lg + noise) / tau, axis=-1) @ cand
            out.append(lg)
        return jax.tree.unflatten(treedef, out)

    def init_masks(params, key):
        names = set(lay.per_leaf(params))
        structure = nm_masks(params, names, n, m, nm_axis, skip_indivisible)
        return mk.map_sparse(lambda msk, w: ungroup(hard(prior(w)), w.shape), structure, params)

    def init_state(params, masks, key):
        logits = mk.map_sparse(lambda msk, w: prior(w), masks, params)
        return MaskLLMState(logits, tx.init(logits), key)

    def forward(params, state):
        st, t = state.algo_state, state.step
        soft = soft_masks(st.logits, jax.random.fold_in(st.key, t), t)
        done = t >= end_step

        def one(msk, w, s):
            return w * jnp.where(done, msk, ungroup(s, w.shape)).astype(w.dtype)

        return mk.map_params(one, state.masks, params, soft)

    def update_state(st, algo_grads, new_params, masks, step):
        if algo_grads is None:
            raise ValueError(
                "maskllm: algo_grads=None: allowed the logits' gradients, from "
                "sj.value_and_grad(loss_fn)(params, opt_state) passed as "
                "tx.update(grads, opt_state, params, algo_grads=algo_grads)"
            )
        t = step - 1  # the step whose forward sampled the soft masks
        lam = weight_reg * jnp.maximum(0.0, 1.0 - t / end_step)

        def reg(logits):  # -lam * sum ||w * soft_mask||^2 with w constant
            soft = soft_masks(logits, jax.random.fold_in(st.key, t), t)
            kept = lambda msk, w, s: jnp.sum(jnp.square(groups(w.astype(jnp.float32)) * s))  # noqa: E731
            return -lam * sum(jax.tree.leaves(mk.map_sparse(kept, masks, new_params, soft)))

        grads = jax.tree.map(jnp.add, algo_grads.logits, jax.grad(reg)(st.logits))
        updates, opt_state = tx.update(grads, st.opt_state, st.logits)
        new = MaskLLMState(optax.apply_updates(st.logits, updates), opt_state, st.key)
        live = step <= end_step  # after the annealing the logits (and so the masks) stay fixed
        return jax.tree.map(lambda a, b: jnp.where(live, a, b), new, st)

    return SparseAlgorithm(
        name="maskllm",
        init_masks=init_masks,
        refresh_masks=lambda new_params, masks, step, st: mk.map_sparse(
            lambda msk, lg: ungroup(hard(lg), msk.shape), masks, st.logits
        ),
        hard=False,
        forward=forward,
        init_state=init_state,
        update_state=update_state,
        seed=seed,
    )
