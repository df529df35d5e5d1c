"""Autotuning: a tiny sweep on CPU is cached as JSON keyed by problem and device and used by auto."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import autotune, block_sparse_matmul, dispatch

pytestmark = pytest.mark.xdist_group("kernels_autotune")


def test_tune_caches_and_auto_uses_it(tmp_path, monkeypatch):
    cache = tmp_path / "sub" / "tune.json"
    monkeypatch.setenv(autotune.ENV_VAR, str(cache))
    problem = dict(m=16, shape=(64, 64), block_shape=(16, 16), nnz=4, dtype=jnp.float32)
    entry = autotune.tune(**problem, reps=1)
    assert cache.exists() and autotune.cache_path() == cache
    assert {entry["fwd"], entry["dx"], entry["dw"]} <= {"xla", "dense"}
    assert set(entry["times_ms"]["fwd"]) == {"xla", "dense"}
    table = json.loads(cache.read_text())
    (key,) = table
    assert key.startswith(f"{autotune.device_kind()}|float32|16x64x64|b16x16|d0.2500")
    assert autotune.lookup(**problem) == entry

    # auto follows the cached decision: force a choice and check the plan.
    table[key].update(fwd="xla", dx="dense", dw="xla", max_chunk=2, batch=1)
    cache.write_text(json.dumps(table))
    autotune.clear_memory_cache()
    plan = dispatch.make_plan(16, (64, 64), (16, 16), 4, jnp.float32)
    assert (plan.fwd, plan.dx, plan.dw) == ("xla", "dense", "xla")
    assert (plan.xla.max_chunk, plan.xla.batch) == (2, 1)
    x, _, w = autotune.random_problem(16, (64, 64), (16, 16), 4, jnp.float32)
    np.testing.assert_allclose(
        np.asarray(block_sparse_matmul(x, w)), np.asarray(x @ w.to_dense()), atol=1e-4
    )

    cache.write_text("{not json")  # a corrupt cache only loses tuning
    autotune.clear_memory_cache()
    assert autotune.lookup(**problem) is None
