"""FSDP-sharded sparse training on 8 host CPU devices equals the unsharded run, and stays sharded.

One subprocess (8 forced host devices) runs every algorithm's step with params, masks and optimizer
state sharded over a ``data=2 x fsdp=4`` mesh and compares with the single-device step; it also checks
that no mask or param leaf comes out replicated and that mask updates alone compile without any
all-gather (no leaf is ever collected onto one device).
"""

import textwrap

import jax
import numpy as np
import pytest
from _subprocess import run_script

from sparsejax import sharding as shd

SCRIPT = textwrap.dedent(
    """
    import re, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import sparsejax as sj
    from sparsejax import sharding as shd
    sys.path.insert(0, "tests")
    from conftest import MLP, init_state, make_step, place

    assert jax.device_count() == 8, jax.devices()
    mesh = shd.make_mesh({"data": 2, "fsdp": -1, "model": 1})
    model = MLP(hidden=(64, 32))
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 48))
    y = jax.random.randint(jax.random.PRNGKey(1), (32,), 0, 10)
    params = model.init(jax.random.PRNGKey(2), x)["params"]
    psh = shd.param_shardings(params, mesh)
    kw = dict(update_every=1, end_step=6)
    ALGOS = {
        "static": sj.static(0.8, distribution="erk"),
        "set": sj.set_sparse(0.8, distribution="erk", **kw),
        "rigl": sj.rigl(0.8, distribution="erk", **kw),
        "gmp": sj.gmp(0.8, **kw),
        "global_magnitude": sj.global_magnitude(0.8, **kw),
        "granet": sj.granet(0.8, **kw),
        "ste": sj.ste(n=2, m=4),
        "sr_ste": sj.sr_ste(2, 4),
        "pgf": sj.pgf(1, 8, end_step=6),
    }
    names = sys.argv[1:] or list(ALGOS)
    for name in names:
        algo = ALGOS[name]
        tx = sj.sparsify(optax.adam(1e-2), algo, track_metrics=True)
        step = make_step(model, tx)
        results = []
        for sharded in (False, True):
            p, xs, ys = place(sharded, params, x, y, psh, mesh)
            state = init_state(tx, sharded, p, params, psh, mesh)
            for _ in range(3):
                p, state, _ = step(p, state, xs, ys)
            if sharded:  # outputs keep the param sharding: nothing became replicated
                trees = (p, sj.masks_of(state), sj.sparse_state(state).metrics.ever_active)
                for tree in trees:
                    got = jax.tree.leaves(jax.tree.map(lambda a: a.sharding.spec, tree))
                    want = [s.spec for s, t in zip(jax.tree.leaves(psh), jax.tree.leaves(tree, is_leaf=sj.is_dense)) if not sj.is_dense(t)]
                    assert got == want, (name, got, want)
                for mu in jax.tree.leaves(state.inner, is_leaf=lambda n: hasattr(n, "mu")):
                    if hasattr(mu, "mu"):
                        got = [a.sharding.spec for a in jax.tree.leaves(mu.mu)]
                        assert got == [s.spec for s in jax.tree.leaves(psh)], (name, got)
                # bit-packed previous masks (STE family) stay sharded like their params
                prev = jax.tree.leaves(sj.sparse_state(state).metrics.previous)
                want = jax.tree.leaves(shd.shardings(sj.sparse_state(state).metrics.previous, params, psh, mesh))
                assert len(prev) == len(want) and bool(prev) == (algo.refresh_masks is not None), name
                for a, s in zip(prev, want):
                    assert a.sharding.spec == s.spec and not a.sharding.is_fully_replicated, (name, a.sharding)
                # the mask update alone: no all-gather anywhere in the compiled program
                masks = sj.masks_of(state)
                key = jax.random.PRNGKey(3)
                fns = [lambda m, w, g: algo.init_masks(w, key)]
                if algo.update_masks is not None:
                    fns.append(lambda m, w, g: algo.update_masks(m, w, g, jnp.int32(1), key))
                if algo.refresh_masks is not None:
                    fns.append(lambda m, w, g: algo.refresh_masks(w, m, jnp.int32(1), ()))
                for fn in fns:
                    hlo = jax.jit(fn).lower(masks, p, p).compile().as_text()
                    gathers = re.findall(r"all-gather", hlo)
                    assert not gathers, (name, len(gathers))
            results.append(jax.device_get((p, sj.masks_of(state))))
        (p1, m1), (p8, m8) = results
        for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m8)):
            np.testing.assert_array_equal(a, b, err_msg=name)
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
        print("ok", name, flush=True)

    # packed masks keep a sharded layout (packing along the last axis, never a flatten)
    masks = sj.masks_of(state)
    packed = jax.jit(sj.pack_masks)(masks)
    for m, q in zip(jax.tree.leaves(masks), jax.tree.leaves(packed)):
        assert not q.sharding.is_fully_replicated or m.sharding.is_fully_replicated, q.sharding
    print("OK")
    """
)


def test_fsdp_step_matches_unsharded_for_every_algorithm():
    run_script(SCRIPT, devices=8)


def _fake_mesh(**axes: int):
    """A mesh of the one local device repeated is not allowed; use an abstract mesh for specs only."""
    return jax.sharding.AbstractMesh(tuple(axes.values()), tuple(axes))


def test_fsdp_spec_picks_largest_divisible_axis():
    mesh = _fake_mesh(data=2, fsdp=4, model=1)
    assert shd.fsdp_spec((48, 64), mesh) == jax.sharding.PartitionSpec(None, "fsdp")
    assert shd.fsdp_spec((64, 10), mesh) == jax.sharding.PartitionSpec("fsdp")
    assert shd.fsdp_spec((3, 5), mesh) == jax.sharding.PartitionSpec()
    assert shd.fsdp_spec((64,), mesh, min_size=1000) == jax.sharding.PartitionSpec()


def test_make_mesh_sizes_and_errors():
    mesh = shd.make_mesh({"data": -1, "fsdp": 1, "model": 1})
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "model": 1}
    with pytest.raises(ValueError, match="config.mesh"):
        shd.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="config.mesh"):
        shd.make_mesh({"data": 3 * jax.device_count() + 1})


def test_shardings_cover_masks_and_moments():
    import optax

    import sparsejax as sj

    mesh = shd.make_mesh({"data": 1, "fsdp": -1})
    params = {"dense": {"kernel": np.ones((8, 16), np.float32), "bias": np.zeros(16, np.float32)}}
    psh = shd.param_shardings(params, mesh)
    state = sj.sparsify(
        optax.adam(1e-3), sj.static(0.5, distribution="uniform"), track_metrics=True
    ).init(params)
    sh = shd.shardings({"params": params, "opt": state}, params, psh, mesh)
    assert sh["opt"].masks["dense"]["kernel"] == psh["dense"]["kernel"]
    assert sj.is_dense(sh["opt"].masks["dense"]["bias"])
    assert sh["opt"].inner[0].mu["dense"]["kernel"] == psh["dense"]["kernel"]
    assert sh["opt"].step.spec == jax.sharding.PartitionSpec()
