"""An MLP whose hidden layers run block-sparse (``kernels_pallas.BlockSparseDense``), and its checks.

Every hidden layer (the input layer included) is a ``BlockSparseDense`` with square ``block_size``
blocks; the head stays an ordinary ``nn.Dense`` (10 classes are rarely a block multiple). Each layer
reads its topology off the masked kernel: the ``nnz = round(density * num_blocks)`` blocks with the
largest norms. That is only right when the sparsity algorithm keeps exactly ``nnz`` whole blocks
active per layer, so a run needs (checked by ``check_config`` before any compile, and exactly on the
initial masks by ``check_masks``):

- ``config.sparsity.block_size == (block_size, block_size)`` (block-granular masks);
- an algorithm with a constant block count (``static``, ``set``, ``rigl``; ``dense`` with density 1);
- the ``uniform`` distribution with ``config.model.density == 1 - config.sparsity.sparsity``
  (``configs/block_rigl_mlp.py`` ties the two with a field reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.errors import ConfigError
from kernels_pallas import BlockSparseDense, block_mask_from_elements, nnz_for_density
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
      dense_weight_grad: True gives the dense kernel gradient everywhere (RigL grows by it).
    """

    num_classes: int = 10
    hidden: Sequence[int] = (256, 256)
    block_size: int = 16
    density: float = 0.1
    impl: str = "auto"
    dense_weight_grad: bool = True

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
            layer = BlockSparseDense(
                width,
                block_size=self.block_size,
                density=self.density,
                dense_weight_grad=self.dense_weight_grad,
                impl=self.impl,
                name=f"block_{i}",
            )
            x = nn.relu(layer(x))
        return nn.Dense(self.num_classes, name="head")(x)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError (one line) if ``config.model`` and ``config.sparsity`` cannot agree."""
    defaults = BlockMLP()
    m = {k: v for k, v in config.model.items() if v is not None}
    block = m.get("block_size", defaults.block_size)
    hidden = tuple(m.get("hidden", defaults.hidden))
    density = m.get("density", defaults.density)
    impl = m.get("impl", defaults.impl)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"config.model.block_size={block!r}: allowed positive integers")
    if not hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in hidden):
        raise ConfigError(f"config.model.hidden={hidden!r}: allowed a non-empty tuple of widths")
    if any(w % block for w in hidden):
        raise ConfigError(
            f"config.model.hidden={hidden}: allowed widths that are multiples of "
            f"config.model.block_size={block}"
        )
    if impl not in IMPLS:
        raise ConfigError(f"config.model.impl={impl!r}: allowed values are {', '.join(IMPLS)}")
    if not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ConfigError(f"config.model.density={density!r}: allowed values are in (0, 1]")

    s = config.sparsity
    if s.algorithm == "dense":
        if density != 1.0:
            raise ConfigError(
                f"config.model.density={density:g} disagrees with sparsity.algorithm=dense "
                "(every block active); allowed: 1.0"
            )
        return
    if s.algorithm not in CONSTANT_COUNT:
        raise ConfigError(
            f"sparsity.algorithm={s.algorithm!r}: block_mlp needs a constant block count; "
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
            f"sparsity.distribution={s.distribution!r}: block_mlp has one block density for every "
            "sparse layer; allowed: uniform"
        )
    if abs(density - (1.0 - s.sparsity)) > _TOLERANCE:
        raise ConfigError(
            f"config.model.density={density:g} disagrees with sparsity.sparsity={s.sparsity}; "
            f"allowed: config.model.density = 1 - sparsity.sparsity = {1.0 - s.sparsity:g}"
        )


def check_masks(model: BlockMLP, masks: Any) -> None:
    """Raise ConfigError unless every sparse layer's mask keeps exactly its ``nnz`` whole blocks.

    ``masks`` is ``sj.masks_of(opt_state)``; a layer whose kernel carries no mask (dense) must be
    computed with every block (density 1).
    """
    b = model.block_size
    for i in range(len(model.hidden)):
        name = f"block_{i}"
        mask = masks[name]["kernel"]
        if not hasattr(mask, "shape") or getattr(mask, "dtype", None) != np.bool_:
            if model.density < 1.0:
                raise ConfigError(
                    f"config.model.density={model.density:g}: layer {name} is not sparsified; "
                    "allowed: 1.0, or sparsify every block_* kernel (no overrides, dense_first=False)"
                )
            continue
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
