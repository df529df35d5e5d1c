"""Compressed block-sparse training sharded over 8 host CPU devices equals the unsharded run.

One subprocess (8 forced host devices, a ``data=2 x fsdp=4`` mesh): the compressed params (stored
blocks, FSDP-sharded along a block axis), their momentum and the batch are sharded; block RigL and SET
move blocks on every step, on an MLP and on a ViT whose MLP blocks run fused (``CompressedBlockMLP``). The topology after each step equals the single-device run's exactly, the
params to float tolerance, and blocks, momentum and params keep their shardings (nothing comes back
replicated).
"""

import textwrap

from _subprocess import run_script

SCRIPT = textwrap.dedent(
    """
    import itertools, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import kernels_pallas as kp
    import sparsejax as sj
    from sparsejax import sharding as shd
    from experiments.models.block_mlp import BlockMLP
    from experiments.models.block_vit import BlockViT
    sys.path.insert(0, "tests")
    from conftest import init_state, place
    from _steps import train_step

    assert jax.device_count() == 8, jax.devices()
    mesh = shd.make_mesh({"data": 2, "fsdp": -1, "model": 1})
    mlp = BlockMLP(hidden=(128, 128), block_size=16, density=0.1, impl="xla", compressed=True)
    vit = BlockViT(patch_size=7, block_size=16, density=0.1, impl="xla", compressed=True)
    vit_dense = {"embedding": 0.0, "_attn/": 0.0}  # the ViT's MLP blocks only
    cases = [("mlp", mlp, (32, 784), {}), ("vit", vit, (32, 28, 28, 1), vit_dense)]
    algos = (("rigl", sj.rigl), ("set", sj.set_sparse))
    for (label, model, shape, overrides), (name, ctor) in itertools.product(cases, algos):
        name = f"{label} {name}"
        dense_model = model.clone(compressed=False)
        x = jax.random.normal(jax.random.PRNGKey(0), shape)
        y = jax.random.randint(jax.random.PRNGKey(1), (32,), 0, 10)
        dense_like = jax.eval_shape(dense_model.init, jax.random.PRNGKey(2), x)["params"]
        params = model.init(jax.random.PRNGKey(2), x)["params"]
        psh = shd.param_shardings(params, mesh)
        specs = [s.spec for s in jax.tree.leaves(psh)]
        assert specs.count(jax.sharding.PartitionSpec()) < len(specs)
        kw = dict(sparsity=0.9, block_size=(16, 16), distribution="uniform", dense_last=True,
                  update_every=1, end_step=100, overrides=overrides)
        tx = sj.sparsify(optax.sgd(0.05, momentum=0.9), kp.compressed_algorithm(ctor, dense_like, **kw))

        step = train_step(model, tx, assume_masked=False)

        runs = []
        for sharded in (False, True):
            p, xs, ys = place(sharded, params, x, y, psh, mesh)
            s = init_state(tx, sharded, p, params, psh, mesh)
            trail = []
            for _ in range(4):
                p, s, _ = step(p, s, xs, ys)
                trail.append(jax.device_get(kp.compressed_state(s).positions))
            if sharded:
                got = [a.sharding.spec for a in jax.tree.leaves(p)]
                assert got == [q.spec for q in jax.tree.leaves(psh)], (name, got)
                traces = [t for t in jax.tree.leaves(s.inner, is_leaf=lambda n: hasattr(n, "trace"))
                          if hasattr(t, "trace")]
                assert len(traces) == 1, s.inner  # the momentum: sharded like the blocks
                got = [a.sharding.spec for a in jax.tree.leaves(traces[0].trace)]
                assert got == [q.spec for q in jax.tree.leaves(psh)], (name, got)
            runs.append((trail, jax.device_get(p)))
        (t1, p1), (t8, p8) = runs
        moved = sum(any((a != b).any() for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)))
                    for u, v in zip(t1, t1[1:]))
        assert moved >= 2, (name, moved)  # the blocks really moved
        for u, v in zip(t1, t8):
            for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)):
                np.testing.assert_array_equal(a, b, err_msg=name)
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
        print("ok", name, moved, flush=True)
    print("OK")
    """
)


def test_compressed_block_rigl_sharded_matches_unsharded():
    print(run_script(SCRIPT, devices=8))
