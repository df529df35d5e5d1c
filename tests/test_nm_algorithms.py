"""STE, SR-STE and PGF (MDGF, SDGF) on N:M masks: exact N:M forwards every step, SR-STE's refined
gradient, PGF's decay and phases, straight-through backward, SDGF's documented pattern sequence."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import schedules
from sparsejax.algorithms.pgf import sdgf_pattern_at

forward = jax.jit(sj.forward_params)


def make_params(c_in: int = 8) -> dict:
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "Dense_0": {"kernel": jax.random.normal(k[0], (c_in, 16)), "bias": jnp.zeros(16)},
        "Conv_0": {"kernel": jax.random.normal(k[1], (3, 3, c_in, 4))},
        "head": {"kernel": jax.random.normal(k[2], (16, 4))},
    }


def loss_fn(fw: dict, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ fw["Dense_0"]["kernel"] + fw["Dense_0"]["bias"])
    conv = jnp.sum(jnp.sin(fw["Conv_0"]["kernel"]) * x[0, 0])
    return jnp.mean(jnp.square(h @ fw["head"]["kernel"] - 1.0)) + conv


def train(tx, params: dict, steps: int, c_in: int = 8):
    """Runs ``steps`` jitted steps; returns the (params, state) after init and after every step."""
    state = jax.jit(tx.init)(params)
    xs = jax.random.normal(jax.random.PRNGKey(1), (steps, 5, c_in))

    @jax.jit
    def step(p, s, x):
        g = jax.grad(lambda q: loss_fn(sj.forward_params(q, s), x))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    history = [(params, state)]
    for x in xs:
        params, state = step(params, state, x)
        history.append((params, state))
    return history


def group_counts(x: jax.Array, axis: int, m: int) -> np.ndarray:
    """Nonzeros (or actives) per N:M group along ``axis``."""
    return np.count_nonzero(np.moveaxis(np.asarray(x), axis, -1).reshape(-1, m), axis=-1)


def assert_exact_nm(params, state, n: int, m: int, axis: int = -2) -> None:
    """Every group of every sparsified leaf has exactly ``n`` nonzero forward weights."""
    fw = forward(params, state)
    masks = jax.tree.leaves(sj.masks_of(state), is_leaf=sj.is_dense)
    sparse = 0
    for msk, w in zip(masks, jax.tree.leaves(fw)):
        if not sj.is_dense(msk):
            sparse += 1
            np.testing.assert_array_equal(group_counts(msk, axis, m), n)
            np.testing.assert_array_equal(group_counts(w, axis, m), n)
    assert sparse == 3


@pytest.mark.parametrize(
    "algo, n, m",
    [
        (sj.ste(n=2, m=4), 2, 4),
        (sj.sr_ste(2, 4), 2, 4),
        (sj.sr_ste(1, 8, sr_decay=0.05), 1, 8),
        (sj.ste(n=3, m=8), 3, 8),
    ],
    ids=["ste_2:4", "sr_ste_2:4", "sr_ste_1:8", "ste_3:8"],
)
def test_ste_family_exact_nm_every_step_and_masks_move(algo, n, m):
    history = train(sj.sparsify(optax.sgd(0.5), algo, track_metrics=True), make_params(), steps=6)
    for params, state in history:
        assert_exact_nm(params, state, n, m)
    flips = [int(sj.sparse_state(s).stats["sad"]) for _, s in history[1:]]
    assert sum(flips) > 0  # dense weights keep learning, so masks do change under STE
    for (p0, _), (p1, _) in zip(history, history[1:]):  # pruned weights are updated too (not hard)
        pruned = ~sj.nm_mask(p0["head"]["kernel"], n, m, 0)
        assert np.any(np.asarray(p0["head"]["kernel"] != p1["head"]["kernel"])[np.asarray(pruned)])


def test_unstructured_ste_keeps_exact_count():
    history = train(
        sj.sparsify(optax.sgd(0.5), sj.ste(0.75, distribution="uniform"), track_metrics=True),
        make_params(),
        4,
    )
    for params, state in history:
        fw = forward(params, state)
        for name in ("Dense_0", "Conv_0", "head"):
            w = fw[name]["kernel"]
            assert np.count_nonzero(np.asarray(w)) == round(0.25 * w.size)


def test_sr_ste_refined_gradient_hand_built():
    w = jnp.array([[1.0, 0.1], [-3.0, 0.2], [0.5, -0.3], [2.0, 0.4]])  # 2:4 keeps rows 1, 3 | 2, 3
    g = jnp.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6], [0.7, -0.8]])
    pruned = jnp.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    params, grads = {"k": w, "b": jnp.ones(2)}, {"k": g, "b": jnp.full(2, 0.5)}
    for algo, lam in ((sj.sr_ste(2, 4), 2e-4), (sj.sr_ste(2, 4, sr_decay=0.1), 0.1)):
        state = sj.sparsify(optax.identity(), algo, track_metrics=True).init(params)
        np.testing.assert_array_equal(sj.masks_of(state)["k"], pruned == 0)
        updates, _ = algo.update(grads, state, params)
        np.testing.assert_allclose(updates["k"], g + lam * pruned * w, rtol=1e-6)
        np.testing.assert_array_equal(updates["b"], grads["b"])
        sgd = sj.sparsify(optax.sgd(1.0), algo, track_metrics=True)
        updates, _ = sgd.update(grads, sgd.init(params), params)
        np.testing.assert_allclose(updates["k"], -(g + lam * pruned * w), rtol=1e-6)


def test_sr_ste_with_zero_decay_is_plain_ste():
    runs = [
        train(
            sj.sparsify(optax.sgd(0.3, momentum=0.9), algo, track_metrics=True),
            make_params(),
            steps=5,
        )
        for algo in (sj.ste(n=2, m=4), sj.sr_ste(2, 4, sr_decay=0.0))
    ]
    for (p_ste, s_ste), (p_sr, s_sr) in zip(*runs):
        jax.tree.map(np.testing.assert_array_equal, p_ste, p_sr)
        jax.tree.map(np.testing.assert_array_equal, sj.masks_of(s_ste), sj.masks_of(s_sr))


def test_sr_ste_decay_as_plain_optax_transform():
    params = make_params()
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.25), params)
    tx = optax.chain(sj.sr_ste_decay(2, 4), optax.sgd(0.1))
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for name in ("Dense_0", "Conv_0", "head"):
        w = params[name]["kernel"]
        pruned = ~sj.nm_mask(w, 2, 4, axis=w.ndim - 2)
        expected = -0.1 * (0.25 + 2e-4 * jnp.where(pruned, w, 0.0))
        np.testing.assert_allclose(updates[name]["kernel"], expected, rtol=1e-6)
    np.testing.assert_allclose(updates["Dense_0"]["bias"], -0.025, rtol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "exp"])
@pytest.mark.parametrize("warmup", [0, 2])
def test_pgf_mdgf_decay_phases(kind, warmup):
    end, coef = 8, 0.1
    algo = sj.pgf(2, 4, pgf_decay=kind, pgf_coef=coef, warmup_steps=warmup, end_step=end)
    history = train(
        sj.sparsify(optax.sgd(0.1), algo, track_metrics=True), make_params(), steps=end + 2
    )
    for t, (params, state) in enumerate(history):
        s = sj.sparse_state(state)
        u = max(t - warmup, 0)
        delta = (
            0.0
            if t >= end
            else (max(0.0, 1 - coef * u) if kind == "linear" else math.exp(-coef * u))
        )
        np.testing.assert_allclose(float(s.algo_state), delta, rtol=1e-6, atol=1e-7)
        fw = forward(params, state)
        if t <= warmup:  # delta(0) = 1, and 1 through the warm-up: the forward is the dense model
            jax.tree.map(np.testing.assert_array_equal, fw, params)
        msk = sj.masks_of(state)["head"]["kernel"]
        w = params["head"]["kernel"]
        np.testing.assert_allclose(fw["head"]["kernel"], jnp.where(msk, w, delta * w), rtol=1e-6)
        if t >= end:  # fine-tune phase: binary mask, exactly N:M
            assert_exact_nm(params, state, 2, 4)
    assert float(sj.sparse_state(history[end - 1][1]).algo_state) > 0.0


def test_pgf_backward_is_straight_through():
    algo = sj.pgf(2, 4, pgf_coef=0.5, end_step=10)
    params, state = train(
        sj.sparsify(optax.sgd(0.1), algo, track_metrics=True), make_params(), steps=1
    )[-1]
    assert float(sj.sparse_state(state).algo_state) == pytest.approx(0.5)
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 8))
    through = jax.grad(lambda p: loss_fn(sj.forward_params(p, state), x))(params)
    at_forward = jax.grad(loss_fn)(sj.forward_params(params, state), x)
    jax.tree.map(np.testing.assert_array_equal, through, at_forward)


def test_sdgf_pattern_sequences():
    assert schedules.sdgf_patterns(1, 8, "sparsify") == [(8, 8), (7, 8), (4, 8), (2, 8), (1, 8)]
    assert schedules.sdgf_patterns(2, 4, "sparsify") == [(4, 4), (3, 4), (2, 4)]
    assert schedules.sdgf_patterns(1, 16, "sparsify") == [
        (16, 16), (15, 16), (8, 16), (4, 16), (2, 16), (1, 16)
    ]  # fmt: skip
    assert schedules.sdgf_patterns(1, 8, "fine") == [(8, 64), (4, 32), (2, 16), (1, 8)]


@pytest.mark.parametrize(
    "n, m, kind, c_in, expected",
    [
        (
            1,
            8,
            "sparsify",
            8,
            [None] * 2 + [(7, 8)] * 3 + [(4, 8)] * 3 + [(2, 8)] * 3,
        ),
        (1, 2, "fine", 16, [None] * 2 + [(8, 16)] * 3 + [(4, 8)] * 3 + [(2, 4)] * 3),
    ],
)
def test_sdgf_steps_through_documented_patterns(n, m, kind, c_in, expected):
    warmup, frame = 2, 3
    # As in the PGF paper: dense warm-up, the decay frames, then N:M from end_step (fine-tuning).
    frames = len(schedules.sdgf_decay_frames(n, m, kind))
    end = warmup + frames * frame
    expected = expected + [(n, m)] * (end + 3 - len(expected))
    algo = sj.pgf(n, m, pgf_mode="sdgf", sdgf_schedule=kind, warmup_steps=warmup, end_step=end)
    history = train(
        sj.sparsify(optax.sgd(0.5), algo, track_metrics=True), make_params(c_in), end + 2, c_in
    )
    for t, (params, state) in enumerate(history):
        pattern = sdgf_pattern_at(t, n, m, kind, warmup, end)
        assert pattern == expected[t], t
        pn, pm = pattern or (1, 1)
        fw = forward(params, state)
        for name in ("Dense_0", "Conv_0", "head"):
            axis = fw[name]["kernel"].ndim - 2
            np.testing.assert_array_equal(group_counts(fw[name]["kernel"], axis, pm), pn)


@pytest.mark.parametrize(
    "algo",
    [
        sj.ste(n=2, m=4),
        sj.ste(0.75, distribution="uniform"),
        sj.sr_ste(1, 8, sr_decay=0.05),
        sj.pgf(1, 4, end_step=8),
        # frame changes alter the counts: grown != dropped
        sj.pgf(1, 4, pgf_mode="sdgf", end_step=6),
    ],
    ids=["ste_2:4", "ste_topk", "sr_ste_1:8", "pgf_mdgf", "pgf_sdgf"],
)
def test_flip_stats_match_two_counts_every_step(algo, request):
    history = train(sj.sparsify(optax.sgd(0.5), algo, track_metrics=True), make_params(), steps=8)
    unequal = flips = 0
    for (_, s0), (_, s1) in zip(history, history[1:]):
        old, new = (
            [np.asarray(x) for x in jax.tree.leaves(sj.masks_of(s)) if x.dtype == bool]
            for s in (s0, s1)
        )
        dropped = sum(int(np.sum(a & ~b)) for a, b in zip(old, new))
        grown = sum(int(np.sum(b & ~a)) for a, b in zip(old, new))
        stats = sj.sparse_state(s1).stats
        assert (int(stats["dropped"]), int(stats["grown"])) == (dropped, grown)
        assert int(stats["sad"]) == dropped + grown
        unequal += dropped != grown
        flips += dropped
    assert flips > 0  # the masks did move, so the counts were exercised
    assert (unequal > 0) == request.node.callspec.id.endswith("sdgf")


@pytest.mark.parametrize(
    "algo",
    [sj.ste(n=2, m=4), sj.pgf(1, 4, end_step=8), sj.rigl(0.5, update_every=1, end_step=8)],
    ids=["ste", "pgf", "rigl"],
)
def test_state_leaves_never_share_buffers(algo):
    # A state whose leaves alias each other cannot be donated to the next jitted step.
    params = make_params()
    tx = sj.sparsify(optax.adam(0.1), algo, track_metrics=True)
    state = tx.init(params)
    for _ in range(2):  # eager updates (the jitted ones always return fresh buffers)
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
        assert len(set(pointers)) == len(pointers)


def _int_sums(jaxpr) -> int:
    """Number of int32 ``reduce_sum`` equations in a jaxpr, nested jaxprs included."""
    found = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "reduce_sum" and eqn.outvars[0].aval.dtype == jnp.int32:
            found += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _int_sums(inner)
    return found


@pytest.mark.parametrize(
    "algo",
    [
        sj.ste(n=2, m=4),
        sj.sr_ste(2, 4),
        sj.pgf(1, 8, end_step=8),
        sj.pgf(1, 4, pgf_mode="sdgf", end_step=8),
    ],
    ids=["ste", "sr_ste", "pgf_mdgf", "pgf_sdgf"],
)
def test_refresh_step_counts_no_flips(algo):
    # The STE family's masks move every step; counting the flips there cost 4-5% of the MLP step,
    # so the step only keeps the previous masks and the counts are taken when stats are read.
    params = make_params()
    tx = sj.sparsify(optax.adam(0.1), algo, track_metrics=True)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    step = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(grads, state, params)
    assert _int_sums(step.jaxpr) == 0
    # The detector does see a count: reading the stats in the step adds them.
    read = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p)[1].stats)(grads, state, params)
    assert _int_sums(read.jaxpr) > 0
