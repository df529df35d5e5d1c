"""Invariants of every mask-updating algorithm, after every step of a real jitted training loop.

- each sparsified leaf holds exactly its scheduled number of actives;
- masked-out weights are exactly 0 after ``optax.apply_updates``;
- masks change only on update steps (``start <= t < end``, ``(t - start) % every == 0``);
- a mask update under ``jit`` equals the same update computed eagerly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import MLP, make_step

import sparsejax as sj
from sparsejax import masks as mk
from sparsejax.selection import path_str

EVERY, START, END, STEPS = 3, 1, 14, 16
MODEL = MLP(hidden=(48, 32))


def setup():
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 40))
    y = jax.random.randint(jax.random.PRNGKey(1), (64,), 0, 10)
    params = MODEL.init(jax.random.PRNGKey(2), x)["params"]
    return params, x, y


ALGOS = {
    "static": lambda: sj.static(0.9),
    "set": lambda: sj.set_sparse(0.9, update_every=EVERY, start_step=START, end_step=END),
    "rigl": lambda: sj.rigl(0.9, update_every=EVERY, start_step=START, end_step=END),
    "rigl_uniform_magnitude": lambda: sj.rigl(
        0.8,
        update_every=EVERY,
        start_step=START,
        end_step=END,
        distribution="uniform",
        init="magnitude",
    ),
    "gmp": lambda: sj.gmp(0.9, update_every=EVERY, start_step=START, end_step=END),
    "global_magnitude": lambda: sj.global_magnitude(
        0.9, update_every=EVERY, start_step=START, end_step=END
    ),
    "granet": lambda: sj.granet(
        0.9, initial_sparsity=0.5, update_every=EVERY, start_step=START, end_step=END
    ),
    "rigl_block": lambda: sj.rigl(
        0.75,
        update_every=EVERY,
        start_step=START,
        end_step=END,
        block_size=(8, 2),
        distribution="uniform",
        drop_schedule="constant",
    ),
}


def expected_counts(name, algo_fn, params, step):
    """Actives per leaf the algorithm must hold after ``step`` updates (``step`` = index of last step)."""
    final = sj.leaf_sparsities(params, 0.9, "uniform")
    sizes = {path_str(p): x.size for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    if name not in ("gmp", "granet", "global_magnitude"):
        return None
    s_i = 0.5 if name == "granet" else 0.0
    last = START + ((END - 1 - START) // EVERY) * EVERY
    updates = [t for t in range(START, min(step, END - 1) + 1) if (t - START) % EVERY == 0]
    if not updates:
        return (
            {n: round((1 - s_i) * sizes[n]) for n in final} if name != "global_magnitude" else None
        )
    t = updates[-1]
    # The cubic formula in float64 agrees with the library's float32 schedule...
    remaining = (1 - (t - START) / (last - START)) ** 3
    rem32 = sj.schedules.cubic_sparsity(1.0, 0.0, START, END, EVERY)(t)
    np.testing.assert_allclose(float(rem32), remaining, rtol=1e-6, atol=1e-7)

    # ...and the count is its exact float32 rounding (round-half-even, as jnp.round).
    def count(s, size):
        return int(jnp.round((1.0 - (s + (min(s_i, s) - s) * rem32)) * size))

    if name == "global_magnitude":
        total = sum(sizes[n] for n in final)
        return {
            "__total__": int(
                jnp.round(
                    (1.0 - sj.schedules.cubic_sparsity(s_i, 0.9, START, END, EVERY)(t)) * total
                )
            )
        }
    return {n: count(s, sizes[n]) for n, s in final.items()}


@pytest.mark.parametrize("name", list(ALGOS))
def test_invariants_every_step(name):
    params, x, y = setup()
    algo = ALGOS[name]()
    tx = sj.sparsify(optax.adam(3e-2), algo)
    state = tx.init(params)
    step = make_step(MODEL, tx)
    counts0 = {
        path_str(p): int(m.sum())
        for p, m in jax.tree_util.tree_flatten_with_path(sj.masks_of(state))[0]
    }
    prev = sj.masks_of(state)
    for t in range(STEPS):
        params, state, _ = step(params, state, x, y)
        masks = sj.masks_of(state)
        counts = {
            path_str(p): int(m.sum()) for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]
        }
        exp = expected_counts(name, ALGOS[name], params, t)
        if exp is None:
            assert counts == counts0, f"step {t}: actives changed"
        elif "__total__" in exp:
            assert sum(counts.values()) == exp["__total__"]
        else:
            assert counts == exp, f"step {t}"
        # Masked-out weights are exactly zero after apply_updates.
        for m, w in zip(
            mk.sparse_leaves(masks),
            [
                w
                for m_, w in zip(
                    jax.tree.leaves(masks, is_leaf=mk.is_dense), jax.tree.leaves(params)
                )
                if not mk.is_dense(m_)
            ],
        ):
            assert float(jnp.abs(jnp.where(m, 0.0, w)).max()) == 0.0
        if not algo.is_update_step(t):
            assert int(mk.hamming(prev, masks)) == 0, f"masks moved on non-update step {t}"
        prev = masks
        if name == "rigl_block":
            tiles = np.asarray(masks["Dense_0"]["kernel"]).reshape(5, 8, 24, 2).sum(axis=(1, 3))
            assert set(np.unique(tiles)) <= {0, 16}


@pytest.mark.parametrize("name", ["set", "rigl", "gmp", "granet", "global_magnitude"])
def test_jit_update_equals_eager(name):
    params, x, y = setup()
    algo = ALGOS[name]()
    masks = algo.init_masks(params, jax.random.PRNGKey(3))
    params = sj.apply_masks(params, masks)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(4), p.shape), params)
    key, step = jax.random.PRNGKey(5), jnp.int32(START + EVERY)
    eager = algo.update_masks(masks, params, grads, step, key)
    jitted = jax.jit(algo.update_masks)(masks, params, grads, step, key)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(a, b)


def test_masks_never_change_outside_window():
    params, x, y = setup()
    algo = sj.rigl(0.9, update_every=1, start_step=3, end_step=5, drop_schedule="constant")
    assert [bool(algo.is_update_step(t)) for t in range(7)] == [
        False,
        False,
        False,
        True,
        True,
        False,
        False,
    ]
    tx = sj.sparsify(optax.sgd(0.1), algo)
    state = tx.init(params)
    step = make_step(MODEL, tx)
    history = []
    for _ in range(7):
        params, state, _ = step(params, state, x, y)
        history.append(sj.masks_of(state))
    moved = [int(mk.hamming(a, b)) > 0 for a, b in zip(history, history[1:])]
    assert (
        moved[0] is False and moved[1] is False and moved[4] is False
    )  # steps 1, 2, 5 do not move
    assert moved[2] or moved[3]  # steps 3 and 4 may move


@pytest.mark.parametrize("name", ["static", "rigl", "gmp", "granet"])
def test_assume_masked_forward_is_exact_for_masked_methods(name):
    """Starting from masked params, ``forward_params(..., assume_masked=True)`` (no multiply) trains
    exactly like the default forward: same losses, params and masks after every step."""
    params, x, y = setup()
    algo = ALGOS[name]()
    assert algo.hard
    tx = sj.sparsify(optax.sgd(0.1, momentum=0.9), algo)

    def step_fn(assume_masked):
        @jax.jit
        def step(p, s):
            def loss_fn(q):
                fwd = sj.forward_params(q, s, assume_masked=assume_masked)
                logits = MODEL.apply({"params": fwd}, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, loss

        return step

    state = tx.init(params)
    p_ref, s_ref = params, state
    p_fast, s_fast = sj.apply_masks(params, sj.masks_of(state)), state
    ref, fast = step_fn(False), step_fn(True)
    for _ in range(STEPS):
        p_ref, s_ref, l_ref = ref(p_ref, s_ref)
        p_fast, s_fast, l_fast = fast(p_fast, s_fast)
        np.testing.assert_allclose(l_fast, l_ref, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p_fast, p_ref)
        same = jax.tree.map(np.array_equal, sj.masks_of(s_fast), sj.masks_of(s_ref))
        assert all(jax.tree.leaves(same))
