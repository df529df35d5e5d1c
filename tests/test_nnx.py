"""Flax NNX through ``sparsejax.nnx``: every registered algorithm trains an NNX MLP exactly as its linen twin.

- for every algorithm in the registry (a newly registered one included), an ``nnx.Module`` MLP trained
  with ``nnx.Optimizer`` under ``nnx.jit`` / ``sjnnx.value_and_grad`` and a linen MLP with the same
  initial weights, data (real digits) and optimizer hold the same masks and params after each of 50 steps;
- on the NNX path the core's invariants hold: exact counts, weights exactly 0 outside the masks for
  masked-dense methods (from the first forward on), valid N:M groups in the forward weights;
- ``wrt`` filters, names without ``/value`` in every report, an orbax round trip of model + optimizer
  state that resumes bit-identically, and masks sharded like their params on 8 host devices.
"""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
import tempfile
import textwrap

import flax.linen as nn
import hypothesis.strategies as hs
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from _subprocess import ROOT, device_env, run_script
from flax import nnx
from hypothesis import given, settings
from sklearn.datasets import load_digits

import experiments.tickets  # noqa: F401  (registers lottery_ticket: covered like every algorithm)
import sparsejax as sj
import sparsejax.nnx as sjnnx
from sparsejax.selection import path_str

