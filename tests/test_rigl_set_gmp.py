"""Hand-built cases for the update rules, schedules, and optimizer-state reset of grown weights."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import masks as mk


def hand_case():
    w = jnp.asarray(
        [[0.9, -0.1, 0.0, 0.5], [0.0, 0.3, -0.7, 0.0], [0.2, 0.0, 0.0, -0.05], [0.0, 0.6, 0.0, 0.0]]
    )
    mask = w != 0
    g = jnp.asarray(
        [[0.1, 0.1, 0.9, 0.1], [0.2, 0.1, 0.1, -0.8], [0.1, 0.3, 0.05, 0.1], [0.4, 0.1, -0.6, 0.0]]
    )
    return {"w": w}, {"w": mask}, {"w": g}


def test_rigl_drops_smallest_and_grows_largest_gradients():
    params, masks, grads = hand_case()
    algo = sj.rigl(0.5, update_every=1, end_step=10, drop_fraction=0.25, drop_schedule="constant")
    upd = algo.update_masks(masks, params, grads, jnp.int32(0), jax.random.PRNGKey(0))
    old, new, grown = np.asarray(masks["w"]), np.asarray(upd.masks["w"]), np.asarray(upd.grown["w"])
    active = old.sum()  # 8
    k = math.floor(0.25 * active)  # 2
    absw = np.abs(np.asarray(params["w"]))
    dropped_expected = set(np.argsort(np.where(old, absw, np.inf).ravel())[:k])  # -0.05 and -0.1
    kept = old & ~grown & new
    assert set(np.flatnonzero(old & ~kept)) == dropped_expected
    absg = np.abs(np.asarray(grads["w"])).ravel()
    candidates = np.flatnonzero(~kept.ravel())
    grown_expected = set(candidates[np.argsort(-absg[candidates])[:k]])  # |g| 0.9 and 0.8
    assert set(np.flatnonzero(grown)) == grown_expected
    assert new.sum() == active


def test_set_grows_only_among_inactive_positions():
    params, masks, grads = hand_case()
    algo = sj.set_sparse(0.5, update_every=1, drop_fraction=0.5)
    for seed in range(10):
        upd = algo.update_masks(masks, params, grads, jnp.int32(0), jax.random.PRNGKey(seed))
        old, grown = np.asarray(masks["w"]), np.asarray(upd.grown["w"])
        absw = np.abs(np.asarray(params["w"]))
        survivors = set(
            np.argsort(np.where(old, -absw, np.inf).ravel())[:4]
        )  # 4 largest actives kept
        assert not set(np.flatnonzero(grown)) & survivors
        assert grown.sum() == 4 and np.asarray(upd.masks["w"]).sum() == 8


def test_cosine_drop_fraction_matches_formula():
    f = sj.schedules.drop_fraction("cosine", 0.3, 100, 1100)
    for t in [100, 350, 600, 1000, 1099]:
        assert float(f(t)) == pytest.approx(
            0.15 * (1 + math.cos(math.pi * (t - 100) / 1000)), abs=1e-6
        )
    assert float(sj.schedules.drop_fraction("constant", 0.3, 0, 10)(7)) == pytest.approx(0.3)


def test_gmp_cubic_schedule_reaches_final_on_last_update():
    sched = sj.schedules.cubic_sparsity(0.0, 0.9, 10, 110, 10)  # updates at 10, 20, ..., 100
    assert float(sched(10)) == pytest.approx(0.0)
    assert float(sched(100)) == pytest.approx(0.9)
    t = 40
    assert float(sched(t)) == pytest.approx(0.9 + (0.0 - 0.9) * (1 - (t - 10) / 90) ** 3, rel=1e-5)
    # "The Journey Matters": prune between 25% and 75% of a 1000-step run.
    algo = sj.gmp(0.9, start_step=250, end_step=750, update_every=50)
    assert [t for t in range(1000) if algo.is_update_step(t)] == list(range(250, 750, 50))


OPTIMIZERS = {
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
    "lion": lambda: optax.lion(1e-3),
    "chain": lambda: optax.chain(
        optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.scale(-1e-2)
    ),
}


def _steps(opt: str, algo: sj.SparseAlgorithm, seed: int, n: int):
    """Yields (masks before the step, state, params) after each of ``n`` jitted steps on random grads."""
    key = jax.random.PRNGKey(seed)
    params = {"a": {"kernel": jax.random.normal(key, (16, 12)), "bias": jnp.ones(12)}}
    tx = sj.sparsify(OPTIMIZERS[opt](), algo, track_metrics=True)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(n):
        grads = jax.tree.map(
            lambda p, t=t: jax.random.normal(jax.random.fold_in(key, t), p.shape), params
        )
        before = sj.masks_of(state)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        yield before, state, params


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_grown_weights_zero_and_optimizer_state_reset(opt):
    algo = sj.rigl(
        0.75, update_every=1, start_step=2, end_step=4, drop_fraction=0.5, drop_schedule="constant"
    )
    *_, (prev_masks, state, params) = _steps(opt, algo, 0, 3)
    newly = np.asarray(sj.masks_of(state)["a"]["kernel"] & ~prev_masks["a"]["kernel"])
    assert newly.sum() > 0 and int(state.stats["grown"]) >= newly.sum()
    assert float(jnp.abs(params["a"]["kernel"][newly]).max()) == 0.0  # grown weights start at zero
    # Every params-shaped per-parameter accumulator is zero at the grown positions.
    accumulators = [x for x in jax.tree.leaves(state.inner) if jnp.shape(x) == (16, 12)]
    assert accumulators, "optimizer keeps per-parameter state"
    for acc in accumulators:
        assert float(jnp.abs(acc[newly]).max()) == 0.0
    # ...and not zeroed elsewhere (the reset is targeted).
    assert any(
        float(jnp.abs(acc[np.asarray(prev_masks["a"]["kernel"]) & ~newly]).max()) > 0
        for acc in accumulators
    )
    masked = ~np.asarray(sj.masks_of(state)["a"]["kernel"])
    assert float(jnp.abs(params["a"]["kernel"][masked]).max()) == 0.0


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam", "chain"])
def test_optimizer_state_zero_outside_masks_after_every_step(opt):
    # Masked-dense methods keep per-parameter state on active weights only: regrown weights then start
    # from zero state, and dropped ones carry nothing stale into a later regrowth.
    algo = sj.set_sparse(0.7, update_every=2, end_step=8, drop_fraction=0.5)
    for _, state, _ in _steps(opt, algo, 3, 7):
        off = ~np.asarray(sj.masks_of(state)["a"]["kernel"])
        accumulators = [x for x in jax.tree.leaves(state.inner) if jnp.shape(x) == (16, 12)]
        assert accumulators and all(float(jnp.abs(a[off]).max()) == 0.0 for a in accumulators)
        assert any(float(jnp.abs(a[~off]).max()) > 0.0 for a in accumulators)


def test_forward_params_masked_at_init_and_straight_through():
    params = {"k": jax.random.normal(jax.random.PRNGKey(1), (8, 8))}
    tx = sj.sparsify(optax.sgd(0.1), sj.static(0.5), track_metrics=True)
    state = tx.init(params)
    fwd = sj.forward_params(params, state)
    m = np.asarray(sj.masks_of(state)["k"])
    assert float(jnp.abs(fwd["k"][~m]).max()) == 0.0
    np.testing.assert_array_equal(fwd["k"][m], params["k"][m])
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8))
    g = jax.grad(lambda p: jnp.sum(jnp.tanh(x @ sj.forward_params(p, state)["k"])))(params)["k"]
    g_ref = jax.grad(lambda k: jnp.sum(jnp.tanh(x @ k)))(fwd["k"])
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)  # dense dL/d(w*m), masked positions included
    assert float(jnp.abs(g[~m]).max()) > 0


def test_sparsify_inside_chain_and_masks_of_finds_state():
    params = {"k": jnp.ones((8, 8))}
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        sj.sparsify(optax.sgd(0.1), sj.static(0.5), track_metrics=True),
    )
    state = tx.init(params)
    assert int(mk.count_active(sj.masks_of(state))) == 32


def test_schedules_may_be_callables():
    """A drop fraction or a sparsity schedule given as any optax schedule of the global step."""
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (20, 10))}
    grads = {"w": jax.random.normal(jax.random.PRNGKey(1), (20, 10))}
    # RigL with its drop fraction a schedule: 0.5 at step 0, 0.25 at step 10
    frac = optax.linear_schedule(0.5, 0.25, 10)
    algo = sj.rigl(0.5, update_every=10, end_step=100, drop_fraction=frac)
    masks = algo.init_masks(params, jax.random.PRNGKey(2))
    for step, want in ((0, 50), (10, 25)):
        upd = algo.update_masks(masks, params, grads, jnp.int32(step), jax.random.PRNGKey(3))
        assert int(mk.count_active(upd.grown)) == want  # floor(f(t) * 100 actives)
    # global GMP following a linear sparsity ramp instead of the cubic one: exact counts on the way
    ramp = optax.linear_schedule(0.0, 0.8, 80)
    gmp = sj.global_magnitude(0.8, update_every=20, end_step=100, sparsity_schedule=ramp)
    masks = gmp.init_masks(params, jax.random.PRNGKey(2))
    for step in (20, 40, 80):
        masks = gmp.update_masks(masks, params, grads, jnp.int32(step), jax.random.PRNGKey(3)).masks
        assert int(mk.count_active(masks)) == round((1 - float(ramp(step))) * 200)
