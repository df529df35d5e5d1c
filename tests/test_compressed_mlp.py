"""The fused compressed MLP block (``kernels_pallas.compressed_mlp``): only the hidden panels fc2 reads.

- for random topologies (fc2 blocks sharing rows, fc1 blocks whose outputs are dead, padding panels),
  the output and every gradient (x, both layers' blocks and biases, RigL's probes when scoring, zero
  probes otherwise) equal the two layers applied one after the other;
- a compiled train step of the fused block never holds a (tokens, mlp_dim) buffer on its normal path:
  the dead hidden units are not computed (the unfused block holds the whole hidden layer);
- where every panel is read (50%) or the impl is not an XLA one, the block runs unfused.
"""

from __future__ import annotations

import functools

import flax.linen as nn
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
from experiments.models.block_mlp import LayerSpec
from experiments.models.block_vit import mlp_block
from kernels_pallas import compressed_mlp
from kernels_pallas.compressed import CompressedWeight
from kernels_pallas.compressed_mlp import CompressedBlockMLP, can_fuse, fused_mlp

# x (2, 5, 32) -> 128 hidden -> 24 outputs; fc1 blocks 16 x 8 (grid 2 x 16), fc2 blocks 8 x 8 (16 x 3).
LEAD, DIM, MLP, OUT = (2, 5), 32, 128, 24
BLOCK1, BLOCK2 = (16, 8), (8, 8)
GRID1, GRID2 = (DIM // 16, MLP // 8), (MLP // 8, OUT // 8)


def _value_and_grads_of(fuse, x, d1, b1, d2, b2, probes, positions, scoring, r):
    """<r, block(x)> and its gradients in x, blocks, biases and probes: fused or layer by layer."""

    def loss(x, d1, b1, d2, b2, probes):
        w1 = CompressedWeight(d1, positions[0], probes[0], scoring, (DIM, MLP))
        w2 = CompressedWeight(d2, positions[1], probes[1], scoring, (MLP, OUT))
        if fuse:
            y = fused_mlp(x, w1, b1, w2, b2, nn.gelu)
        else:
            h = nn.gelu(kp.compressed_matmul(x, w1, impl="xla") + b1)
            y = kp.compressed_matmul(h, w2, impl="xla") + b2
        return jnp.sum(y * r)

    return jax.value_and_grad(loss, argnums=tuple(range(6)))(x, d1, b1, d2, b2, probes)


_value_and_grads = jax.jit(_value_and_grads_of, static_argnums=0)


def _slots(rng, grid, block, nnz):
    positions = jnp.asarray(rng.permutation(grid[0] * grid[1])[:nnz], jnp.int32)
    return jnp.asarray(rng.standard_normal((nnz, *block)), jnp.float32), positions


@settings(max_examples=20, deadline=None)
@given(
    nnz1=st.sampled_from([1, 5, 12]),
    nnz2=st.sampled_from([1, 4, 15]),
    seed=st.integers(0, 2**31 - 1),
    scoring=st.booleans(),
)
def test_fused_block_equals_its_layers_in_value_and_every_gradient(nnz1, nnz2, seed, scoring):
    rng = np.random.default_rng(seed)
    (d1, p1), (d2, p2) = _slots(rng, GRID1, BLOCK1, nnz1), _slots(rng, GRID2, BLOCK2, nnz2)
    w1 = CompressedWeight(d1, p1, None, None, (DIM, MLP))
    assert can_fuse(w1, CompressedWeight(d2, p2, None, None, (MLP, OUT)))
    x = jnp.asarray(rng.standard_normal((*LEAD, DIM)), jnp.float32)
    b1, b2 = (jnp.asarray(rng.standard_normal(n), jnp.float32) for n in (MLP, OUT))
    r = jnp.asarray(rng.standard_normal((*LEAD, OUT)), jnp.float32)
    probes = (jnp.zeros(GRID1), jnp.zeros(GRID2))
    args = (x, d1, b1, d2, b2, probes, (p1, p2), jnp.asarray(scoring), r)
    (v_f, g_f), (v_u, g_u) = _value_and_grads(True, *args), _value_and_grads(False, *args)
    np.testing.assert_allclose(v_f, v_u, rtol=1e-5, atol=1e-4)
    names = ("x", "fc1 blocks", "fc1 bias", "fc2 blocks", "fc2 bias", "probes")
    for name, a, b in zip(names, g_f, g_u, strict=True):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4, err_msg=name)
    fc1_probe, fc2_probe = g_f[5]
    if scoring:  # RigL's grow scores: some dense-gradient block of each layer is nonzero
        assert float(jnp.max(fc2_probe)) > 0 and float(jnp.max(fc1_probe)) > 0
    else:
        assert not jnp.any(fc1_probe) and not jnp.any(fc2_probe)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_fused_block_lowers_for_accelerators(platform):
    """The fused block and its gradients (probes, scoring branch included) export for CUDA and TPU:
    plain XLA (gathers, batched dots, scatters, ``lax.cond``), no CPU-only op."""
    rng = np.random.default_rng(0)
    (d1, p1), (d2, p2) = _slots(rng, GRID1, BLOCK1, 5), _slots(rng, GRID2, BLOCK2, 4)
    x, r = jnp.ones((*LEAD, DIM)), jnp.ones((*LEAD, OUT))
    probes = (jnp.zeros(GRID1), jnp.zeros(GRID2))
    args = (x, d1, jnp.ones(MLP), d2, jnp.ones(OUT), probes, (p1, p2), jnp.asarray(True), r)
    fn = jax.jit(functools.partial(_value_and_grads_of, True))
    exported = jax.export.export(fn, platforms=[platform])(*args)
    assert exported.platforms == (platform,) and "stablehlo" in exported.mlir_module()


