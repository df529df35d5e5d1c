"""The same RigL step on 8 host CPU devices with a data-parallel mesh equals the single-device step."""

import textwrap

from _subprocess import run_script

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import sparsejax as sj
    sys_path = __import__("sys").path.insert(0, "tests")
    from conftest import MLP, make_step

    assert jax.device_count() == 8, jax.devices()
    model = MLP(hidden=(64, 32))
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 48))
    y = jax.random.randint(jax.random.PRNGKey(1), (64,), 0, 10)
    params = model.init(jax.random.PRNGKey(2), x)["params"]

    def run(shard):
        tx = sj.sparsify(optax.sgd(0.05, momentum=0.9), sj.rigl(0.9, update_every=2, end_step=8))
        p, xs, ys = params, x, y
        if shard:
            mesh = Mesh(np.array(jax.devices()), ("data",))
            rep = NamedSharding(mesh, P())
            p = jax.device_put(p, rep)
            xs = jax.device_put(x, NamedSharding(mesh, P("data")))
            ys = jax.device_put(y, NamedSharding(mesh, P("data")))
        state = tx.init(p)
        if shard:
            leaf = state.masks["Dense_0"]["kernel"]
            assert leaf.sharding.is_equivalent_to(p["Dense_0"]["kernel"].sharding, 2), leaf.sharding
        step = make_step(model, tx)
        for _ in range(9):
            p, state, _ = step(p, state, xs, ys)
        return jax.device_get(p), jax.device_get(sj.masks_of(state))

    p1, m1 = run(False)
    p8, m8 = run(True)
    for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m8)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("OK")
    """
)


def test_data_parallel_8_devices_matches_single_device():
    run_script(SCRIPT, devices=8)
