"""N:M masks: exact N per group along the input axis, any N < M, configurable axis, indivisible leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsejax as sj


def groups_along(x: np.ndarray, axis: int, m: int) -> np.ndarray:
    """``x`` with ``axis`` moved last and split into groups of ``m``: ``(-1, m)``."""
    return np.moveaxis(np.asarray(x), axis, -1).reshape(-1, m)


@st.composite
def nm_cases(draw):
    m = draw(st.sampled_from([2, 3, 4, 8, 16]))
    n = draw(st.integers(1, m - 1))
    ndim = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 3)) for _ in range(ndim)]
    axis = draw(st.integers(-ndim, ndim - 1))
    shape[axis] = m * draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    return n, m, tuple(shape), axis, seed


_nm_mask = jax.jit(sj.nm_mask, static_argnums=(1, 2, 3))


@settings(max_examples=15, deadline=None)
@given(nm_cases())
def test_nm_mask_keeps_exactly_n_largest_per_group(case):
    n, m, shape, axis, seed = case
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    mask = _nm_mask(w, n, m, axis)
    assert mask.shape == w.shape and mask.dtype == jnp.bool_
    g_mask, g_abs = groups_along(mask, axis, m), groups_along(np.abs(w), axis, m)
    np.testing.assert_array_equal(g_mask.sum(-1), n)
    kept_min = np.where(g_mask, g_abs, np.inf).min(-1)
    dropped_max = np.where(g_mask, -np.inf, g_abs).max(-1)
    assert np.all(kept_min >= dropped_max)


@pytest.mark.parametrize("n", [1, 2])
def test_nm_mask_ties_still_exact(n):
    mask = sj.nm_mask(jnp.zeros((8, 3)), n, 4, axis=0)
    np.testing.assert_array_equal(groups_along(mask, 0, 4).sum(-1), n)


@pytest.mark.parametrize("n, m", [(1, 4), (1, 8), (2, 4), (3, 8)])
def test_nm_mask_breaks_ties_towards_lower_index(n, m):
    # Few distinct magnitudes, so most groups tie; top-1 (argmax) and top-n (ranks) agree on the rule.
    w = np.random.default_rng(n * m).integers(-2, 3, size=(4 * m, 5)).astype(np.float32)
    g = groups_along(np.abs(w), 0, m)
    keep = np.argsort(-g, axis=-1, kind="stable")[:, :n]
    expected = np.zeros(g.shape, bool)
    np.put_along_axis(expected, keep, True, axis=-1)
    np.testing.assert_array_equal(groups_along(sj.nm_mask(jnp.asarray(w), n, m, 0), 0, m), expected)


def test_default_axis_is_input_axis_for_dense_and_conv():
    key = jax.random.PRNGKey(0)
    params = {
        "Dense_0": {"kernel": jax.random.normal(key, (8, 3)), "bias": jnp.ones(3)},
        "Conv_0": {"kernel": jax.random.normal(key, (3, 3, 8, 5))},
    }
    masks = sj.masks_of(sj.sparsify(optax.sgd(0.1), sj.ste(n=2, m=4)).init(params))
    assert sj.is_dense(masks["Dense_0"]["bias"])
    np.testing.assert_array_equal(
        masks["Dense_0"]["kernel"], sj.nm_mask(params["Dense_0"]["kernel"], 2, 4, 0)
    )
    conv = params["Conv_0"]["kernel"]
    np.testing.assert_array_equal(masks["Conv_0"]["kernel"], sj.nm_mask(conv, 2, 4, 2))
    np.testing.assert_array_equal(groups_along(masks["Conv_0"]["kernel"], 2, 4).sum(-1), 2)


def test_configurable_axis():
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 8))
    state = sj.sparsify(optax.sgd(0.1), sj.ste(n=1, m=4, nm_axis=-1)).init({"k": w})
    np.testing.assert_array_equal(groups_along(sj.masks_of(state)["k"], -1, 4).sum(-1), 1)


@pytest.mark.parametrize(
    "make, active",
    [
        (lambda **kw: sj.ste(n=2, m=4, **kw), 16),
        (lambda **kw: sj.sr_ste(2, 4, **kw), 16),
        (lambda **kw: sj.pgf(2, 4, end_step=10, **kw), 16),
        (
            lambda **kw: sj.pgf(2, 4, pgf_mode="sdgf", end_step=10, **kw),
            24,
        ),  # first decay frame is 3:4
    ],
    ids=["ste", "sr_ste", "pgf_mdgf", "pgf_sdgf"],
)
def test_indivisible_leaf_errors_or_stays_dense(make, active):
    params = {"ok": {"kernel": jnp.ones((8, 4))}, "odd": {"kernel": jnp.ones((6, 4))}}
    with pytest.raises(ValueError, match=r"odd/kernel.*\(6, 4\)"):
        make().init(params)
    for algo in (make(skip_indivisible=True), make(overrides={"odd": 0.0})):
        masks = sj.masks_of(algo.init(params))
        assert sj.is_dense(masks["odd"]["kernel"])
        assert masks["ok"]["kernel"].sum() == active


@pytest.mark.parametrize("n, m", [(4, 4), (5, 4), (0, 4)])
def test_invalid_n_m_rejected(n, m):
    for make in (lambda: sj.ste(n=n, m=m), lambda: sj.sr_ste(n, m), lambda: sj.pgf(n, m)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError):
        sj.sr_ste_decay(n, m)


def test_from_config_builds_nm_algorithms():
    cfg = {"algorithm": "sr_ste", "n": 2, "m": 4, "sr_decay": 1e-3, "end_step": 10}
    assert sj.from_config(cfg).name == "sr_ste"
    cfg = {"algorithm": "pgf", "n": 1, "m": 8, "pgf_mode": "sdgf", "end_step": 10}
    assert sj.from_config(cfg).name == "pgf"
    with pytest.raises(ValueError, match="n=4, m=4"):
        sj.from_config({"algorithm": "ste", "n": 4, "m": 4, "end_step": 10})
