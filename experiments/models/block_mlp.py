"""An MLP whose hidden layers run block-sparse, and the checks block-sparse models share.

Every hidden layer (the input layer included) is block-sparse with square ``block_size`` blocks; the
head stays an ordinary ``nn.Dense`` (10 classes are rarely a block multiple). Two forms:

- masked-dense (``kernels_pallas.BlockSparseDense``): a dense kernel; each forward reads the topology
  off the masked kernel (the ``nnz = round(density * num_blocks)`` blocks with the largest norms);
- compressed (``compressed=True``, ``kernels_pallas.CompressedBlockDense``): the kernel param is the
  (nnz, bk, bn) stored blocks, the topology lives in the sparse-training state, and the run trains the
  compressed form of the configured algorithm (``sparse_algorithm``; same masks as masked-dense).

Either way the algorithm must keep exactly ``nnz`` whole blocks active per layer, so a run needs
(checked by ``check_config`` before any compile, and exactly on the initial masks):

- ``config.sparsity.block_size == (block_size, block_size)`` (block-granular masks);
- an algorithm with a constant block count (``static``, ``set``, ``rigl``; ``dense`` with density 1);
- the ``uniform`` distribution with ``config.model.density == 1 - config.sparsity.sparsity``
  (``configs/block_rigl_mlp.py`` ties the two with a field reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import sparsejax as sj
from experiments.errors import ConfigError
from kernels_pallas import (
    BlockSparseDense,
    CompressedBlockDense,
    block_mask_from_elements,
    compressed_algorithm,
    nnz_for_density,
)
from kernels_pallas.dispatch import IMPLS

# Algorithms whose masks keep a constant number of active blocks per layer.
CONSTANT_COUNT = ("static", "set", "rigl")
# How far config.model.density may sit from 1 - sparsity (float noise only; masks are checked exactly).
_TOLERANCE = 1e-6


class BlockMLP(nn.Module):
    """``len(hidden)`` block-sparse ReLU layers then a dense linear head; stateless.

    Attributes:
      num_classes: output width (from the dataset).
      hidden: hidden widths, each a multiple of ``block_size`` (so is the flattened input width).
      block_size: square block edge of the sparse layers.
      density: block density of every sparse layer, ``1 - config.sparsity.sparsity``.
      impl: block-sparse matmul implementation: auto | xla | pallas | dense.
      dense_weight_grad: True gives the dense kernel gradient everywhere (RigL grows by it);
        masked-dense layers only (compressed ones score blocks on mask-update steps only).
      compressed: the layers store only their blocks (``CompressedBlockDense``, param ``kernel`` of
        shape (nnz, bk, bn)); the topology lives in the sparse-training state.
    """

    num_classes: int = 10
    hidden: Sequence[int] = (256, 256)
    block_size: int = 16
    density: float = 0.1
    impl: str = "auto"
    dense_weight_grad: bool = True
    compressed: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Logits for a batch of images (flattened) or feature vectors."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[-1] % self.block_size:
            g = math.gcd(x.shape[-1], *self.hidden)
            allowed = ", ".join(str(d) for d in range(1, g + 1) if g % d == 0)
            raise ConfigError(
                f"config.model.block_size={self.block_size}: the input width {x.shape[-1]} is not a "
                f"multiple; allowed: {allowed} (divisors of the input and hidden widths)"
            )
        for i, width in enumerate(self.hidden):
            x = nn.relu(block_layer(self, width, f"block_{i}")(x))
        return nn.Dense(self.num_classes, name="head")(x)


class LayerSpec(NamedTuple):
    """What a block-sparse layer of a model is: the model fields ``block_layer`` reads."""

    block_size: int
    density: float
    impl: str
    dense_weight_grad: bool
    compressed: bool


def spec_of(model: Any) -> LayerSpec:
    """The :class:`LayerSpec` of a model with those fields (``BlockMLP``, ``BlockViT``)."""
    return LayerSpec(*(getattr(model, f) for f in LayerSpec._fields))


def block_layer(spec: Any, features: int, name: str) -> nn.Module:
    """The block-sparse layer a :class:`LayerSpec` (or a model with its fields) describes:
    compressed or masked-dense."""
    common = dict(block_size=spec.block_size, density=spec.density, impl=spec.impl, name=name)
    if spec.compressed:
        return CompressedBlockDense(features, **common)
    return BlockSparseDense(features, dense_weight_grad=spec.dense_weight_grad, **common)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError (one line) if ``config.model`` and ``config.sparsity`` cannot agree."""
    defaults = BlockMLP()
    m = {k: v for k, v in config.model.items() if v is not None}
    block = m.get("block_size", defaults.block_size)
    hidden = tuple(m.get("hidden", defaults.hidden))
    check_block_size(block)
    if not hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in hidden):
        raise ConfigError(f"config.model.hidden={hidden!r}: allowed a non-empty tuple of widths")
    if any(w % block for w in hidden):
        raise ConfigError(
            f"config.model.hidden={hidden}: allowed widths that are multiples of "
            f"config.model.block_size={block}"
        )
    check_block_sparsity(config, defaults, "block_mlp")


