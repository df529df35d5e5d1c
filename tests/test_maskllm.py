"""MaskLLM: candidate sets, the magnitude prior, Gumbel-softmax soft masks, learned logits, and a short
training on real mnist5k digits that learns with an exact 2:4 mask."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import MLP

import sparsejax as sj
from sparsejax.algorithms.maskllm import anneal, candidates


@pytest.mark.parametrize("n, m, count", [(2, 4, 6), (1, 4, 4), (2, 8, 28), (3, 4, 4)])
def test_candidates_are_all_masks_with_n_ones(n, m, count):
    c = candidates(n, m)
    assert c.shape == (count, m) and set(np.unique(c)) <= {0.0, 1.0}
    want = {
        tuple(1.0 if i in keep else 0.0 for i in range(m))
        for keep in itertools.combinations(range(m), n)
    }
    assert {tuple(row) for row in c} == want and len(want) == count
    if n == 1:
        np.testing.assert_array_equal(c, np.eye(m, dtype=np.float32))


def test_anneal_start_end_and_after():
    for start, end in [(4.0, 0.05), (100.0, 500.0)]:
        assert float(anneal(0, start, end, 100)) == pytest.approx(start)
        assert float(anneal(50, start, end, 100)) == pytest.approx((start + end) / 2)
        assert float(anneal(100, start, end, 100)) == pytest.approx(end)
        assert float(anneal(10**6, start, end, 100)) == pytest.approx(end)


def _params(key, shapes):
    keys = jax.random.split(key, len(shapes))
    return {
        f"l{i}": {"kernel": jax.random.normal(k, s)} for i, (k, s) in enumerate(zip(keys, shapes))
    }


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8)])
def test_prior_argmax_is_the_magnitude_nm_mask(n, m):
    params = _params(jax.random.PRNGKey(3), [(64, 32), (3, 3, 16, 8), (32, 10)])
    masks = sj.masks_of(jax.jit(sj.maskllm(n, m, end_step=10).init)(params))
    for name, leaf in params.items():
        want = sj.nm_mask(leaf["kernel"], n, m, axis=-2)
        np.testing.assert_array_equal(masks[name]["kernel"], want)


def _valid_nm(mask, n, m):
    groups = np.moveaxis(np.asarray(mask, np.float32), -2, -1).reshape(-1, m)
    return groups.sum(-1)


def test_soft_rows_sum_to_n_and_hard_mask_valid_every_step():
    """Property check over a short training: each step's soft mask (the forward of all-ones weights) has
    group sums n and entries in [0, 1]; the mask is valid N:M and the argmax of the logits."""
    n, m, steps = 2, 4, 30
    params = _params(jax.random.PRNGKey(0), [(16, 12), (12, 3)])
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 16))
    y = jax.random.randint(jax.random.PRNGKey(2), (32,), 0, 3)
    tx = sj.sparsify(optax.adam(1e-2), sj.maskllm(n, m, end_step=steps - 5, logit_lr=1e-2))
    state = tx.init(params)

    def loss(p, s):
        fp = sj.forward_params(p, s)
        logits = jax.nn.relu(x @ fp["l0"]["kernel"]) @ fp["l1"]["kernel"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s):
        _, (g, ag) = sj.value_and_grad(loss)(p, s)
        u, s = tx.update(g, s, p, algo_grads=ag)
        return optax.apply_updates(p, u), s

    ones = jax.tree.map(jnp.ones_like, params)
    soft_before = None
    for t in range(steps + 1):
        soft = jax.jit(sj.forward_params)(ones, state)
        logits = sj.sparse_state(state).algo_state.logits
        for name in params:
            s = np.asarray(soft[name]["kernel"])
            assert s.min() >= -1e-6 and s.max() <= 1 + 1e-6
            np.testing.assert_allclose(_valid_nm(s, n, m), n, atol=1e-4)
            mask = sj.masks_of(state)[name]["kernel"]
            np.testing.assert_array_equal(_valid_nm(mask, n, m), n)
            hard = candidates(n, m)[np.argmax(logits[name]["kernel"], -1)]
            np.testing.assert_array_equal(
                np.moveaxis(np.asarray(mask), -2, -1).reshape(-1, m), hard.reshape(-1, m)
            )
            if t >= steps - 5:  # annealing over: the forward is exactly the N:M mask
                np.testing.assert_array_equal(s, np.asarray(mask, np.float32))
        if soft_before is not None and t < steps - 5:  # fresh Gumbel noise every step
            assert not np.allclose(soft["l0"]["kernel"], soft_before)
        soft_before = np.asarray(soft["l0"]["kernel"])
        params, state = step(params, state)


def test_gradients_reach_the_logits_and_missing_algo_grads_fails():
    params = _params(jax.random.PRNGKey(0), [(16, 8)])
    tx = sj.sparsify(optax.sgd(0.1), sj.maskllm(2, 4, end_step=10))
    state = tx.init(params)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16))
    loss = lambda p, s: jnp.sum((x @ sj.forward_params(p, s)["l0"]["kernel"]) ** 2)  # noqa: E731
    _, (grads, algo_grads) = jax.jit(sj.value_and_grad(loss))(params, state)
    g = algo_grads.logits["l0"]["kernel"]
    assert g.shape == (8, 4, 6) and float(jnp.abs(g).max()) > 0
    assert algo_grads.key is None  # the noise key is not differentiated
    assert float(jnp.abs(grads["l0"]["kernel"]).max()) > 0
    _, new_state = jax.jit(tx.update)(grads, state, params, algo_grads=algo_grads)
    assert not np.allclose(
        sj.sparse_state(new_state).algo_state.logits["l0"]["kernel"],
        sj.sparse_state(state).algo_state.logits["l0"]["kernel"],
    )
    with pytest.raises(ValueError) as err:
        tx.update(grads, state, params)
    msg = str(err.value)
    assert (
        "\n" not in msg and "algo_grads" in msg and "sj.value_and_grad" in msg and "allowed" in msg
    )


def test_weight_regulariser_alone_learns_the_magnitude_mask():
    """Uniform logits (prior_scale=0), no task gradient: the regulariser -lambda ||w * soft||^2 alone
    moves the argmax to the candidates keeping the largest weights."""
    params = _params(jax.random.PRNGKey(5), [(64, 16)])
    algo = sj.maskllm(2, 4, end_step=1000, prior_scale=0.0, weight_reg=1.0, logit_lr=1e-3)
    tx = sj.sparsify(optax.identity(), algo)
    zero = jax.tree.map(jnp.zeros_like, params)

    @jax.jit
    def steps(state):
        def one(s, _):
            floats = jax.tree.map(
                lambda v: jnp.zeros_like(v) if jnp.issubdtype(v.dtype, jnp.floating) else None,
                sj.sparse_state(s).algo_state,
            )
            return tx.update(zero, s, params, algo_grads=floats)[1], None

        return jax.lax.scan(one, state, None, 200)[0]

    masks = sj.masks_of(steps(tx.init(params)))["l0"]["kernel"]
    want = sj.nm_mask(params["l0"]["kernel"], 2, 4, axis=-2)
    assert float(jnp.mean(masks == want)) > 0.95


def test_from_config_and_bad_values():
    algo = sj.from_config({"algorithm": "maskllm", "n": 2, "m": 4}, num_steps=100)
    assert isinstance(algo, sj.SparseAlgorithm) and algo.name == "maskllm" and not algo.hard
    assert sj.ALGORITHMS["maskllm"] is sj.maskllm
    for kw, key in [
        ({"n": 4, "m": 2}, "n=4"),
        ({"tau_start": 0.0}, "tau_start="),
        ({"kappa_end": -1.0}, "kappa_end="),
        ({"weight_reg": -1e-5}, "weight_reg="),
        ({"logit_lr": 0.0}, "logit_lr="),
        ({"n": 8, "m": 16}, "n=8"),
        ({"end_step": 0}, "end_step="),
    ]:
        with pytest.raises(ValueError) as err:
            sj.from_config({"algorithm": "maskllm", "end_step": 100, **kw})
        msg = str(err.value)
        assert "\n" not in msg and key in msg and "allowed" in msg, msg
    with pytest.raises(ValueError, match="end_step=None: allowed"):
        sj.from_config({"algorithm": "maskllm"})


@pytest.mark.slow
def test_maskllm_2_4_learns_mnist5k(mnist5k):
    """Adam(1e-3) on the weights, 400 steps of 128 under MaskLLM 2:4 annealed over all of training:
    held-out accuracy of the final exact 2:4 forward well above chance (measured ~0.90)."""
    x_tr, y_tr, x_te, y_te = map(jnp.asarray, mnist5k)
    steps, batch, model = 400, 128, MLP(hidden=(128, 64))
    params = model.init(jax.random.PRNGKey(0), x_tr[:1])["params"]
    tx = sj.sparsify(optax.adam(1e-3), sj.maskllm(2, 4, num_steps=steps))
    batches = jax.random.randint(jax.random.PRNGKey(1), (steps, batch), 0, x_tr.shape[0])

    def loss(p, s, i):
        logits = model.apply({"params": sj.forward_params(p, s)}, x_tr[i])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_tr[i]).mean()

    def step(carry, i):
        p, s = carry
        value, (g, ag) = sj.value_and_grad(loss)(p, s, i)
        u, s = tx.update(g, s, p, algo_grads=ag)
        return (optax.apply_updates(p, u), s), value

    @jax.jit
    def run(p):
        (p, s), losses = jax.lax.scan(step, (p, tx.init(p)), batches)
        return p, s, losses, sj.forward_params(p, s)

    p, s, losses, fwd = run(params)
    assert float(losses[-20:].mean()) < 0.5 * float(losses[:20].mean())
    masks = sj.masks_of(s)
    for name in ("Dense_0", "Dense_1", "Dense_2"):
        np.testing.assert_array_equal(_valid_nm(masks[name]["kernel"], 2, 4), 2)
        np.testing.assert_array_equal(
            fwd[name]["kernel"], jnp.where(masks[name]["kernel"], p[name]["kernel"], 0.0)
        )
    logits = jax.jit(model.apply)({"params": fwd}, x_te)
    acc = float(jnp.mean(logits.argmax(-1) == y_te))
    print(f"maskllm 2:4 held-out accuracy {acc:.4f}")
    assert acc > 0.85, acc