STEPS, BATCH, S = 50, 64, 0.8
SCHEDULE = {"update_every": 5, "end_step": 30}  # every mask schedule ends well before step 50
# Construction arguments per registered algorithm (short schedules: 50 steps cover mask updates, the
# end of every decay and SPDF's release). A registered algorithm missing here is built with its
# defaults (plus num_steps=50 where it takes one) and checked all the same: nothing is skipped.
KWARGS = {
    "dense": {},
    "static": {"sparsity": S, "distribution": "erk"},
    "snip": {"sparsity": S},
    "set": {"sparsity": S, "distribution": "erk", **SCHEDULE},
    "rigl": {"sparsity": S, "distribution": "erk", **SCHEDULE},
    "gmp": {"sparsity": S, "distribution": "uniform", **SCHEDULE},
    "global_magnitude": {"sparsity": S, **SCHEDULE},
    "granet": {"sparsity": S, "initial_sparsity": 0.5, "distribution": "uniform", **SCHEDULE},
    "spdf": {"sparsity": S, "sparse_phase": "rigl", "release_step": 25, "update_every": 5},
    "ste": {"n": 2, "m": 4},
    "sr_ste": {"n": 2, "m": 4},
    "pgf": {"n": 1, "m": 8, "end_step": 25, "pgf_coef": 0.02},
    "maskllm": {"n": 2, "m": 4, "end_step": 30},
    # plus masks_file: a ticket of the MLP's (see ticket_file)
    "lottery_ticket": {"record_rewind": True, "rewind_step": 10},
}
# What the masks hold after the last step: per leaf round((1 - s_leaf) * size) at the distribution's
# per-leaf sparsities, the same total over all sparsified leaves (global thresholds), or everything.
FINAL_COUNTS = {
    "static": "per_leaf",
    "set": "per_leaf",
    "rigl": "per_leaf",
    "gmp": "per_leaf",
    "granet": "per_leaf",
    "snip": "global",
    "global_magnitude": "global",
    "spdf": "all",
}
CONSTANT_COUNTS = {"static", "set", "rigl", "snip", "lottery_ticket"}  # from the first update on


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10, name="l2")(jax.nn.relu(nn.Dense(32, name="l1")(x)))


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def nnx_loss(model, x, y):
    return xent(model(x), y)


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Eight batches of real 8x8 digits (scikit-learn's, scaled to [0, 1])."""
    data = load_digits()
    n = 8 * BATCH
    return (data.data[:n] / 16.0).astype(np.float32), data.target[:n].astype(np.int32)


def batch(t: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = digits()
    i = (t % 8) * BATCH
    return x[i : i + BATCH], y[i : i + BATCH]


@functools.cache
def ticket_file() -> str:
    """A lottery ticket for the MLP: an ``sj.save_masks`` snapshot of 80% magnitude masks of its
    initial weights (keyed ``l1/kernel``, ``l2/kernel``: the same for NNX and linen)."""
    initial = nnx.to_pure_dict(nnx.state(NnxMLP(nnx.Rngs(0)), nnx.Param))
    algo = sj.static(S, distribution="uniform", init="magnitude")
    path = os.path.join(tempfile.mkdtemp(prefix="nnx_ticket_"), "ticket.npz")
    sj.save_masks(path, sj.masks_of(algo.init(initial)))
    return path


@functools.cache
def build(name: str) -> sj.SparseAlgorithm:
    """The registered algorithm ``name`` with the arguments above (one instance per name, so that
    tests sharing it share its compiled steps)."""
    ctor, kwargs = sj.ALGORITHMS[name], dict(KWARGS.get(name, {}))
    params = inspect.signature(ctor).parameters
    if "num_steps" in params:
        kwargs.setdefault("num_steps", STEPS)
    if "masks_file" in params:
        kwargs.setdefault("masks_file", ticket_file())
    return ctor(**kwargs)


@functools.cache
def sparse_tx(name: str) -> optax.GradientTransformationExtraArgs:
    return sj.sparsify(optax.adam(1e-2), build(name))


@nnx.jit
def nnx_step(model, opt, x, y):
    loss, (grads, algo_grads) = sjnnx.value_and_grad(nnx_loss)(model, opt, x, y)
    opt.update(model, grads, algo_grads=algo_grads)
    return loss, sjnnx.forward_params(model, opt)


def flat(tree) -> dict[str, np.ndarray]:
    """``{name: array}`` of the array leaves (dense markers dropped)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=sj.is_dense)[0]
    return {path_str(p): np.asarray(x) for p, x in leaves if not sj.is_dense(x)}


@functools.cache
def nnx_setup(name: str):
    """``sjnnx.sparse_optimizer``'s two calls with the one shared transform (so tests share the compiled
    step), under ``nnx.jit``: eagerly, every op of the mask initialisation would compile on its own."""

    def setup(model):
        opt = nnx.Optimizer(model, sparse_tx(name), wrt=nnx.Param)
        if build(name).hard:
            sjnnx.mask_model(model, opt)
        return opt

    return nnx.jit(setup)


def make_nnx(name: str) -> tuple[NnxMLP, nnx.Optimizer]:
    """A fresh NNX MLP and its optimizer (see :func:`nnx_setup`)."""
    model = NnxMLP(nnx.Rngs(0))
    return model, nnx_setup(name)(model)


def run_nnx(name: str) -> tuple[dict, list[tuple[dict, dict, dict]]]:
    """The NNX run: initial params, then (params, masks, forward weights) after every step."""
    initial = nnx.to_pure_dict(nnx.state(NnxMLP(nnx.Rngs(0)), nnx.Param))
    model, opt = make_nnx(name)
    if build(
        name
    ).hard:  # the very first forward is sparse already: plain model(x) == forward weights
        x, _ = batch(0)
        with sjnnx.forward_weights(model, opt):
            sparse_out = model(x)
        np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(sparse_out))
    trace = []
    for t in range(STEPS):
        _, fwd = nnx_step(model, opt, *batch(t))
        trace.append((flat(sjnnx.params_of(model)), flat(sjnnx.masks_of(opt)), flat(fwd)))
    return initial, trace


def run_linen(name: str, initial: dict) -> list[tuple[dict, dict]]:
    """The linen run from the same initial params (masked for masked-dense methods, as README says)."""
    model, tx, algo = LinenMLP(), sparse_tx(name), build(name)

    @jax.jit
    def step(params, state, x, y):
        def loss_fn(p, s, x, y):
            return xent(model.apply({"params": sj.forward_params(p, s)}, x), y)

        _, (grads, algo_grads) = sj.value_and_grad(loss_fn)(params, state, x, y)
        updates, state = tx.update(grads, state, params, algo_grads=algo_grads)
        return optax.apply_updates(params, updates), state

    params = jax.tree.map(jnp.asarray, initial)
    state = jax.jit(tx.init)(params)
    if algo.hard:
        params = sj.apply_masks(params, sj.masks_of(state))
    trace = []
    for t in range(STEPS):
        params, state = step(params, state, *batch(t))
        trace.append((flat(params), flat(sj.masks_of(state))))
    return trace


def expected_counts(name: str, initial: dict) -> dict[str, int] | None:
    kind, kw = FINAL_COUNTS.get(name), KWARGS.get(name, {})
    sizes = {k: v.size for k, v in flat(initial).items() if v.ndim >= 2}
    if kind == "per_leaf":
        spars = sj.leaf_sparsities(initial, S, kw["distribution"])
        return {k: round((1 - s) * sizes[k]) for k, s in spars.items()}
    if kind == "global":
        return {"total": round((1 - S) * sum(sizes.values()))}
    return sizes if kind == "all" else None


def check_nm(name: str, t: int, masks: dict, fwd: dict) -> None:
    """N:M: exactly n actives per group of m along the input axis; from the end of any decay on, the
    forward weights are the dense weights on the mask and exactly 0 off it (so at most n per group)."""
    kw = KWARGS[name]
    n, m = kw["n"], kw["m"]
    for leaf, mask in masks.items():
        groups = mask.reshape(-1, m, mask.shape[-1])
        assert (groups.sum(axis=1) == n).all(), (name, t, leaf)
        if t + 1 >= kw.get("end_step", 0):
            assert not fwd[leaf][~mask].any(), (name, t, leaf, "forward nonzero off the mask")
            nonzero = (fwd[leaf] != 0).reshape(-1, m, mask.shape[-1]).sum(axis=1)
            assert (nonzero <= n).all(), (name, t, leaf)


@pytest.mark.parametrize("name", sorted(sj.ALGORITHMS))
def test_nnx_trains_as_linen(name):
    algo = build(name)
    initial, nnx_trace = run_nnx(name)
    linen_trace = run_linen(name, initial)
    counts0 = None
    for t, ((p, masks, fwd), (lp, lmasks)) in enumerate(zip(nnx_trace, linen_trace)):
        assert masks.keys() == lmasks.keys() and p.keys() == lp.keys(), (name, t)
        for leaf in masks:
            np.testing.assert_array_equal(masks[leaf], lmasks[leaf], err_msg=f"{name} {t} {leaf}")
        for leaf in p:
            np.testing.assert_allclose(
                p[leaf], lp[leaf], rtol=1e-6, atol=1e-7, err_msg=f"{name} {t}"
            )
        if algo.hard:  # exactly 0 outside the masks, in the model itself and its forward weights
            for leaf, mask in masks.items():
                assert not p[leaf][~mask].any() and not fwd[leaf][~mask].any(), (name, t, leaf)
        if "n" in KWARGS.get(name, {}) and "m" in KWARGS.get(name, {}):
            check_nm(name, t, masks, fwd)
        counts = {leaf: int(mask.sum()) for leaf, mask in masks.items()}
        if name in CONSTANT_COUNTS:
            assert counts == (counts0 := counts0 or counts), (name, t)
    want = expected_counts(name, initial)
    if want is not None:
        got = counts if "total" not in want else {"total": sum(counts.values())}
        assert got == want, (name, got, want)
    assert name == "dense" or masks, f"{name}: no sparsified leaf"


def test_kwargs_name_registered_algorithms():
    assert set(KWARGS) <= set(sj.ALGORITHMS) and set(FINAL_COUNTS) <= set(KWARGS)


def test_import_sparsejax_leaves_nnx_unimported():
    code = "import sys, sparsejax; assert 'flax.nnx' not in sys.modules, 'flax.nnx'; print('OK')"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=device_env(1), capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.split() == ["OK"], out.stderr[-2000:]


def test_wrt_filter_sparsifies_only_the_chosen_variables():
    model = NnxMLP(nnx.Rngs(1))
    before = flat(sjnnx.params_of(model))
    wrt = nnx.All(nnx.Param, nnx.PathContains("l2"))
    opt = sjnnx.sparse_optimizer(model, optax.sgd(0.1), sj.static(0.75), wrt=wrt)
    for t in range(3):
        nnx_step(model, opt, *batch(t))
    after, masks = flat(sjnnx.params_of(model)), flat(sjnnx.masks_of(opt))
    assert list(masks) == ["l2/kernel"] and masks["l2/kernel"].mean() == 0.25
    assert not after["l2/kernel"][~masks["l2/kernel"]].any()
    assert (after["l2/kernel"] != before["l2/kernel"]).any()
    for leaf in before:  # outside wrt: neither masked nor trained
        if not leaf.startswith("l2/"):
            np.testing.assert_array_equal(after[leaf], before[leaf])
    with pytest.raises(ValueError, match=r"^wrt=.*allowed: the filter the nnx.Optimizer"):
        sjnnx.forward_params(model, opt.opt_state, wrt=nnx.Param)


def test_forward_weights_restore_the_dense_weights():
    model = NnxMLP(nnx.Rngs(2))
    algo = sj.ste(n=2, m=4, overrides={"l2/kernel$": 0.0})  # init sees NNX names without /value
    opt = sjnnx.sparse_optimizer(model, optax.adam(1e-3), algo, wrt=nnx.Param)
    assert list(flat(sjnnx.masks_of(opt))) == ["l1/kernel"]
    dense = flat(sjnnx.params_of(model))
    assert all(v.all() for k, v in dense.items() if k.endswith("kernel"))  # STE: nothing masked
    with pytest.raises(RuntimeError, match="inside"):
        with sjnnx.forward_weights(model, opt):
            inside = flat(sjnnx.params_of(model))
            raise RuntimeError("inside")
    masks = flat(sjnnx.masks_of(opt))
    for leaf, w in flat(sjnnx.params_of(model)).items():
        np.testing.assert_array_equal(w, dense[leaf])
        want = np.where(masks[leaf], w, 0) if leaf in masks else w
        np.testing.assert_array_equal(inside[leaf], want)


@settings(max_examples=25, deadline=None)
@given(
    hs.dictionaries(
        hs.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
        hs.integers(1, 3),
        min_size=1,
        max_size=4,
    )
)
def test_boxed_and_plain_trees_have_the_same_names(layers):
    state = nnx.State(
        {
            k: {"kernel": nnx.Param(jnp.ones((d, 2))), "bias": nnx.Param(jnp.ones(2))}
            for k, d in layers.items()
        }
    )
    boxed, plain = sj.summarize(state), sj.summarize(nnx.as_pure(state))
    assert boxed == plain and set(boxed["leaves"]) == {
        f"{k}/{w}" for k in layers for w in ("kernel", "bias")
    }


def test_reports_take_nnx_names(tmp_path):
    """summarize, save_masks, metrics and the viz functions see ``l1/kernel``, as for linen."""
    from sparsejax import viz

    model = NnxMLP(nnx.Rngs(3))
    algo = sj.set_sparse(0.8, update_every=2, end_step=6)
    opt = sjnnx.sparse_optimizer(model, optax.adam(1e-2), algo, wrt=nnx.Param, track_metrics=True)
    linen = LinenMLP().init(jax.random.PRNGKey(0), batch(0)[0])["params"]
    want = set(sj.summarize(sj.masks_of(sj.sparsify(optax.sgd(1.0), algo).init(linen)))["leaves"])
    assert want == {"l1/kernel", "l2/kernel"}
    assert set(sj.summarize(sjnnx.masks_of(opt))["leaves"]) == want
    assert set(sj.summarize(sj.masks_of(opt.opt_state))["leaves"]) == want  # the boxed state too
    x, y = batch(0)  # masked-dense: the plain NNX gradient is the straight-through one
    plain = flat(nnx.grad(nnx_loss)(model, x, y))
    _, (grads, _) = sjnnx.value_and_grad(nnx_loss)(model, opt, x, y)
    assert plain.keys() == flat(grads).keys()
    for leaf, g in flat(grads).items():
        np.testing.assert_allclose(plain[leaf], g, rtol=1e-6, atol=1e-8, err_msg=leaf)
    first = sjnnx.masks_of(opt)
    (tmp_path / "masks").mkdir()
    for t in range(5):
        nnx_step(model, opt, *batch(t))
        sj.save_masks(tmp_path / "masks" / f"step_{t:07d}.npz", sjnnx.masks_of(opt), step=t)
    assert set(sj.load_masks(tmp_path / "masks" / "step_0000004.npz")["masks"]) == want
    assert int(sj.metrics.sad(first, sjnnx.masks_of(opt))) > 0  # SET moved its masks
    assert 0.2 < float(sj.metrics.itop(sjnnx.sparse_state(opt))) <= 1.0
    assert set(sj.metrics.update_counts(sjnnx.sparse_state(opt))) == {"dropped", "grown", "sad"}
    run = viz.read_workdir(tmp_path)
    assert set(run.masks(4)) == want
    assert viz.plot_mask_heatmap(run, leaf="l2/kernel").axes
    flops = sjnnx.forward_flops(model, opt, batch(0)[0])
    masks = sjnnx.masks_of(opt)
    linen_flops = sj.metrics.forward_flops(
        lambda p, x: LinenMLP().apply({"params": p}, x), linen, batch(0)[0], masks=masks
    )
    assert flops == linen_flops and 0.15 < flops["ratio"] < 0.25


@pytest.mark.parametrize("name", ["rigl", "maskllm"])
def test_orbax_round_trip_resumes_bit_identically(name, tmp_path):
    model, opt = make_nnx(name)
    for t in range(7):
        nnx_step(model, opt, *batch(t))
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(7, args=ocp.args.StandardSave(nnx.state((model, opt))))
        manager.wait_until_finished()
        abstract = nnx.eval_shape(lambda: make_nnx(name))
        restored = manager.restore(7, args=ocp.args.StandardRestore(nnx.state(abstract)))
    nnx.update(abstract, restored)
    r_model, r_opt = abstract
    saved, back = flat(nnx.state((model, opt))), flat(nnx.state((r_model, r_opt)))
    assert saved.keys() == back.keys() and any(v.dtype == bool for v in back.values())
    for leaf in saved:
        assert saved[leaf].dtype == back[leaf].dtype, leaf
        np.testing.assert_array_equal(saved[leaf], back[leaf], err_msg=leaf)
    for t in range(7, 14):  # mask updates at 10 (rigl); maskllm's logits keep learning
        nnx_step(model, opt, *batch(t))
        nnx_step(r_model, r_opt, *batch(t))
    done, resumed = flat(nnx.state((model, opt))), flat(nnx.state((r_model, r_opt)))
    for leaf in done:
        np.testing.assert_array_equal(done[leaf], resumed[leaf], err_msg=leaf)


SHARDED = textwrap.dedent(
    """
    import sys
    import jax, numpy as np, optax
    from flax import nnx
    import sparsejax as sj, sparsejax.nnx as sjnnx
    sys.path.insert(0, "tests")
    from test_nnx import batch, flat, nnx_step

    assert jax.device_count() == 8, jax.devices()
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=auto)
    one = jax.make_mesh((1, 1), ("data", "model"), axis_types=auto, devices=jax.devices()[:1])
    init = nnx.initializers.lecun_normal()


    class Sharded(nnx.Module):
        def __init__(self, rngs):
            part = lambda names: nnx.with_partitioning(init, names)
            self.l1 = nnx.Linear(64, 32, kernel_init=part((None, "model")), rngs=rngs)
            self.l2 = nnx.Linear(32, 10, kernel_init=part(("model", None)), rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))


    def check(model, opt, where):  # every mask lies like its (sharded, not replicated) param
        masks = sj.masks_of(opt.opt_state)
        for leaf in ("l1", "l2"):
            w, m = getattr(model, leaf).kernel[...], masks[leaf]["kernel"][...]
            assert not w.sharding.is_fully_replicated, (where, leaf, w.sharding)
            assert m.sharding.is_equivalent_to(w.sharding, 2), (where, leaf, m.sharding, w.sharding)


    # RigL: mask updates under lax.cond; SR-STE: masks refreshed from the weights every step.
    # Both keep every mask sharded; SR-STE's run also equals the single-device one.
    for algo, compare in ((sj.rigl(0.8, update_every=2, end_step=6), False), (sj.sr_ste(2, 4), True)):
        finals = []
        for m in (mesh, one) if compare else (mesh,):
            with jax.set_mesh(m):
                model = Sharded(nnx.Rngs(0))  # created sharded (eager sharding), set up under jit
                setup = lambda model: sjnnx.sparse_optimizer(model, optax.adam(1e-2), algo, wrt=nnx.Param)
                opt = nnx.jit(setup)(model)
                for t in range(4):
                    if m is mesh:
                        check(model, opt, (algo.name, t))
                    nnx_step(model, opt, *batch(t))
                if m is mesh:
                    check(model, opt, (algo.name, "end"))
                finals.append((flat(sjnnx.params_of(model)), flat(sjnnx.masks_of(opt))))
        if compare:  # the sharded run trains as the single-device one
            (p, ms), (p1, ms1) = finals
            assert ms.keys() == ms1.keys() == {"l1/kernel", "l2/kernel"}
            for leaf in ms:
                np.testing.assert_array_equal(ms[leaf], ms1[leaf])
            for leaf in p:
                np.testing.assert_allclose(p[leaf], p1[leaf], rtol=1e-5, atol=1e-6)
    print("OK")
    """
)


def test_sharded_masks_follow_their_params_on_8_devices():
    run_script(SHARDED, devices=8, timeout=300)