def check_block_size(block: Any) -> None:
    """``config.model.block_size`` must be a positive integer."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"config.model.block_size={block!r}: allowed positive integers")


def check_block_sparsity(config: ml_collections.ConfigDict, defaults: Any, model_name: str) -> None:
    """The checks every block-sparse model shares: ``impl``, ``density`` against the algorithm,
    ``sparsity.block_size`` and the distribution (``defaults``: the model class's defaults)."""
    m = {k: v for k, v in config.model.items() if v is not None}
    block = m.get("block_size", defaults.block_size)
    density = m.get("density", defaults.density)
    impl = m.get("impl", defaults.impl)
    if impl not in IMPLS:
        raise ConfigError(f"config.model.impl={impl!r}: allowed values are {', '.join(IMPLS)}")
    if not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ConfigError(f"config.model.density={density!r}: allowed values are in (0, 1]")
    s = config.sparsity
    if m.get("compressed", defaults.compressed) and s.algorithm == "dense":
        raise ConfigError(
            "config.model.compressed=True: the layers store only the blocks a block algorithm keeps; "
            f"allowed: sparsity.algorithm in {', '.join(CONSTANT_COUNT)}, or compressed=False"
        )
    if s.algorithm == "dense":
        if density != 1.0:
            raise ConfigError(
                f"config.model.density={density:g} disagrees with sparsity.algorithm=dense "
                "(every block active); allowed: 1.0"
            )
        return
    if s.algorithm not in CONSTANT_COUNT:
        raise ConfigError(
            f"sparsity.algorithm={s.algorithm!r}: {model_name} needs a constant block count; "
            f"allowed: {', '.join(CONSTANT_COUNT)} (or dense with config.model.density=1.0)"
        )
    block_size = None if s.block_size is None else tuple(s.block_size)
    if block_size != (block, block):
        raise ConfigError(
            f"sparsity.block_size={block_size}: must match config.model.block_size={block}; "
            f"allowed: ({block}, {block})"
        )
    if s.distribution != "uniform":
        raise ConfigError(
            f"sparsity.distribution={s.distribution!r}: {model_name} has one block density for "
            "every sparse layer; allowed: uniform"
        )
    if abs(density - (1.0 - s.sparsity)) > _TOLERANCE:
        raise ConfigError(
            f"config.model.density={density:g} disagrees with sparsity.sparsity={s.sparsity}; "
            f"allowed: config.model.density = 1 - sparsity.sparsity = {1.0 - s.sparsity:g}"
        )


def sparse_algorithm(
    model: Any, config: ml_collections.ConfigDict, image_shape: tuple[int, ...]
) -> sj.SparseAlgorithm | None:
    """For a compressed model, the compressed form of the configured block algorithm (its masks,
    drops and growths are the masked-dense ones); None otherwise."""
    if not model.compressed:
        return None
    ctor, kwargs = sj.registry.resolve(config.sparsity, num_steps=config.num_steps)
    twin = model.clone(compressed=False)  # the same model in masked-dense form: its shapes
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    dense_like = jax.eval_shape(lambda: twin.init(jax.random.PRNGKey(0), dummy))["params"]
    return compressed_algorithm(ctor, dense_like, **kwargs)


def check_masks(model: BlockMLP, masks: Any) -> None:
    """Raise ConfigError unless every sparse layer's mask keeps exactly its ``nnz`` whole blocks.

    ``masks`` is ``sj.masks_of(opt_state)``; a layer whose kernel carries no mask (dense) must be
    computed with every block (density 1).
    """
    for i in range(len(model.hidden)):
        check_layer_mask(model, f"block_{i}", masks[f"block_{i}"]["kernel"])


def check_layer_mask(model: Any, name: str, mask: Any) -> None:
    """One block layer's initial mask against its static block count. Compressed layers pass:
    ``compressed_algorithm`` checked their counts when it created the topology."""
    if model.compressed:
        return
    b = model.block_size
    if not hasattr(mask, "shape") or getattr(mask, "dtype", None) != np.bool_:
        if model.density < 1.0:
            raise ConfigError(
                f"config.model.density={model.density:g}: layer {name} is not sparsified; "
                "allowed: 1.0, or sparsify every block-sparse kernel (overrides, dense_first)"
            )
        return
    blocks = np.asarray(block_mask_from_elements(mask, b, "any"))
    if (blocks != np.asarray(block_mask_from_elements(mask, b, "all"))).any():
        raise ConfigError(
            f"sparsity.block_size: the mask of {name} is not made of whole {b}x{b} blocks; "
            f"allowed: ({b}, {b})"
        )
    active, nnz = int(blocks.sum()), nnz_for_density(model.density, blocks.size)
    if max(active, 1) != nnz:
        raise ConfigError(
            f"config.model.density={model.density:g}: layer {name} computes {nnz} of "
            f"{blocks.size} blocks but its mask keeps {active}; allowed: "
            "config.model.density = 1 - sparsity.sparsity with the uniform distribution"
        )
