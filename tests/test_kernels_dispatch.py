"""impl="auto": the CPU cost model's choices, its chunk statistics, the cache overriding it, odd cases."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels_pallas import autotune, cpu_cost, dispatch
from kernels_pallas.testing import assert_matches

pytestmark = pytest.mark.xdist_group("kernels_dispatch")

# The measured shapes (benchmarks/results/auto_dispatch_cpu.md): (M, (K, N)).
MEASURED = [(2048, (2048, 2048)), (256, (2048, 2048)), (1568, (384, 1536)), (1568, (1536, 384))]


def _nnz(shape, block, density):
    return max(1, round(density * (shape[0] // block) * (shape[1] // block)))


def _plan(m, shape, block, nnz, **kw):
    return dispatch.make_plan(m, shape, (block, block), nnz, jnp.float32, use_cache=False, **kw)


@pytest.mark.parametrize("m,shape", MEASURED)
@pytest.mark.parametrize("block", [64, 128])
def test_sparse_at_high_sparsity_dense_when_nearly_dense(m, shape, block):
    sparse = _plan(m, shape, block, _nnz(shape, block, 0.05))
    dense = _plan(m, shape, block, _nnz(shape, block, 0.95))
    assert (sparse.fwd, sparse.dx, sparse.dw) == ("xla", "xla", "xla")
    assert (dense.fwd, dense.dx, dense.dw) == ("dense", "dense", "dense")


def test_small_blocks_need_more_sparsity():
    """32-blocks lose to dense at 50% on this CPU; 128-blocks still win at 75%."""
    big = (2048, (2048, 2048))
    assert _plan(*big, 32, _nnz(big[1], 32, 0.5)).fwd == "dense"
    assert _plan(*big, 128, _nnz(big[1], 128, 0.25)).fwd == "xla"


@settings(max_examples=40, deadline=None)
@given(
    case=st.sampled_from(MEASURED),
    block=st.sampled_from([32, 64, 128]),
    op=st.sampled_from(cpu_cost.OPS),
)
def test_choice_switches_once_along_density(case, block, op):
    """More stored blocks never make the XLA path more attractive: one switch, xla -> dense."""
    m, shape = case
    total = (shape[0] // block) * (shape[1] // block)
    picks = [cpu_cost.prefers_xla(op, m, shape, (block, block), nnz) for nnz in range(1, total + 1)]
    switches = sum(a != b for a, b in zip(picks, picks[1:]))
    assert switches <= 1 and (picks[0] or not any(picks))
    times = [cpu_cost.model_seconds(op, m, shape, (block, block), nnz)[0] for nnz in (1, total)]
    assert 0 < times[0] < times[1]


@pytest.mark.parametrize("groups,slots,max_chunk", [(4, 6, 8), (3, 17, 8), (5, 9, 2)])
def test_expected_chunks_matches_random_topologies(groups, slots, max_chunk):
    """The hypergeometric expectation against the mean over many uniformly random topologies."""
    rng = np.random.default_rng(0)
    total = groups * slots
    for nnz in (1, total // 3, total // 2, total - 1):
        counts = np.zeros((4000, groups), int)
        for i in range(len(counts)):
            chosen = rng.choice(total, nnz, replace=False) // slots
            counts[i] = np.bincount(chosen, minlength=groups)
        per_draw = np.vectorize(lambda c: cpu_cost.chunk_count(int(c), max_chunk))(counts).sum(1)
        expected = cpu_cost.expected_chunks(groups, slots, nnz, max_chunk)
        sem = per_draw.std() / np.sqrt(len(per_draw)) + 1e-9
        assert abs(per_draw.mean() - expected) < 5 * sem, (nnz, per_draw.mean(), expected)
    assert cpu_cost.expected_chunks(groups, slots, 0, max_chunk) == 0
    full = groups * cpu_cost.chunk_count(slots, max_chunk)
    assert cpu_cost.expected_chunks(groups, slots, total, max_chunk) == pytest.approx(full)


def test_chunk_count_is_the_binary_decomposition():
    assert [cpu_cost.chunk_count(n, 8) for n in (0, 1, 7, 8, 11, 16, 23)] == [0, 1, 3, 1, 3, 2, 5]


def test_cache_overrides_the_model(tmp_path, monkeypatch):
    cache = tmp_path / "tune.json"
    monkeypatch.setenv(autotune.ENV_VAR, str(cache))
    shape, block, m = (2048, 2048), (128, 128), 2048
    nnz = _nnz(shape, 128, 0.05)
    assert _plan(m, shape, 128, nnz).fwd == "xla"
    key = autotune.make_key(m, shape, block, nnz, jnp.float32)
    cache.write_text(json.dumps({key: {"fwd": "dense", "dx": "xla", "dw": "dense"}}))
    autotune.clear_memory_cache()
    plan = dispatch.make_plan(m, shape, block, nnz, jnp.float32)
    assert (plan.fwd, plan.dx, plan.dw) == ("dense", "xla", "dense")
    assert _plan(m, shape, 128, nnz).fwd == "xla"  # use_cache=False: the model again
    # Another problem (a different block count) is not affected by the entry.
    assert dispatch.make_plan(m, shape, block, nnz + 1, jnp.float32).fwd == "xla"


def test_mixed_plan_from_the_cache_is_exact(tmp_path, monkeypatch):
    """A per-product mix (XLA forward, dense dX, XLA dW) matches the dense reference."""
    from kernels_pallas.testing import CASES, make_case

    x, w = make_case("random_empty_lines")
    m, k, n, bk, bn, _ = CASES["random_empty_lines"]
    cache = tmp_path / "tune.json"
    monkeypatch.setenv(autotune.ENV_VAR, str(cache))
    key = autotune.make_key(m, (k, n), (bk, bn), w.nnz, jnp.float32)
    cache.write_text(json.dumps({key: {"fwd": "xla", "dx": "dense", "dw": "xla", "max_chunk": 2}}))
    autotune.clear_memory_cache()
    plan = dispatch.make_plan(m, (k, n), (bk, bn), w.nnz, jnp.float32)
    assert (plan.fwd, plan.dx, plan.dw, plan.xla.max_chunk) == ("xla", "dense", "xla", 2)
    assert_matches(x, w, 1e-5, impl="auto")


@pytest.mark.parametrize(
    "m,shape,block_shape,density,expect",
    [
        (2048, (2048, 2048), (128, 128), 1.0, "dense"),  # every block stored
        (2048, (2048, 2048), (16, 16), 0.5, "dense"),  # tiny blocks, below the fitted classes
        (2048, (4096, 4096), (256, 256), 0.05, "xla"),  # large blocks, above them
        (512, (1024, 2048), (32, 64), 0.02, "xla"),  # rectangular blocks
    ],
)
def test_odd_cases(m, shape, block_shape, density, expect):
    nnz = max(1, round(density * (shape[0] // block_shape[0]) * (shape[1] // block_shape[1])))
    plan = dispatch.make_plan(m, shape, block_shape, nnz, jnp.float32, use_cache=False)
    assert plan.fwd == plan.dx == plan.dw == expect


def test_single_row_is_exact_whatever_auto_picks():
    x, _, w = autotune.random_problem(1, (64, 96), (16, 32), 3, jnp.float32)
    assert_matches(x, w, 1e-5, impl="auto")


def test_unknown_product_is_rejected():
    with pytest.raises(ValueError, match="op must be one of"):
        cpu_cost.features("dy", 8, (64, 64), (16, 16), 2)
