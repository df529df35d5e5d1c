"""Mask pytrees: creation with exact counts, N:M and block structure, packing, snapshots, summaries."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import masks as mk


def params_tree():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "conv": {"kernel": jax.random.normal(k[0], (3, 3, 8, 16)), "bias": jnp.zeros(16)},
        "dense": {"kernel": jax.random.normal(k[1], (64, 32)), "bias": jnp.zeros(32)},
        "out": {"kernel": jax.random.normal(k[2], (32, 10))},
    }


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_create_masks_exact_counts_and_dense_markers(method):
    params = params_tree()
    sp = sj.leaf_sparsities(params, 0.8, "erk")
    masks = sj.create_masks(params, sp, jax.random.PRNGKey(1), method)
    assert isinstance(masks["conv"]["bias"], optax.MaskedNode)
    for name, leaf in [
        ("conv/kernel", masks["conv"]["kernel"]),
        ("dense/kernel", masks["dense"]["kernel"]),
    ]:
        assert leaf.dtype == jnp.bool_
        assert int(leaf.sum()) == round((1 - sp[name]) * leaf.size)
    # Several trees mapped together: the marker must not break jax.tree.map (None would).
    applied = sj.apply_masks(params, masks)
    assert jax.tree.structure(applied) == jax.tree.structure(params)
    assert float(jnp.abs(applied["dense"]["kernel"][~masks["dense"]["kernel"]]).max()) == 0.0


def test_magnitude_mask_keeps_largest():
    w = jnp.arange(-10.0, 10.0).reshape(4, 5)
    m = np.asarray(sj.magnitude_mask(w, 6))
    assert m.sum() == 6
    assert np.abs(np.asarray(w))[m].min() >= np.abs(np.asarray(w))[~m].max()


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (1, 8), (4, 8)])
def test_nm_mask_groups_along_input_axis(n, m):
    w = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 16, 8))  # conv (h, w, c_in, c_out)
    mask = np.asarray(sj.nm_mask(w, n, m, axis=-2))
    groups = np.moveaxis(mask, 2, -1).reshape(3, 3, 8, 16 // m, m)
    assert (groups.sum(-1) == n).all()
    absw = np.moveaxis(np.abs(np.asarray(w)), 2, -1).reshape(groups.shape)
    kept_min = np.where(groups, absw, np.inf).min(-1)
    dropped_max = np.where(groups, -np.inf, absw).max(-1)
    assert (kept_min >= dropped_max).all()


def test_nm_mask_indivisible_axis_names_leaf():
    with pytest.raises(ValueError, match="leaf dense/kernel"):
        sj.nm_mask(jnp.ones((6, 4)), 2, 4, axis=0, name="dense/kernel")


def test_block_masks_select_whole_tiles():
    params = {"w": jax.random.normal(jax.random.PRNGKey(4), (32, 48))}
    masks = sj.create_masks(params, {"w": 0.75}, jax.random.PRNGKey(5), "magnitude", block=(8, 16))
    tiles = np.asarray(masks["w"]).reshape(4, 8, 3, 16)
    per_tile = tiles.sum(axis=(1, 3))
    assert set(np.unique(per_tile)) <= {0, 128}
    assert (per_tile > 0).sum() == 3  # round(0.25 * 12 tiles)
    with pytest.raises(ValueError, match="block_size"):
        sj.create_masks(params, {"w": 0.5}, jax.random.PRNGKey(5), block=(5, 16))


def test_pack_unpack_roundtrip_and_size():
    params = params_tree()
    masks = sj.create_masks(
        params, sj.leaf_sparsities(params, 0.9, "uniform"), jax.random.PRNGKey(6)
    )
    packed = sj.pack_masks(masks)
    assert packed["dense"]["kernel"].dtype == jnp.uint8
    assert packed["dense"]["kernel"].shape == (64, 4)  # leading axis kept, 8x smaller
    back = sj.unpack_masks(packed, params)
    for a, b in zip(mk.sparse_leaves(masks), mk.sparse_leaves(back)):
        np.testing.assert_array_equal(a, b)


def test_combine_and_compare():
    params = params_tree()
    sp = sj.leaf_sparsities(params, 0.5, "uniform")
    a = sj.create_masks(params, sp, jax.random.PRNGKey(7))
    b = sj.create_masks(params, sp, jax.random.PRNGKey(8))
    u, i, d = mk.union(a, b), mk.intersection(a, b), mk.difference(a, b)
    assert int(mk.count_active(u)) + int(mk.count_active(i)) == int(mk.count_active(a)) + int(
        mk.count_active(b)
    )
    assert int(mk.hamming(a, b)) == 2 * int(mk.count_active(d))
    assert int(sj.metrics.sad(a, a)) == 0


def test_snapshot_roundtrip(tmp_path):
    params = params_tree()
    masks = sj.create_masks(params, sj.leaf_sparsities(params, 0.7, "erk"), jax.random.PRNGKey(9))
    path = tmp_path / "step_00000010.npz"
    sj.save_masks(path, masks, step=10)
    loaded = sj.load_masks(path)
    assert loaded["step"] == 10
    np.testing.assert_array_equal(loaded["masks"]["dense/kernel"], masks["dense"]["kernel"])
    assert not list(tmp_path.glob("*.tmp*"))


def test_summarize_params_and_masks():
    params = params_tree()
    sp = sj.leaf_sparsities(params, 0.9, "uniform")
    masks = sj.create_masks(params, sp, jax.random.PRNGKey(10))
    s_masks = sj.summarize(masks)
    assert set(s_masks["leaves"]) == set(sp)
    assert abs(s_masks["total"]["sparsity"] - 0.9) < 0.01
    s_params = sj.summarize(sj.apply_masks(params, masks))
    assert s_params["leaves"]["conv/bias"]["nonzeros"] == 0  # zeros-initialised bias
    assert (
        s_params["leaves"]["dense/kernel"]["nonzeros"]
        == s_masks["leaves"]["dense/kernel"]["nonzeros"]
    )
