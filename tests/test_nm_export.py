"""Compressed N:M export: round trip, the 2:4 / 3-bit index layouts, matmul on the compressed form, bytes."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsejax as sj
from sparsejax import nm_export as ne


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _round_trip(w: jax.Array, n: int, m: int, axis: int):
    c = ne.compress(w, n, m, axis)
    return c, ne.decompress(c), jnp.where(sj.nm_mask(w, n, m, axis), w, 0.0), ne.group_indices(c)


@st.composite
def nm_cases(draw):
    m = draw(st.sampled_from([2, 3, 4, 8, 16]))
    n = draw(st.integers(1, m - 1))
    ndim = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 3)) for _ in range(ndim)]
    axis = draw(st.integers(0, ndim - 1))
    shape[axis] = m * draw(st.integers(1, 5))
    return n, m, tuple(shape), axis, draw(st.integers(0, 2**16))


@settings(max_examples=12, deadline=None)
@given(nm_cases())
def test_round_trip_is_exact_masked_weights(case):
    n, m, shape, axis, seed = case
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    c, back, expected, idx = _round_trip(w, n, m, axis)
    length = shape[axis]
    rest = shape[:axis] + shape[axis + 1 :]
    assert c.values.shape == (*rest, length * n // m)
    assert c.indices.dtype == jnp.uint8
    assert c.indices.shape == (*rest, math.ceil(length * n // m * ne.index_bits(m) / 8))
    np.testing.assert_array_equal(back, expected)
    idx = np.asarray(idx)
    assert np.all(np.diff(idx, axis=-1) > 0) and idx.max() < m  # ascending, distinct, in range


def test_2_4_layout_half_values_and_2bit_indices_in_uint8():
    # One output column, 8 inputs: groups [0, 5, 0, 7] -> keep positions 1, 3; [9, 0, 0, 1] -> 0, 3.
    w = jnp.array([[0.0, 5, 0, 7, 9, 0, 0, 1]]).T
    c = ne.compress(w, 2, 4, axis=0)
    np.testing.assert_array_equal(
        c.values, [[5.0, 7, 9, 1]]
    )  # (out, in / 2): W^T rows, kept values
    # 2-bit fields little-endian in one byte: 1 | 3 << 2 | 0 << 4 | 3 << 6 = 205.
    np.testing.assert_array_equal(c.indices, np.array([[205]], np.uint8))
    np.testing.assert_array_equal(ne.decompress(c), w)


def test_1_8_uses_3bit_indices_packed_across_bytes():
    w = np.zeros((24, 1), np.float32)
    w[[5, 8 + 2, 16 + 7], 0] = [1.0, -2.0, 3.0]  # in-group positions 5, 2, 7
    c = ne.compress(jnp.asarray(w), 1, 8, axis=0)
    assert ne.index_bits(8) == 3
    packed = 5 | 2 << 3 | 7 << 6  # 469 = bytes 213, 1
    np.testing.assert_array_equal(c.indices, np.array([[packed & 255, packed >> 8]], np.uint8))
    np.testing.assert_array_equal(c.values, [[1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(ne.decompress(c), w)


def test_explicit_masks_pad_short_groups_and_reject_overfull():
    w = jnp.arange(1.0, 9.0)[:, None]
    short = jnp.array([True, False, False, False, False, True, True, False])[:, None]
    np.testing.assert_array_equal(
        ne.decompress(ne.compress(w, 2, 4, 0, short)), jnp.where(short, w, 0)
    )
    with pytest.raises(ValueError, match="not 2:4"):
        ne.compress(w, 2, 4, 0, jnp.ones((8, 1), bool))
    with pytest.raises(ValueError, match="need 0 < n"):
        ne.compress(w, 2, 3, 0, jnp.ones((8, 1), bool))


@pytest.mark.parametrize("n, m, batch", [(2, 4, (7,)), (1, 8, (2, 3)), (3, 8, (130,))])
def test_nm_matmul_equals_dense_masked_matmul(n, m, batch):
    k = jax.random.split(jax.random.PRNGKey(n * m), 2)
    w = jax.random.normal(k[0], (32, 6))
    x = jax.random.normal(k[1], (*batch, 32))
    c = ne.compress(w, n, m, axis=0)
    y = jax.jit(ne.nm_matmul)(x, c)
    assert y.shape == (*batch, 6)
    np.testing.assert_allclose(
        y, x @ jnp.where(sj.nm_mask(w, n, m, 0), w, 0.0), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError):
        ne.nm_matmul(x, ne.compress(jax.random.normal(k[0], (2, 32, 6)), n, m, axis=1))


def test_params_export_from_training_state_and_bytes():
    key = jax.random.PRNGKey(0)
    params = {
        "Dense_0": {"kernel": jax.random.normal(key, (16, 8)), "bias": jnp.ones(8)},
        "Conv_0": {"kernel": jax.random.normal(key, (3, 3, 8, 4)).astype(jnp.bfloat16)},
        "odd": {"kernel": jax.random.normal(key, (6, 4))},
    }
    tx = sj.sparsify(optax.sgd(0.1), sj.sr_ste(2, 4, skip_indivisible=True))
    state = jax.jit(tx.init)(params)
    export = jax.jit(ne.compress_params, static_argnums=(1, 2))
    tree = export(params, 2, 4, sj.masks_of(state))
    assert ne.is_compressed(tree["Dense_0"]["kernel"]) and ne.is_compressed(
        tree["Conv_0"]["kernel"]
    )
    np.testing.assert_array_equal(tree["odd"]["kernel"], params["odd"]["kernel"])  # stays dense
    assert tree["Conv_0"]["kernel"].values.dtype == jnp.bfloat16
    back = jax.jit(ne.decompress_params)(tree)  # a pytree: jit, device_put, checkpoints
    jax.tree.map(np.testing.assert_array_equal, back, sj.forward_params(params, state))
    # Without masks: magnitude projection of every divisible 2-D+ leaf gives the same here.
    auto = export(params, 2, 4)
    jax.tree.map(np.testing.assert_array_equal, jax.jit(ne.decompress_params)(auto), back)

    report = ne.nbytes_report(tree)
    dense_kernel = report["leaves"]["Dense_0/kernel"]
    assert dense_kernel == {
        "dense": 16 * 8 * 4,
        "compressed": 8 * 8 * 4 + 8 * 2,
    }  # 8 x 8 idx x 2 bit
    conv = report["leaves"]["Conv_0/kernel"]
    assert conv == {"dense": 288 * 2, "compressed": 144 * 2 + 36 * 1}  # bf16; 2 groups per byte
    assert report["leaves"]["odd/kernel"] == {"dense": 96, "compressed": 96}
    total = report["total"]
    assert total["dense"] == 512 + 32 + 576 + 96
    assert total["saved"] == total["dense"] - total["compressed"] == 240 + 252
    assert total["saved_fraction"] == pytest.approx(492 / 1216)
