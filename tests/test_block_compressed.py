"""Compressed block-sparse training (``kernels_pallas.compressed_algorithm`` + ``CompressedBlockDense``).

- on mnist5k, compressed and masked-dense block RigL / SET / static give the same masks at every step
  and the same params to float tolerance (masked-dense: ``BlockSparseDense`` with the dense gradient),
  for MLPs and for block RigL on a ViT whose compressed MLP blocks run fused (``CompressedBlockMLP``);
- the compiled step never recompiles across mask updates, and its normal-step path holds no buffer
  of a dense kernel's size (the dense gradient exists in the mask-update branch only);
- the conversions to and from the masked-dense form round-trip exactly; slot moves keep kept blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _hlo import largest_buffer, reachable
from _steps import train_step
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels_pallas as kp
import sparsejax as sj
from experiments.models.block_mlp import BlockMLP
from experiments.models.block_vit import BlockViT
from kernels_pallas import topology, xla_path

BLOCK = 16
LR, MOMENTUM, BATCH = 0.05, 0.9, 64
CONSTRUCTORS = {"rigl": sj.rigl, "set": sj.set_sparse, "static": sj.static}


def _layout(name: str, steps: int) -> dict:
    kw = dict(sparsity=0.9, block_size=(BLOCK, BLOCK), distribution="uniform", dense_last=True)
    if name != "static":
        kw["update_every"] = 20
    if name == "rigl":
        kw["num_steps"] = steps  # updates until 75% of the run
    return kw


def _pair(name: str, steps: int, hidden=(128, 128), impl: str = "xla", vit: bool = False):
    """Masked-dense and compressed block-sparse models from the same masked-dense initial state: MLPs,
    or (``vit``) ViTs on 7x7 patches whose MLP blocks are sparse (compressed: fused)."""
    kw, inner = _layout(name, steps), optax.sgd(LR, momentum=MOMENTUM)
    if vit:
        dense_model = BlockViT(patch_size=7, block_size=BLOCK, density=0.1, impl=impl)
        kw["overrides"] = {"embedding": 0.0, "_attn/": 0.0}  # the MLP blocks only
    else:
        dense_model = BlockMLP(hidden=hidden, block_size=BLOCK, density=0.1, impl=impl)
    comp_model = dense_model.clone(compressed=True)
    dummy = jnp.zeros((1, 28, 28, 1) if vit else (1, 784))
    params = jax.jit(dense_model.init)(jax.random.PRNGKey(1), dummy)["params"]
    dtx = sj.sparsify(inner, CONSTRUCTORS[name](**kw), track_metrics=True)
    dstate = jax.jit(dtx.init)(params)
    params = jax.jit(sj.apply_masks)(params, sj.masks_of(dstate))
    dense_like = jax.eval_shape(lambda: params)
    ctx = sj.sparsify(
        inner, kp.compressed_algorithm(CONSTRUCTORS[name], dense_like, **kw), track_metrics=True
    )
    cparams, positions = kp.from_masked_dense(params, sj.masks_of(dstate), (BLOCK, BLOCK))
    cstate = jax.jit(ctx.init)(cparams)
    commit = lambda t: jax.device_put(t, jax.devices()[0])  # noqa: E731
    return (
        (train_step(dense_model, dtx, True), commit((params, dstate))),
        (train_step(comp_model, ctx, False), commit((cparams, cstate))),
        positions,
    )


@jax.jit
def _compare(dparams, dstate, cparams, cstate):
    """(masks equal, max |param difference|, max |param|) of the masked-dense and compressed runs."""
    p, m = kp.masked_dense(cparams, cstate)
    same = [jnp.all(a == b) for a, b in zip(_sparse(sj.masks_of(dstate)), _sparse(m))]
    diff = [jnp.max(jnp.abs(a - b)) for a, b in zip(jax.tree.leaves(dparams), jax.tree.leaves(p))]
    size = [jnp.max(jnp.abs(a)) for a in jax.tree.leaves(dparams)]
    return jnp.all(jnp.stack(same)), jnp.max(jnp.stack(diff)), jnp.max(jnp.stack(size))


def _sparse(masks):
    return sj.masks.sparse_leaves(masks)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, steps, hidden, vit",
    [
        ("rigl", 200, (128, 128), False),
        ("set", 200, (128,), False),
        ("static", 200, (128,), False),
        ("rigl", 200, None, True),
    ],
)
def test_compressed_matches_masked_dense_step_by_step(mnist5k, name, steps, hidden, vit):
    x_train, y_train, _, _ = mnist5k
    (dstep, (dp, ds)), (cstep, (cp, cs)), positions = _pair(name, steps, hidden, vit=vit)
    # The compressed algorithm draws the masked-dense algorithm's initial topology.
    start = kp.compressed_state(cs).positions
    for a, b in zip(_sparse(positions), _sparse(start)):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    moves, prev, worst = 0, None, 0.0
    for t in range(steps):
        idx = rng.integers(0, len(x_train), BATCH)
        x, y = jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
        x = x.reshape(-1, 28, 28, 1) if vit else x
        dp, ds, dloss = dstep(dp, ds, x, y)
        cp, cs, closs = cstep(cp, cs, x, y)
        same, diff, size = jax.device_get(_compare(dp, ds, cp, cs))
        assert same, f"{name}: masks differ after step {t + 1}"
        worst = max(worst, float(diff) / float(size))
        assert diff <= 1e-4 * size, (name, t, diff, size)  # ulps: SDD vs dense dW
        now = [np.asarray(p) for p in _sparse(kp.compressed_state(cs).positions)]
        moves += prev is not None and any((a != b).any() for a, b in zip(prev, now))
        prev = now
    print(f"{name}: {steps} steps, topology moved {moves} times, max relative diff {worst:.2e}")
    assert np.isfinite(float(closs)) and abs(float(closs) - float(dloss)) < 1e-3
    if name == "static":
        assert moves == 0
    else:  # the blocks moved, and the compressed metrics equal the masked-dense ones
        assert moves >= 3
        d_stats, c_stats = jax.device_get((ds.stats, kp.compressed_training.stats(cs)))
        assert {k: int(v) for k, v in d_stats.items()} == {k: int(v) for k, v in c_stats.items()}
        assert float(sj.metrics.itop(ds)) == pytest.approx(float(kp.compressed_training.itop(cs)))
    # Topology changes rewrite index arrays only: one compiled program for the whole run.
    assert cstep._cache_size() == 1


def test_normal_step_holds_no_dense_kernel_sized_buffer():
    """256 -> 256 -> 256 block RigL at batch 16: activations are 16 x 256, a dense kernel 256 x 256."""
    width, batch = 256, 16
    kw = dict(_layout("rigl", 100), update_every=2)
    hlo = {}
    for compressed in (True, False):
        model = BlockMLP(hidden=(width, width), block_size=BLOCK, density=0.1, impl="xla")
        model = model.clone(compressed=compressed)
        x, y = jnp.zeros((batch, width)), jnp.zeros((batch,), jnp.int32)
        params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
        if compressed:
            twin = model.clone(compressed=False)
            dense_like = jax.eval_shape(twin.init, jax.random.PRNGKey(0), x)["params"]
            algo = kp.compressed_algorithm(sj.rigl, dense_like, **kw)
        else:
            algo = sj.rigl(**kw)
        tx = sj.sparsify(optax.sgd(LR, momentum=MOMENTUM), algo, track_metrics=True)
        state = jax.jit(tx.init)(params)
        step = train_step(model, tx, assume_masked=not compressed)
        hlo[compressed] = step.lower(params, state, x, y).compile().as_text()
    kernel = width * width
    # The compressed step: nothing kernel-sized on the normal path, the dense gradient inside the
    # update branch (so the check can see such buffers where they are).
    assert largest_buffer(reachable(hlo[True], normal_only=True)) < kernel
    assert largest_buffer(reachable(hlo[True], normal_only=False)) >= kernel
    # The masked-dense step holds dense kernels on every step.
    assert largest_buffer(reachable(hlo[False], normal_only=True)) >= kernel


# Slots in shuffled order on a (4, 5) grid of 8 x 8 blocks: few blocks (batched by the rule), about
# one per row and column (blockwise) and many (grouped); every layout runs every count.
PRODUCT_NNZ = (3, 6, 15)


@pytest.mark.parametrize("layout", xla_path.LAYOUTS)
@pytest.mark.parametrize("nnz", PRODUCT_NNZ)
def test_compressed_product_and_grads_match_masked_dense(layout, nnz, monkeypatch):
    """y, dx, d(blocks) in slot order and the block norms of the dense gradient, against jnp."""
    monkeypatch.setattr(xla_path, "default_layout", lambda *_: layout)
    (kb, nb), b, m = (4, 5), 8, 12
    rng = np.random.default_rng(nnz)
    positions = jnp.asarray(rng.permutation(kb * nb)[:nnz], jnp.int32)
    data = jnp.asarray(rng.standard_normal((nnz, b, b)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((m, kb * b)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((m, nb * b)), jnp.float32)
    shape, probe = (kb * b, nb * b), jnp.zeros((kb, nb), jnp.float32)

    def compressed(x, data, probe):
        w = kp.CompressedWeight(data, positions, probe, jnp.asarray(True), shape)
        return jnp.sum(kp.compressed_matmul(x, w, impl="xla") * dy)

    def reference(x, data):
        return jnp.sum(x @ topology.to_masked_dense(data, positions, shape)[0] * dy)

    got = jax.jit(jax.grad(compressed, argnums=(0, 1, 2)))(x, data, probe)
    want = jax.grad(reference, argnums=(0, 1))(x, data)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)  # slot order kept
    dense_grad = x.T @ dy
    norms = jnp.square(dense_grad).reshape(kb, b, nb, b).sum(axis=(1, 3))
    np.testing.assert_allclose(got[2], norms, rtol=1e-5)


# ----------------------------------------------------------------------------- conversions
# (grid, block, nnz): a few static shapes, so each compiles once; hypothesis varies the contents.
ROUND_TRIP_CASES = [((3, 4), (2, 3), 5), ((2, 5), (4, 1), 10), ((1, 1), (2, 2), 1)]


@settings(max_examples=15, deadline=None)
@given(case=st.sampled_from(ROUND_TRIP_CASES), seed=st.integers(0, 2**31 - 1))
def test_masked_dense_round_trip_is_exact(case, seed):
    rng = np.random.default_rng(seed)
    (kb, nb), (bk, bn), nnz = case
    shape = (kb * bk, nb * bn)
    positions = jnp.asarray(rng.permutation(kb * nb)[:nnz], jnp.int32)  # any slot order
    data = jnp.asarray(rng.standard_normal((nnz, bk, bn)), jnp.float32)
    kernel, mask = _to_dense(data, positions, shape)
    assert int(mask.sum()) == nnz * bk * bn
    assert bool(jnp.all(jnp.where(mask, True, kernel == 0)))
    back, back_pos = _from_dense(kernel, mask, (bk, bn), nnz)
    order = np.argsort(np.asarray(positions))  # slots come back in CSR order
    np.testing.assert_array_equal(back_pos, np.asarray(positions)[order])
    np.testing.assert_array_equal(back, np.asarray(data)[order])
    again, again_mask = _to_dense(back, back_pos, shape)
    np.testing.assert_array_equal(again, kernel)
    np.testing.assert_array_equal(again_mask, mask)


_to_dense = jax.jit(topology.to_masked_dense, static_argnums=2)
_from_dense = jax.jit(topology.from_masked_dense, static_argnums=(2, 3))


def test_masks_that_are_not_whole_blocks_are_one_line():
    mask = jnp.zeros((4, 4), bool).at[0, 0].set(True)
    with pytest.raises(ValueError, match=r"block_size=\(2, 2\): the mask is not made of whole"):
        topology.from_masked_dense(jnp.ones((4, 4)), mask, (2, 2))


@settings(max_examples=30, deadline=None)
@given(
    case=st.sampled_from([(12, 5), (30, 9), (6, 5)]), seed=st.integers(0, 2**31 - 1), data=st.data()
)
def test_moves_keep_kept_slots_and_place_every_grown_block(case, seed, data):
    rng = np.random.default_rng(seed)
    units, nnz = case
    positions = rng.permutation(units)[:nnz]
    k = data.draw(st.integers(0, nnz))
    dropped = rng.permutation(nnz)[:k]
    kept = np.zeros(units, bool)
    kept[np.delete(positions, dropped)] = True
    free = np.flatnonzero(~kept)  # grow among all blocks not kept (a dropped one may return)
    grown = np.zeros(units, bool)
    grown[rng.permutation(free)[:k]] = True
    new, freed = _move(jnp.asarray(positions, jnp.int32), kept, grown)
    new, freed = np.asarray(new), np.asarray(freed)
    np.testing.assert_array_equal(freed, ~kept[positions])
    np.testing.assert_array_equal(new[~freed], positions[~freed])  # kept blocks never move
    assert sorted(new.tolist()) == sorted(np.flatnonzero(kept | grown).tolist())


_move = jax.jit(topology.move)


def test_compressed_layer_refuses_raw_blocks_after_init():
    model = BlockMLP(hidden=(32,), block_size=BLOCK, density=0.25, compressed=True)
    x = jnp.zeros((2, 64))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert params["block_0"]["kernel"].shape == (2, BLOCK, BLOCK)  # round(0.25 * 8) blocks
    with pytest.raises(ValueError, match="apply the model with sj.forward_params"):
        model.apply({"params": params}, x)


def test_layer_counts_that_disagree_with_the_sparsity_are_one_line():
    model = BlockMLP(hidden=(32,), block_size=BLOCK, density=0.25, compressed=True)
    x = jnp.zeros((1, 64))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    dense_like = jax.eval_shape(model.clone(compressed=False).init, jax.random.PRNGKey(0), x)
    kw = dict(sparsity=0.5, block_size=(BLOCK, BLOCK), distribution="uniform", dense_last=True)
    algo = kp.compressed_algorithm(sj.static, dense_like["params"], **kw)
    with pytest.raises(ValueError, match=r"sparsity=0.5 keeps 4 of the 8 blocks of leaf block_0/k"):
        sj.sparsify(optax.sgd(0.1), algo).init(params)
    with pytest.raises(ValueError, match="algorithm='gmp': compressed layers keep a constant"):
        kp.compressed_algorithm(sj.gmp, dense_like["params"], num_steps=10, **kw)
    with pytest.raises(ValueError, match="block_size=None"):
        kp.compressed_algorithm(sj.static, dense_like["params"], sparsity=0.5)
    # dense_like of another model (leaf names differ): one line.
    other = {"layer": dense_like["params"]["block_0"], "head": dense_like["params"]["head"]}
    algo = kp.compressed_algorithm(sj.static, other, **{**kw, "sparsity": 0.75})
    with pytest.raises(ValueError, match="dense_like: not the params tree of this model"):
        sj.sparsify(optax.sgd(0.1), algo).init(params)
