"""The trainer's sparse train step, for tests that compile or run one outside ``experiments.train``."""

from __future__ import annotations

import jax
import optax

import sparsejax as sj


def train_step(model, tx, assume_masked: bool):
    """The trainer's step: loss through ``forward_params``, ``sj.value_and_grad``, ``algo_grads``."""

    def step(params, state, x, y):
        def loss(p, s):
            fwd = sj.forward_params(p, s, assume_masked=assume_masked)
            logits = model.apply({"params": fwd}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, (grads, algo_grads) = sj.value_and_grad(loss)(params, state)
        updates, state = tx.update(grads, state, params, algo_grads=algo_grads)
        return optax.apply_updates(params, updates), state, value

    return jax.jit(step)
