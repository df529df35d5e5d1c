"""BlockSparseDense: same outputs and gradients as a masked nn.Dense, and a stable compiled step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import BlockSparseDense, expand_block_mask, nnz_for_density

pytestmark = pytest.mark.xdist_group("kernels_layer")


def _masked_kernel(kernel, block_mask, bs):
    return kernel * expand_block_mask(block_mask, bs)


def _setup(seed=0, density=0.25, dense_weight_grad=False):
    layer = BlockSparseDense(
        48, block_size=(16, 16), density=density, dense_weight_grad=dense_weight_grad, impl="xla"
    )
    x = jax.random.normal(jax.random.key(seed), (2, 3, 64))
    params = layer.init(jax.random.key(1), x)["params"]
    rng = np.random.default_rng(seed)
    block_mask = np.zeros(12, bool)
    block_mask[rng.choice(12, nnz_for_density(density, 12), replace=False)] = True
    block_mask = jnp.asarray(block_mask.reshape(4, 3))
    params = {**params, "kernel": _masked_kernel(params["kernel"], block_mask, (16, 16))}
    return layer, params, x, block_mask


@pytest.mark.parametrize("dense_weight_grad", [False, True])
def test_matches_masked_dense(dense_weight_grad):
    layer, params, x, block_mask = _setup(dense_weight_grad=dense_weight_grad)
    dense = nn.Dense(48)

    def loss(p, x):
        return jnp.sum(jnp.sin(layer.apply({"params": p}, x)))

    def loss_ref(p, x):
        return jnp.sum(jnp.sin(dense.apply({"params": p}, x)))

    y = layer.apply({"params": params}, x)
    assert y.shape == (2, 3, 48)
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(dense.apply({"params": params}, x)), atol=1e-5
    )
    g = jax.grad(loss)(params, x)
    g_ref = jax.grad(loss_ref)(params, x)  # dense grad = dL/d(w * m) everywhere
    expected_k = g_ref["kernel"]
    if not dense_weight_grad:
        expected_k = _masked_kernel(expected_k, block_mask, (16, 16))
    np.testing.assert_allclose(np.asarray(g["kernel"]), np.asarray(expected_k), atol=1e-5)
    np.testing.assert_allclose(np.asarray(g["bias"]), np.asarray(g_ref["bias"]), atol=1e-5)


def test_explicit_block_mask_and_validation():
    layer, params, x, block_mask = _setup()
    raw = {**params, "kernel": params["kernel"] + 1.0}  # unmasked: the explicit mask must win
    y = layer.apply({"params": raw}, x, block_mask=block_mask)
    want = x @ _masked_kernel(raw["kernel"], block_mask, (16, 16)) + raw["bias"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), atol=1e-4)
    with pytest.raises(ValueError, match="divide"):
        BlockSparseDense(40, block_size=16).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="density"):
        nnz_for_density(0.0, 10)


def test_topology_change_reuses_the_compiled_step():
    layer, params, x, _ = _setup()

    @jax.jit
    def step(p, x):
        return jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2))(p)

    for seed in range(3):
        _, p, _, _ = _setup(seed=seed)
        step(p, x)
    assert step._cache_size() == 1
