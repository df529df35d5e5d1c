"""Compressed block-sparse layers in Flax NNX: the linen modules through ``nnx.bridge.ToNNX``.

``sjnnx.sparse_optimizer`` over ``kp.compressed_algorithm`` trains a bridged model whose MLP block is a
fused ``CompressedBlockMLP``: RigL's grow scores arrive as the probes' gradients (``algo_grads``), the
blocks move on update steps, and every step equals the linen run's (same topology, same params to
float tolerance), on real mnist5k digits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _steps import train_step
from flax import nnx

import kernels_pallas as kp
import sparsejax as sj
import sparsejax.nnx as sjnnx
from experiments.models.block_mlp import LayerSpec
from experiments.models.block_vit import mlp_block

STEPS, UPDATE_EVERY, BATCH = 12, 3, 32


class _Net(nn.Module):
    """Digits as 16 tokens of 49 pixels -> 64 wide, one pre-LN block-sparse MLP block, a dense head."""

    compressed: bool

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(64, name="embed")(x.reshape(x.shape[0], 16, 49))
        spec = LayerSpec(16, 0.1, "xla", True, self.compressed)
        x = x + mlp_block(spec, 256, "block0_mlp")(nn.LayerNorm(name="ln")(x))
        return nn.Dense(10, name="head")(x.mean(axis=1))


def _xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_nnx_bridged_compressed_block_rigl_equals_linen(mnist5k):
    x_train, y_train, x_test, _ = mnist5k
    x0 = jnp.asarray(x_train[:BATCH])
    model = nnx.bridge.ToNNX(_Net(compressed=True), rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, x0)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    dense_like = jax.eval_shape(_Net(compressed=False).init, jax.random.PRNGKey(0), x0)["params"]
    kw = dict(sparsity=0.9, block_size=(16, 16), distribution="uniform", dense_last=True)
    kw.update(overrides={"embed": 0.0}, update_every=UPDATE_EVERY, end_step=100)
    algo, inner = kp.compressed_algorithm(sj.rigl, dense_like, **kw), optax.sgd(0.1, momentum=0.9)
    tx, opt = sj.sparsify(inner, algo), sjnnx.sparse_optimizer(model, inner, algo, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, opt, x, y):
        loss, (grads, algo_grads) = sjnnx.value_and_grad(lambda m: _xent(m(x), y))(model, opt)
        opt.update(model, grads, algo_grads=algo_grads)
        return loss

    linen_step, state = train_step(_Net(compressed=True), tx, False), tx.init(params)
    rng, moves = np.random.default_rng(0), 0
    for t in range(STEPS):
        idx = rng.integers(0, len(x_train), BATCH)
        x, y = jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
        before = jax.tree.leaves(kp.compressed_state(state).positions)
        loss = nnx_step(model, opt, x, y)
        params, state, linen_loss = linen_step(params, state, x, y)
        np.testing.assert_allclose(loss, linen_loss, rtol=1e-5)
        got = jax.tree.leaves(kp.compressed_state(sjnnx.sparse_state(opt)).positions)
        want = jax.tree.leaves(kp.compressed_state(state).positions)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"step {t}")
        moves += any(bool((a != b).any()) for a, b in zip(want, before))
        nnx_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        for a, b in zip(jax.tree.leaves(nnx_params), jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
    assert moves >= 2  # RigL moved blocks (the probes' gradients reached the optimizer)
    # Evaluation under the forward weights: the linen model's logits on the same topology.
    xt = jnp.asarray(x_test[:64])
    with sjnnx.forward_weights(model, opt):
        logits = model(xt)
    want = _Net(compressed=True).apply({"params": sj.forward_params(params, state)}, xt)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
