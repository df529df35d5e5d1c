"""SNIP's and SPDF's rules on hand-built cases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparsejax as sj
from sparsejax.algorithms.snip import sensitivity


def test_snip_keeps_the_largest_connection_sensitivities_globally():
    # |w| and |g| alone rank differently from |g * w|; two leaves share one threshold.
    w = {"a": jnp.array([[4.0, 1.0], [1.0, 3.0]]), "b": jnp.array([[0.5, 2.0], [6.0, 1.0]])}
    g = {"a": jnp.array([[0.1, 5.0], [1.0, 1.0]]), "b": jnp.array([[8.0, 0.1], [0.5, 0.2]])}
    # |g * w|: a = [[0.4, 5], [1, 3]], b = [[4, 0.2], [3, 0.2]]: the top 4 of 8 are a01, b00, a11, b10
    # (by |w| alone b10, a00, a11, b01; by |g| alone b00, a01, ...)
    tx = sj.sparsify(optax.sgd(0.0), sj.snip(0.5), track_metrics=True)
    state = tx.init(w)
    assert all(bool(m.all()) for m in jax.tree.leaves(sj.masks_of(state)))  # dense until step 0
    updates, state = jax.jit(tx.update)(g, state, w)
    masks = sj.masks_of(state)
    np.testing.assert_array_equal(masks["a"], [[False, True], [False, True]])
    np.testing.assert_array_equal(masks["b"], [[True, False], [True, False]])
    new = optax.apply_updates(w, updates)  # pruned weights are zeroed in the same step
    for k in w:
        np.testing.assert_array_equal(np.asarray(new[k]) != 0, masks[k])
    for _ in range(3):  # then static: the masks never move
        updates, state = jax.jit(tx.update)(g, state, new)
        new = optax.apply_updates(new, updates)
        np.testing.assert_array_equal(sj.masks_of(state)["a"], masks["a"])
    assert float(sensitivity(w, g)["b"][1, 0]) == 3.0


def test_spdf_releases_every_mask_at_the_release_step():
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (16, 8))}
    algo = sj.spdf(0.75, sparse_phase="static", release_step=3, distribution="uniform")
    tx = sj.sparsify(optax.adam(0.1), algo)
    state = tx.init(params)
    params = sj.apply_masks(params, sj.masks_of(state))
    step = jax.jit(tx.update)
    grads = {"w": jnp.ones((16, 8))}
    pruned = ~np.asarray(sj.masks_of(state)["w"])
    for t in range(6):
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        mask = np.asarray(sj.masks_of(state)["w"])
        if t < 3:  # the sparse phase: 25% density, pruned weights exactly 0
            assert mask.sum() == 32 and (np.asarray(params["w"])[~mask] == 0).all()
        else:
            assert mask.all()
        if t == 3:  # released at step 3: the released weights start at 0, their Adam state reset
            assert (np.asarray(params["w"])[pruned] == 0).all()
            mu = sj.sparse_state(state).inner[0].mu["w"]
            assert (np.asarray(mu)[pruned] == 0).all()
    assert (np.asarray(params["w"])[pruned] != 0).all()  # and then they train (dense fine-tuning)