class _Stack(nn.Module):
    """Two pre-LN block-sparse MLP blocks (16-blocks, 10% kept) on (batch, tokens, dim) and a head:
    compressed (``CompressedBlockMLP``, fused unless ``fuse=False``) or its masked-dense twin."""

    mlp_dim: int
    fuse: bool = True
    compressed: bool = True

    @nn.compact
    def __call__(self, x):
        spec = LayerSpec(16, 0.1, "xla", True, self.compressed)
        for i in range(2):
            block = mlp_block(spec, self.mlp_dim, f"b{i}", fuse=self.fuse)
            x = x + block(nn.LayerNorm(name=f"ln{i}")(x))
        return nn.Dense(10, name="head")(x.mean(axis=1))


def _compiled_step(fuse: bool, batch: int, tokens: int) -> str:
    model = _Stack(MLP, fuse)
    x, y = jnp.zeros((batch, tokens, DIM)), jnp.zeros((batch,), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    twin = _Stack(MLP, compressed=False)
    dense_like = jax.eval_shape(twin.init, jax.random.PRNGKey(0), x)["params"]
    kw = dict(sparsity=0.9, block_size=(16, 16), distribution="uniform", dense_last=True)
    kw.update(update_every=2, end_step=100)
    tx = sj.sparsify(optax.sgd(0.1), kp.compressed_algorithm(sj.rigl, dense_like, **kw))
    state = jax.jit(tx.init)(params)
    step = train_step(model, tx, assume_masked=False)
    return step.lower(params, state, x, y).compile().as_text()


def test_fused_normal_step_never_builds_the_hidden_layer():
    """4 x 32 tokens, 32 -> 128 -> 32 blocks: the hidden layer is 128 x 128; every other array of a
    normal step (x, a dense kernel's size, the 2 hidden panels fc2's 2 blocks read) is 4096 or less."""
    batch, tokens = 4, 32
    hidden = batch * tokens * MLP
    fused, unfused = _compiled_step(True, batch, tokens), _compiled_step(False, batch, tokens)
    assert largest_buffer(reachable(fused, normal_only=True)) < hidden
    # RigL's mask-update branch rebuilds the whole hidden layer for fc2's grow scores.
    assert largest_buffer(reachable(fused, normal_only=False)) >= hidden
    assert largest_buffer(reachable(unfused, normal_only=True)) >= hidden


@pytest.mark.parametrize(
    "density, impl, fuse, options, fused",
    [(0.1, "xla", True, {}, True), (0.1, "auto", True, {}, True), (0.5, "xla", True, {}, False)]
    + [(0.1, "pallas", True, {"interpret": True}, False), (0.1, "xla", False, {}, False)]
    + [(0.1, "xla", True, {"use_bias": False}, False)],
)
def test_block_fuses_only_where_hidden_units_are_dead(
    density, impl, fuse, options, fused, monkeypatch
):
    """ViT-S shapes, 384 -> 1536 -> 384 on 128-blocks: at 10% fc2's 4 blocks read at most 4 of the 12
    hidden panels; at 50% its 18 blocks can read all 12, and the block runs its layers unfused (as
    for a Pallas impl, ``fuse=False`` or layers without biases). The params are the same either way."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return fused_mlp(*args, **kwargs)

    monkeypatch.setattr(compressed_mlp, "fused_mlp", counted)
    kw = dict(block_size=128, density=density, impl=impl, fuse=fuse, layer_options=options)
    module = CompressedBlockMLP(1536, **kw)
    params = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((2, 384)))["params"]
    assert bool(calls) == fused
    nnz = round(density * 36)
    expect = {
        fc: {"kernel": (nnz, 128, 128), "bias": (n,)} for fc, n in (("fc1", 1536), ("fc2", 384))
    }
    if options.get("use_bias") is False:
        expect = {fc: {"kernel": v["kernel"]} for fc, v in expect.items()}
    assert jax.tree.map(lambda p: p.shape, params) == expect
