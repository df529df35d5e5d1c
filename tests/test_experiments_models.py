"""Model registry: every model builds, has the expected size, stable layer names and its state kind."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from experiments import models
from experiments.errors import ConfigError

# name -> (input shape, extra config, expected parameter count for 10 classes)
SPECS = {
    "mlp": ((28, 28, 1), {}, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
    "lenet": ((28, 28, 1), {}, None),
    "resnet20": ((32, 32, 3), {}, None),
    "resnet18": ((32, 32, 3), {}, None),
    "wrn22_2": ((32, 32, 3), {}, None),
    "resnet50": ((224, 224, 3), {}, None),
    "vit_tiny": ((32, 32, 3), {}, None),
}
# Published sizes (10-class heads): ResNet-20 0.27M, WRN-22-2 1.1M, ResNet-18 11.2M, ResNet-50 23.5M.
APPROX = {
    "resnet20": 0.27e6,
    "wrn22_2": 1.08e6,
    "resnet18": 11.17e6,
    "resnet50": 23.5e6,
    "vit_tiny": 5.4e6,
}


@pytest.mark.parametrize("name", list(SPECS))
def test_shapes_sizes_and_names(name):
    shape, extra, exact = SPECS[name]
    model = models.build(ml_collections.ConfigDict({"name": name, **extra}), num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))
    n = sum(x.size for x in jax.tree.leaves(variables["params"]))
    if exact is not None:
        assert n == exact
    if name in APPROX:
        assert abs(n - APPROX[name]) / APPROX[name] < 0.03, n
    assert "head" in variables["params"]
    assert ("batch_stats" in variables) == name.startswith(("resnet", "wrn"))


@pytest.mark.parametrize(
    "name, extra",
    [
        ("mlp", {"hidden": (16,)}),
        ("lenet", {}),
        ("resnet20", {"width": 4}),
        ("vit_tiny", {"depth": 1, "hidden_dim": 32, "num_heads": 2, "mlp_dim": 64}),
    ],
)
def test_forward_and_batch_norm_state(name, extra):
    model = models.build(ml_collections.ConfigDict({"name": name, **extra}), num_classes=7)
    x = jnp.ones((2, 8, 8, 1))
    with jax.threefry_partitionable(False):  # as experiments.train does: much faster to compile
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (2, 7)
    if "batch_stats" in variables:
        _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
        assert jax.tree.structure(updated["batch_stats"]) == jax.tree.structure(
            variables["batch_stats"]
        )


def test_keys_of_other_models_are_ignored_but_typos_are_not():
    models.check(ml_collections.ConfigDict({"name": "mlp", "width": 8, "depth": 3}))
    mlp = models.build(ml_collections.ConfigDict({"name": "mlp", "width": 8, "hidden": None}), 10)
    assert mlp.hidden == (300, 100)  # None: the model's default
    with pytest.raises(
        ConfigError, match="config.model.widht: unknown model key; keys of mlp: hidden"
    ):
        models.check(ml_collections.ConfigDict({"name": "mlp", "widht": 8}))
    with pytest.raises(
        ConfigError, match="allowed: mlp, lenet, resnet20, resnet18, wrn22_2, resnet50, vit_tiny"
    ):
        models.check(ml_collections.ConfigDict({"name": "vgg"}))
