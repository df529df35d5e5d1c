"""Every algorithm trains a small Flax CNN on real data (mnist5k) at 90% sparsity and learns (SPDF: 90%
then dense fine-tuning)."""

import jax
import numpy as np
import optax
import pytest
from conftest import CNN, accuracy, make_step

import sparsejax as sj

STEPS, BATCH = 300, 64
ALGOS = {
    "dense": lambda: sj.dense(),
    "static": lambda: sj.static(0.9),
    "gmp": lambda: sj.gmp(0.9, update_every=25, start_step=25, end_step=200),
    "global_magnitude": lambda: sj.global_magnitude(
        0.9, update_every=25, start_step=25, end_step=200
    ),
    "set": lambda: sj.set_sparse(0.9, update_every=25, end_step=225),
    "rigl": lambda: sj.rigl(0.9, update_every=25, end_step=225),
    "granet": lambda: sj.granet(0.9, initial_sparsity=0.5, update_every=25, end_step=200),
    "ste": lambda: sj.ste(0.9),
    "snip": lambda: sj.snip(0.9),
    "spdf": lambda: sj.spdf(
        0.9, sparse_phase="rigl", update_every=25, end_step=150, release_step=200
    ),
}


@pytest.mark.parametrize("name", list(ALGOS))
def test_cnn_learns_mnist5k_at_90_percent(name, mnist5k):
    x_tr, y_tr, x_te, y_te = mnist5k
    model = CNN()
    params = model.init(jax.random.PRNGKey(0), x_tr[:1])["params"]
    tx = sj.sparsify(optax.adam(2e-3), ALGOS[name]())
    state = tx.init(params)
    step = make_step(model, tx)
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        idx = rng.integers(0, len(x_tr), BATCH)
        params, state, loss = step(params, state, x_tr[idx], y_tr[idx])
    acc = accuracy(model, params, state, x_te, y_te)
    total = sj.summarize(sj.masks_of(state))["total"]
    if name == "spdf":  # dense fine-tuning after the release
        assert total["sparsity"] == 0.0, total
    elif name != "dense":
        assert abs(total["sparsity"] - 0.9) < 0.005, total
        fwd = sj.summarize(sj.forward_params(params, state))["leaves"]
        for leaf, info in sj.summarize(sj.masks_of(state))["leaves"].items():
            assert fwd[leaf]["nonzeros"] <= info["nonzeros"], leaf
    print(f"{name}: held-out accuracy {acc:.3f}")
    assert acc > 0.75, f"{name}: held-out accuracy {acc:.3f}"
