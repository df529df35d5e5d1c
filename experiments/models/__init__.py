"""Model registry: ``config.model.name`` -> a flax.linen Module class.

Every model is a dataclass whose fields are its config keys (``config.model.<field>``) plus
``num_classes`` (taken from the dataset), and is applied as ``model.apply(variables, x, train=...)``.
``configs/base.py`` declares every model key as a placeholder; ``None`` means the model's own default.
Adding a model is one new file plus one line in ``MODELS`` (plus placeholders for new keys in base.py).
A model's module may also define ``check_config(config)`` (checks across config sections, run by
``experiments.validate`` before any compile), ``check_masks(model, masks)`` (run on the initial masks)
and ``sparse_algorithm(model, config, image_shape)`` (the run's algorithm, e.g. its compressed form;
None keeps ``sj.from_config(config.sparsity)``).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import flax.linen as nn
import ml_collections

import sparsejax as sj
from experiments.errors import ConfigError
from experiments.models import block_mlp, block_vit, lenet, mlp, resnet, transformer_lm, vit

MODELS: dict[str, type[nn.Module]] = {
    "mlp": mlp.MLP,
    "lenet": lenet.LeNet,
    "resnet20": resnet.ResNet20,
    "resnet18": resnet.ResNet18,
    "wrn22_2": resnet.WRN22_2,
    "resnet50": resnet.ResNet50,
    "vit_tiny": vit.ViTTiny,
    "transformer_lm": transformer_lm.TransformerLM,
    "block_mlp": block_mlp.BlockMLP,
    "block_vit": block_vit.BlockViT,
}

# Flax's own dataclass fields, never config keys (`name` is the registry key in the config).
_FLAX_FIELDS = {"parent", "name", "num_classes"}


def fields_of(model_name: str) -> set[str]:
    """The config keys model ``model_name`` accepts."""
    return {f.name for f in dataclasses.fields(MODELS[model_name]) if f.name not in _FLAX_FIELDS}


def check(model_config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for an unknown model or a key that no registered model has (a typo).

    Keys of *other* models are ignored so ``--config.model.name=mlp`` works on a ResNet config.
    """
    name = model_config.get("name")
    if name not in MODELS:
        raise ConfigError(
            f"config.model.name: unknown model {name!r}; allowed: {', '.join(MODELS)}"
        )
    known = set().union(*(fields_of(n) for n in MODELS))
    for key in model_config:
        if key != "name" and key not in known:
            raise ConfigError(
                f"config.model.{key}: unknown model key; keys of {name}: {', '.join(sorted(fields_of(name)))}"
            )


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Instantiate ``config.model`` for a dataset with ``num_classes`` classes."""
    check(model_config)
    accepted = fields_of(model_config.name)
    kwargs: dict[str, Any] = {
        k: v for k, v in model_config.items() if k in accepted and v is not None
    }
    return MODELS[model_config.name](num_classes=num_classes, **kwargs)


def _hook(cls: type[nn.Module], name: str):
    """The optional function ``name`` of the module that defines model class ``cls`` (or None)."""
    return getattr(importlib.import_module(cls.__module__), name, None)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Run the chosen model's ``check_config(config)`` (e.g. model vs sparsity settings), if any."""
    if (hook := _hook(MODELS[config.model.name], "check_config")) is not None:
        hook(config)


def sparse_algorithm(
    model: nn.Module, config: ml_collections.ConfigDict, image_shape: tuple[int, ...]
) -> sj.SparseAlgorithm | None:
    """The model's own form of the configured algorithm (``sparse_algorithm`` hook), or None."""
    if (hook := _hook(type(model), "sparse_algorithm")) is not None:
        return hook(model, config, image_shape)
    return None


def check_masks(model: nn.Module, masks: Any) -> None:
    """Run the model's ``check_masks(model, masks)`` on the initial masks (``sj.masks_of``), if any."""
    if (hook := _hook(type(model), "check_masks")) is not None:
        hook(model, masks)
