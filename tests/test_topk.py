"""Exact top-k by bisection: counts, order, eligibility, ties, traced k, several arrays jointly."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparsejax.topk import count_true, ordered_key, topk_mask, topk_masks


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=60),
    st.integers(0, 70),
    st.integers(0, 2**31 - 1),
)
@example(values=[-0.0], k=1, seed=0)  # -0.0 once keyed differently inside and outside the search
@example(values=[0.0, 0.0, 0.0, -1.2471556332490872e-42], k=4, seed=0)  # and a subnormal
def test_topk_exact_count_and_order(values, k, seed):
    scores = jnp.asarray(values, jnp.float32)
    eligible = jnp.asarray(np.random.default_rng(seed).random(len(values)) < 0.7)
    mask = np.asarray(topk_mask(scores, k, eligible=eligible))
    n_eligible = int(eligible.sum())
    assert mask.sum() == min(k, n_eligible)
    assert not (mask & ~np.asarray(eligible)).any()
    s = np.asarray(scores)
    losers = np.asarray(eligible) & ~mask
    if mask.any() and losers.any():
        assert s[mask].min() >= s[losers].max()


def test_ordered_key_is_monotone():
    x = jnp.asarray([-jnp.inf, -3.0, -1e-30, -0.0, 0.0, 1e-30, 2.0, jnp.inf])
    keys = np.asarray(ordered_key(x)).astype(np.int64)
    assert (np.diff(keys) >= 0).all()


def test_ties_resolved_to_exact_k():
    scores = jnp.zeros((7, 5))
    for k in (0, 1, 13, 35):
        assert int(topk_mask(scores, k).sum()) == k
    assert int(topk_mask(scores, 9, key=jax.random.PRNGKey(0)).sum()) == 9
    # Without a key, ties go to the lowest flat indices.
    np.testing.assert_array_equal(np.asarray(topk_mask(scores, 6)).ravel(), np.arange(35) < 6)


def test_traced_k_under_jit_equals_eager():
    scores = jax.random.normal(jax.random.PRNGKey(1), (33, 17))
    f = jax.jit(lambda s, k: topk_mask(s, k))
    for k in (0, 5, 100, 561):
        np.testing.assert_array_equal(f(scores, k), topk_mask(scores, k))
    assert f._cache_size() == 1


def test_joint_topk_over_arrays_matches_concatenation():
    a = jax.random.normal(jax.random.PRNGKey(2), (20, 10))
    b = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 5))
    ma, mb = topk_masks([a, b], 77)
    flat = np.concatenate([np.asarray(a).ravel(), np.asarray(b).ravel()])
    expected = np.zeros(flat.size, bool)
    expected[np.argsort(-flat)[:77]] = True
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(ma).ravel(), np.asarray(mb).ravel()]), expected
    )


def test_grouped_topk_is_per_array():
    a = jax.random.normal(jax.random.PRNGKey(4), (10, 10))
    b = jax.random.normal(jax.random.PRNGKey(5), (6, 7))
    ma, mb = topk_masks([a, b], jnp.asarray([17, 4]), groups=[0, 1])
    np.testing.assert_array_equal(ma, topk_mask(a, 17))
    np.testing.assert_array_equal(mb, topk_mask(b, 4))


def test_random_ties_are_uniform_subsets():
    hits = np.zeros(20)
    for i in range(200):
        hits += np.asarray(topk_mask(jnp.zeros(20), 5, key=jax.random.PRNGKey(i)))
    assert hits.min() > 20 and hits.max() < 85  # each position ~50 times


def test_magnitude_ineligible_and_random_choice():
    """``magnitude`` ranks |x|; ``ineligible`` excludes; ``None`` scores pick uniformly at random."""
    x = jax.random.normal(jax.random.PRNGKey(6), (37, 29))
    banned = jax.random.uniform(jax.random.PRNGKey(7), x.shape) < 0.3
    got = np.asarray(topk_mask(x, 100, ~banned, magnitude=True))
    expected = np.asarray(topk_mask(jnp.abs(x), 100, ~banned))
    np.testing.assert_array_equal(got, expected)
    (pick,) = topk_masks([None], 50, key=jax.random.PRNGKey(8), ineligible=[banned])
    assert int(pick.sum()) == 50 and not np.asarray(pick & banned).any()
    (again,) = topk_masks([None], 50, key=jax.random.PRNGKey(9), ineligible=[banned])
    assert (np.asarray(pick) != np.asarray(again)).any()  # the key decides


def test_mask_update_stores_no_leaf_sized_temporaries():
    """RigL's drop-and-grow on a 1024x1024 leaf: compiled temporaries stay below a third of the f32
    leaf (the grow step's bool eligibility); stored keys or int32 counts would each be a whole leaf."""
    import sparsejax as sj

    shape = (1024, 1024)
    params = {"w": jax.ShapeDtypeStruct(shape, jnp.float32)}
    masks = {"w": jax.ShapeDtypeStruct(shape, jnp.bool_)}
    algo = sj.rigl(0.9, distribution="uniform", update_every=10, end_step=100)

    def update(m, p, g):
        return algo.update_masks(m, p, g, jnp.int32(10), jax.random.PRNGKey(0))

    stats = jax.jit(update).lower(masks, params, params).compile().memory_analysis()
    assert stats.temp_size_in_bytes < 4 * 1024 * 1024 / 3


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([(4096,), (64, 64), (96, 80), (3, 3, 64, 32), (512, 10), (4099, 2), (1, 8192)]),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_count_true_matches_numpy(shape, p, seed, rows):
    # Covers every chunking path: rows of <= 32 (minor axis kept), the minor axis, the flattened array.
    pred = np.random.default_rng(seed).random(shape) < p
    assert int(jax.jit(count_true, static_argnums=1)(jnp.asarray(pred), rows)) == int(pred.sum())
