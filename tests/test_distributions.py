"""Layer-wise distributions: ERK/ER realise the target, never exceed density 1, honour overrides."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.distributions import active_counts, leaf_sparsities


def resnet_like_shapes():
    """ResNet-18-ish kernels in call order plus biases/norms that must stay dense."""
    shapes = {"conv_init": (7, 7, 3, 64)}
    chans = [64, 128, 256, 512]
    cin = 64
    for i, c in enumerate(chans):
        shapes[f"block{i}_a"] = (3, 3, cin, c)
        shapes[f"block{i}_b"] = (3, 3, c, c)
        if cin != c:
            shapes[f"block{i}_proj"] = (1, 1, cin, c)
        cin = c
    shapes["head"] = (512, 1000)
    params = {name: {"kernel": jax.ShapeDtypeStruct(s, jnp.float32)} for name, s in shapes.items()}
    params["head"]["bias"] = jax.ShapeDtypeStruct((1000,), jnp.float32)
    params["bn"] = {"scale": jax.ShapeDtypeStruct((64,), jnp.float32)}
    return params


@pytest.mark.parametrize("dist", ["erk", "er", "uniform"])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_realised_sparsity_matches_target(dist, target):
    params = resnet_like_shapes()
    sp = leaf_sparsities(params, target, dist)
    kernels = {f"{n}/kernel" for n in params if n != "bn"}
    assert set(sp) <= kernels  # 1-D leaves stay dense; ERK may make small leaves dense
    if dist == "uniform":
        assert set(sp) == kernels
    assert all(0.0 <= s < 1.0 for s in sp.values())  # no density above 1
    counts = active_counts(params, sp)
    sizes = {f"{n}/kernel": int(np.prod(params[n]["kernel"].shape)) for n in params if n != "bn"}
    total = sum(sizes.values())
    realised = sum(counts.get(n, sizes[n]) for n in sizes)
    assert abs(realised - (1 - target) * total) <= len(sizes)  # within one weight per leaf


def test_erk_overflowing_leaves_become_dense_not_clipped():
    params = resnet_like_shapes()
    sp = leaf_sparsities(params, 0.5, "erk")
    # The tiny first conv would exceed density 1 at 50%: ERK must make it dense and rescale the rest.
    assert sp["conv_init/kernel"] == 0.0
    sp = {n: s for n, s in sp.items() if s > 0}
    densities = {n: 1 - s for n, s in sp.items()}
    raw = {
        n: sum(params[n.split("/")[0]]["kernel"].shape)
        / np.prod(params[n.split("/")[0]]["kernel"].shape)
        for n in sp
    }
    ratios = [densities[n] / raw[n] for n in sp]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)  # one scale for all scaled leaves


def test_overrides_and_dense_first_last():
    params = resnet_like_shapes()
    sp = leaf_sparsities(
        params,
        0.9,
        "erk",
        overrides={"block0_a": 0.0, r"block3_.*": 0.95},
        dense_first=True,
        dense_last=True,
    )
    assert "conv_init/kernel" not in sp and "head/kernel" not in sp and "block0_a/kernel" not in sp
    assert sp["block3_a/kernel"] == sp["block3_b/kernel"] == 0.95
    # The target holds over the leaves that are sparsified (those kept dense by choice are excluded).
    chosen_dense = {"conv_init", "head", "block0_a", "bn"}
    sizes = {
        f"{n}/kernel": int(np.prod(params[n]["kernel"].shape))
        for n in params
        if n not in chosen_dense
    }
    counts = active_counts(params, sp)  # leaves ERK made dense count fully
    realised = sum(counts.get(n, sizes[n]) for n in sizes)
    assert abs(realised - 0.1 * sum(sizes.values())) <= len(sizes)


def test_custom_distribution_uses_overrides_else_target():
    params = resnet_like_shapes()
    sp = leaf_sparsities(params, 0.8, "custom", overrides={"head": 0.5})
    assert sp["head/kernel"] == 0.5 and sp["block1_a/kernel"] == 0.8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity": 1.0, "distribution": "erk"},
        {"sparsity": -0.1, "distribution": "erk"},
        {"sparsity": 0.9, "distribution": "gaussian"},
        {"sparsity": 0.9, "distribution": "erk", "overrides": {"[": 0.5}},
        {"sparsity": 0.9, "distribution": "erk", "overrides": {"head": 1.5}},
    ],
)
def test_invalid_settings_raise_one_line(kwargs):
    with pytest.raises(ValueError) as err:
        leaf_sparsities(resnet_like_shapes(), **kwargs)
    assert "\n" not in str(err.value) and "allowed" in str(err.value)
