"""Metrics: FLOP counts against hand formulas, ITOP, SAD, average parameter count, training FLOPs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import MLP, make_step

import sparsejax as sj


def test_forward_flops_dense_and_sparse_mlp():
    model = MLP(hidden=(64, 32))
    x = jnp.ones((8, 100))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    masks = sj.create_masks(
        params, sj.leaf_sparsities(params, 0.75, "uniform"), jax.random.PRNGKey(1)
    )
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    f = sj.metrics.forward_flops(apply, params, x, masks=masks)
    dense = 2 * 8 * (100 * 64 + 64 * 32 + 32 * 10)
    assert f["dense"] == dense
    assert f["sparse"] == pytest.approx(0.25 * dense, rel=1e-3)
    # Without masks, densities come from the nonzeros of the (masked) params.
    g = sj.metrics.forward_flops(apply, sj.apply_masks(params, masks), x)
    assert g["sparse"] == pytest.approx(f["sparse"], rel=1e-3)


def test_forward_flops_conv():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(16, (3, 3), padding="SAME")(x)

    x = jnp.ones((2, 10, 10, 4))
    params = Net().init(jax.random.PRNGKey(0), x)["params"]
    f = sj.metrics.forward_flops(lambda p, x: Net().apply({"params": p}, x), params, x)
    assert f["dense"] == 2 * (2 * 10 * 10 * 16) * (3 * 3 * 4)


def test_training_flops_as_rigl_counts_them():
    fd, fs = 100.0, 10.0
    assert sj.metrics.train_flops_per_step("dense", fd, fs) == 300.0
    assert sj.metrics.train_flops_per_step("static", fd, fs) == 30.0
    assert sj.metrics.train_flops_per_step("rigl", fd, fs, update_every=100) == pytest.approx(
        (3 * fs * 100 + 2 * fs + fd) / 101
    )
    assert sj.metrics.train_flops_per_step("sr_ste", fd, fs) == fs + 2 * fd


def test_itop_grows_with_set_and_stays_with_static():
    model = MLP(hidden=(32,))
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 20))
    y = jnp.zeros(32, jnp.int32)
    rates = {}
    for name, algo in {
        "static": sj.static(0.9),
        "set": sj.set_sparse(0.9, update_every=1, drop_fraction=0.3),
    }.items():
        params = model.init(jax.random.PRNGKey(0), x)["params"]
        tx = sj.sparsify(optax.sgd(0.1), algo, track_metrics=True)
        state = tx.init(params)
        step = make_step(model, tx)
        for _ in range(5):
            params, state, _ = step(params, state, x, y)
        rates[name] = float(sj.metrics.itop(state))
        counts = sj.metrics.update_counts(state)
        if name == "set":
            assert counts["dropped"] == counts["grown"] > 0 and counts["sad"] <= 2 * counts["grown"]
    assert rates["static"] == pytest.approx(0.1, abs=0.01)
    assert rates["set"] > 0.2


def test_sad_fraction_and_average_param_count():
    a = {"w": jnp.asarray([True, True, False, False])}
    b = {"w": jnp.asarray([True, False, True, False])}
    assert int(sj.metrics.sad(a, b)) == 2
    assert float(sj.metrics.sad(a, b, fraction=True)) == 0.5
    assert sj.metrics.average_param_count([100, 50, 50]) == pytest.approx(200 / 3)
    # Step-weighted: 100 params for steps 0..10, then 10 for 10..100.
    assert sj.metrics.average_param_count([100, 100, 10, 10], [0, 10, 10, 100]) == pytest.approx(
        19.0
    )
    assert float(sj.metrics.grown_survival(a, b)) == 0.5
